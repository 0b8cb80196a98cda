"""Shared fixtures: the demo assets (built once, in demo/) and a short SFT run the RL tests start from."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.abspath(__file__))


def run_script(*args, processes=1, timeout=600):
    """Run a stage script as a user would (one process, or `accelerate launch` with 2 on CPU)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", "29517", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def demo_assets():
    from demo import DEMO_MODEL, DEMO_WORLD, ensure_demo_assets
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        ensure_demo_assets(DEMO_WORLD, DEMO_MODEL)
    finally:
        os.chdir(cwd)
    return os.path.join(ROOT, DEMO_WORLD), os.path.join(ROOT, DEMO_MODEL)


@pytest.fixture(scope="session")
def sft_run(demo_assets, tmp_path_factory):
    """Two thirds of the demo SFT (20 epochs, 520 steps): formatted answers, so RL rewards vary."""
    out = str(tmp_path_factory.mktemp("sft"))
    run_script("sft.py", f"--out_dir={out}", "--num_epochs=20", "--n_samples=16", "--sample_tokens=96")
    return out
