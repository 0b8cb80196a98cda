"""
The whole pipeline on a laptop CPU, from nothing, in about 10 minutes: build the synthetic demo world
and the tiny Qwen2.5-VL checkpoint, SFT cold start, T-GRPO, then evaluation with ordered and
shuffled frames, before and after RL.

    python demo.py

Each stage is an ordinary script with its demo config, so any of them can be re-run alone:
    python sft.py config/sft_demo.py
    python tgrpo.py config/tgrpo_demo.py            # + config/tgrpo_grpo.py: plain GRPO
    python eval.py config/eval_demo.py --model_path=out/tgrpo_demo --shuffle=True
The demo starts fresh each time (it deletes its own out/ folders). Seeds are fixed, so a rerun on the
same machine gives the same numbers. GRPO vs T-GRPO over several seeds: experiment.py.
"""
import os
import shutil
import json
import subprocess
import sys

DEMO_WORLD = "demo/world"                  # synthetic videos, images and the dataset files
DEMO_MODEL = "demo/tiny-qwen2.5-vl"        # random-weight Qwen2.5-VL with a small tokenizer
SFT_DEMO = "out/sft_demo"                  # where sft.py's demo writes; tgrpo.py's demo starts here
TGRPO_DEMO = "out/tgrpo_demo"


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
    print("\n$ python", " ".join(cmd), flush=True)
    # one thread per process: the tiny model's matrices are too small to gain from more, and on a
    # shared CPU spinning threads make each step several times slower
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run([sys.executable, *cmd], check=True, env=env)


def results_table(evals):
    """{name: eval out_dir} -> a small Markdown table: accuracy per family, ordered vs shuffled frames."""
    summaries = {name: json.load(open(os.path.join(d, "summary.json")))["summary"]["demo"] for name, d in evals.items()}
    pct = lambda x: "-" if x is None else f"{100 * x:.0f}"
    lines = ["| model | all | videos ordered | videos shuffled | gap | " +
             " | ".join(f.split("/")[1] for f in next(iter(summaries.values()))["data_source"]) + " |"]
    lines.append("|---" * (len(lines[0].split("|")) - 2) + "|")
    for name, s in summaries.items():
        a = s["all"]
        lines.append(f"| {name} | {pct(a['release'])} | {pct(a['ordered'])} | {pct(a['shuffled'])} | {pct(a['gap'])} | "
                     + " | ".join(pct(v["release"]) for v in s["data_source"].values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    for d in (SFT_DEMO, TGRPO_DEMO, "out/eval_sft_demo", "out/eval_tgrpo_demo"):
        shutil.rmtree(d, ignore_errors=True)  # a fresh start: old checkpoints or answers would be reused
    ensure_demo_assets()
    print(f"demo world in {DEMO_WORLD}, tiny checkpoint in {DEMO_MODEL}")
    run("sft.py", "config/sft_demo.py")
    run("tgrpo.py", "config/tgrpo_demo.py")
    evals = {"SFT": "out/eval_sft_demo", "SFT + T-GRPO": "out/eval_tgrpo_demo"}
    for (name, out), model in zip(evals.items(), (SFT_DEMO, TGRPO_DEMO)):
        run("eval.py", "config/eval_demo.py", f"--model_path={model}", "--shuffle=True", f"--out_dir={out}")
    print("\nAccuracy in % on eval_demo.json (120 held-out questions, 80 videos; gap = ordered - shuffled):\n")
    print(results_table(evals))
