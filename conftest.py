"""Shared fixtures: the demo assets (built once, in demo/) and a short SFT run the RL tests start from."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.abspath(__file__))


DEMO_CONFIG = {"sft.py": "config/sft_demo.py", "tgrpo.py": "config/tgrpo_demo.py", "eval.py": "config/eval_demo.py"}


def run_script(*args, processes=1, mixed_precision="no", timeout=600):
    """Run a stage script as a user would (one process, or `accelerate launch` with 2 on CPU) with its
    demo config first (the scripts' defaults are the paper's 7B run), then `args`;
    mixed_precision="bf16" runs it under bf16 autocast, as on GPUs."""
    if args[0] in DEMO_CONFIG:
        args = (args[0], DEMO_CONFIG[args[0]], *args[1:])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "ACCELERATE_MIXED_PRECISION": mixed_precision}
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", mixed_precision,
               "--dynamo_backend", "no", "--main_process_port", "29517", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout


def demo_config(monkeypatch, module, **settings):
    """Set a stage module's globals to its demo config, then to `settings`, for a test that calls
    module.main() in process (undone after the test)."""
    from configurator import configure
    values = {k: getattr(module, k) for k in module.config}
    configure(values, [DEMO_CONFIG[os.path.basename(module.__file__)]])
    for key, value in {**values, **settings}.items():
        monkeypatch.setattr(module, key, value)


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def demo_assets():
    from demo import DEMO_MODEL, DEMO_WORLD, ensure_demo_assets
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        ensure_demo_assets(warm=False)
    finally:
        os.chdir(cwd)
    return os.path.join(ROOT, DEMO_WORLD), os.path.join(ROOT, DEMO_MODEL)


@pytest.fixture(scope="session")
def sft_run(demo_assets, tmp_path_factory):
    """An SFT of the warmed-up tiny model (built on first use, 4 min) on all 320 COT rows for 12 epochs
    (480 steps, ~45 s): formatted answers, so RL rewards vary."""
    from demo import ensure_demo_assets
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        ensure_demo_assets()
    finally:
        os.chdir(cwd)
    out = str(tmp_path_factory.mktemp("sft"))
    run_script("sft.py", f"--out_dir={out}", "--train_rows=None", "--num_epochs=12", "--n_samples=16",
               "--sample_tokens=96")
    return out


# Every way a media file can fail: (file name, the data_type its row claims). Made by bad_media().
BAD_MEDIA = {
    "damaged frames": ("damaged.mp4", "video"),      # opens (container and index intact), frames fail to decode
    "truncated video": ("truncated.mp4", "video"),   # the first half of the file
    "zero bytes": ("empty.mp4", "video"),
    "image named .mp4": ("image.mp4", "video"),      # wrong extension: a PNG where a video should be
    "video named .png": ("video.png", "image"),      # and an MP4 where an image should be
    "missing": ("missing.mp4", "video"),
    "truncated image": ("truncated.png", "image"),   # PIL reads the header, then runs out of pixel data
    "not an image": ("garbage.png", "image"),        # PIL cannot identify it
}


def bad_media(folder, video, image):
    """Write the files of BAD_MEDIA into `folder`, derived from a good demo `video` and `image`;
    returns {kind: absolute path} (the "missing" path is not written)."""
    with open(video, "rb") as f:
        mp4 = f.read()
    with open(image, "rb") as f:
        png = f.read()
    damaged = bytearray(mp4)
    mid, rng = len(mp4) // 2, random.Random(0)
    damaged[mid - 100:mid + 100] = bytes(rng.randrange(256) for _ in range(200))  # 200 bytes of frame data
    content = {"damaged frames": bytes(damaged), "truncated video": mp4[:len(mp4) // 2], "zero bytes": b"",
               "image named .mp4": png, "video named .png": mp4, "missing": None,
               "truncated image": png[:len(png) // 2], "not an image": b"this is not an image" * 20}
    paths = {}
    for kind, (name, _) in BAD_MEDIA.items():
        paths[kind] = os.path.join(str(folder), name)
        if content[kind] is not None:
            with open(paths[kind], "wb") as f:
                f.write(content[kind])
    return paths


def dataset_with_bad_media(src_json, folder, kinds_at):
    """Copy a dataset file into `folder` with absolute media paths, then point the rows {index: kind} at the
    bad files of that kind (their data_type as BAD_MEDIA says). Returns (json path, {index: bad path})."""
    with open(src_json) as f:
        rows = json.load(f)
    root = os.path.dirname(os.path.abspath(src_json))
    for row in rows:
        row["path"] = os.path.join(root, row["path"][2:])
    video = next(r["path"] for r in rows if r["data_type"] == "video")
    image = next(r["path"] for r in rows if r["data_type"] == "image")
    paths = bad_media(folder, video, image)
    bad = {}
    for i, kind in kinds_at.items():
        rows[i]["path"], rows[i]["data_type"] = paths[kind], BAD_MEDIA[kind][1]
        bad[i] = paths[kind]
    out = os.path.join(str(folder), os.path.basename(src_json))
    with open(out, "w") as f:
        json.dump(rows, f)
    return out, bad


def decode_or_misbehave(row, **settings):
    """data.decode_frames, except for files named hang* (never returns: a decoder that hangs) and
    crash* (kills its own process: a decoder that segfaults). Tests monkeypatch data.decode_frames
    with it; a data.DecodeProcess child imports it from here by name."""
    name = os.path.basename(row["media"])
    if name.startswith("hang"):
        time.sleep(10**6)
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    import data
    return data.decode_frames(row, **settings)
