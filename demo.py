"""
The whole pipeline on a laptop CPU, from nothing: build the synthetic demo world and the tiny
Qwen2.5-VL checkpoint, SFT cold start, T-GRPO, then evaluation on ordered and shuffled frames.

    python demo.py

Each stage is an ordinary script with its demo config, so any of them can be re-run alone.
"""
import os
import shutil
import subprocess
import sys

DEMO_WORLD = "demo/world"                  # synthetic videos, images and the dataset files
DEMO_MODEL = "demo/tiny-qwen2.5-vl"        # random-weight Qwen2.5-VL with a small tokenizer
SFT_DEMO = "out/sft_demo"                  # where sft.py's demo writes; tgrpo.py's demo starts here


def ensure_demo_assets(data_dir=DEMO_WORLD, model_path=DEMO_MODEL):
    """Create the demo world and the tiny checkpoint if a script is pointed at them and they are
    missing. Other paths are left alone: a real dataset or checkpoint is never generated."""
    import data
    import model

    if data_dir == DEMO_WORLD or model_path == DEMO_MODEL:
        if not os.path.isfile(os.path.join(DEMO_WORLD, "rl.json")):
            _atomic_build(DEMO_WORLD, lambda tmp: data.make_demo_world(tmp))
    if model_path == DEMO_MODEL and not os.path.isfile(os.path.join(DEMO_MODEL, "config.json")):
        texts = data.demo_texts(DEMO_WORLD)
        _atomic_build(DEMO_MODEL, lambda tmp: model.make_tiny_checkpoint(tmp, texts))
    if model_path == SFT_DEMO and not os.path.isdir(SFT_DEMO):
        raise FileNotFoundError(f"{SFT_DEMO} does not exist: run `python sft.py` first (or pass "
                                f"--model_path={DEMO_MODEL} for RL without the SFT cold start)")


def _atomic_build(path, build):
    """Build into path.tmp and rename, so an interrupted build never looks complete."""
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    os.replace(tmp, path)


def run(*cmd):
    print("\n$", " ".join(cmd), flush=True)
    subprocess.run([sys.executable, *cmd], check=True)


if __name__ == "__main__":
    ensure_demo_assets()
    print(f"demo world in {DEMO_WORLD}, tiny checkpoint in {DEMO_MODEL}")
    for script in ("sft.py", "tgrpo.py", "eval.py"):
        if os.path.exists(script):
            run(script, *sys.argv[1:])
