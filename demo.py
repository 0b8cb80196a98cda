"""
The whole pipeline on a laptop CPU, from nothing, in about 15 minutes: build the demo world and a tiny
random Qwen2.5-VL, warm it up into a tiny VLM that sees, SFT cold start, T-GRPO, then evaluation with
ordered and shuffled frames, before and after RL.

    python demo.py

Each stage is an ordinary script with its demo config, so any of them can be re-run alone:
    python sft.py config/warmup_demo.py --out_dir=demo/tiny-qwen2.5-vl-warm   # built on first use
    python sft.py config/sft_demo.py
    python tgrpo.py config/tgrpo_demo.py            # + config/tgrpo_grpo.py: plain GRPO
    python eval.py config/eval_demo.py --model_path=out/tgrpo_demo --shuffle=True
The demo starts fresh each time (it deletes its own out/ folders; the world and the warmed-up model in
demo/ are kept). Seeds are fixed. GRPO vs T-GRPO over several seeds: experiment.py.
"""
import json
import os
import shutil
import subprocess
import sys

import demo_world

DEMO_WORLD = "demo/world"                  # synthetic videos, images and the dataset files
DEMO_MODEL = "demo/tiny-qwen2.5-vl"        # random-weight Qwen2.5-VL with a small tokenizer
DEMO_PRETRAINED = "demo/tiny-qwen2.5-vl-warm"  # DEMO_MODEL after the perception warm-up: the demo's "Instruct"
SFT_DEMO = "out/sft_demo"                  # where sft.py's demo writes; tgrpo.py's demo starts here
TGRPO_DEMO = "out/tgrpo_demo"


def ensure_demo_assets(data_dir=DEMO_WORLD, model_path=DEMO_MODEL):
    """Create the demo world, the tiny checkpoint and its warm-up if a script is pointed at them and
    they are missing. Other paths are left alone: a real dataset or checkpoint is never generated."""
    import model

    demo_models = (DEMO_MODEL, DEMO_PRETRAINED)
    if data_dir == DEMO_WORLD or model_path in demo_models:
        if not os.path.isfile(os.path.join(DEMO_WORLD, "rl.json")):
            _atomic_build(DEMO_WORLD, lambda tmp: demo_world.make_demo_world(tmp))
    if model_path in demo_models and not os.path.isfile(os.path.join(DEMO_MODEL, "config.json")):
        texts = demo_world.demo_texts(DEMO_WORLD)
        _atomic_build(DEMO_MODEL, lambda tmp: model.make_tiny_checkpoint(tmp, texts))
    if model_path == DEMO_PRETRAINED and not os.path.isdir(DEMO_PRETRAINED):
        print(f"building {DEMO_PRETRAINED}: the perception warm-up of {DEMO_MODEL}, a few minutes", flush=True)
        _atomic_build(DEMO_PRETRAINED, lambda tmp: run("sft.py", "config/warmup_demo.py", f"--out_dir={tmp}"))
    if model_path == SFT_DEMO and not os.path.isdir(SFT_DEMO):
        raise FileNotFoundError(f"{SFT_DEMO} does not exist: run `python sft.py` first (or pass "
                                f"--model_path={DEMO_PRETRAINED} for RL without the SFT cold start)")


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


def family(row):
    return row["data_source"].split("/")[-1]


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def score_records(records):
    """eval.py's answers of the demo -> {"all", "video ordered", "video shuffled", "gap", "order gap",
    "format", "length", <family>: {"ordered", "shuffled", "gap"}}; scores in [0, 1], gaps ordered - shuffled
    over the videos answered both ways, "order gap" over the order-dependent families."""
    from rewards import format_reward
    ok = [r for r in records if r["status"] == "ok"]
    ordered = [r for r in ok if not r["shuffled"]]
    shuffled = {r["problem_id"]: r["score"] for r in ok if r["shuffled"]}
    pairs = lambda rows: [(r["score"], shuffled[r["problem_id"]]) for r in rows if r["problem_id"] in shuffled]
    out = {"all": mean(r["score"] for r in ordered), "format": mean(format_reward(r["output"]) for r in ordered),
           "length": mean(r["gen_tokens"] for r in ordered)}
    video, dep = pairs(ordered), pairs(r for r in ordered if family(r) in demo_world.ORDER_DEPENDENT)
    out["video ordered"], out["video shuffled"] = mean(o for o, _ in video), mean(s for _, s in video)
    out["gap"], out["order gap"] = mean(o - s for o, s in video), mean(o - s for o, s in dep)
    for fam in sorted({family(r) for r in ordered}):
        rows = [r for r in ordered if family(r) == fam]
        p = pairs(rows)
        out[fam] = {"ordered": mean(r["score"] for r in rows), "format": mean(format_reward(r["output"]) for r in rows),
                    "length": mean(r["gen_tokens"] for r in rows)}
        if p:
            out[fam].update(shuffled=mean(s for _, s in p), gap=mean(o - s for o, s in p))
    return out


def read_answers(eval_dir, benchmark="demo"):
    with open(os.path.join(eval_dir, f"{benchmark}.jsonl")) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def chance_records(world=DEMO_WORLD, pool=64):
    """What guessing scores: every held-out question answered with the answers of up to `pool` training
    questions of its family (a blind model that knows the answer format and the answer distribution),
    as eval records, so score_records reads them like a model's. Shuffled frames change nothing."""
    import data
    from rewards import eval_score
    train = data.load_rows(os.path.join(world, "rl.json"))
    answers = {}
    for r in train:
        answers.setdefault(family(r), []).append(r["solution"])
    records = []
    for r in data.load_rows(os.path.join(world, "eval_demo.json")):
        guesses = answers[family(r)][:pool]
        score = mean(eval_score(g, r["solution"], r["problem_type"]) for g in guesses)
        for shuffled in ([False, True] if r["data_type"] == "video" else [False]):
            records.append({"problem_id": r["problem_id"], "data_source": r["data_source"], "shuffled": shuffled,
                            "status": "ok", "score": score, "output": guesses[0], "gen_tokens": 0})
    return records


def results_table(scores):
    """{name: score_records(...)} -> Markdown: accuracy in %, ordered/shuffled frames, per family (o/s)."""
    pct = lambda x: "-" if x != x else f"{100 * x:.0f}"
    fams = [f for f in next(iter(scores.values())) if isinstance(next(iter(scores.values()))[f], dict)]
    fams = sorted(fams, key=lambda f: (f not in demo_world.ORDER_DEPENDENT, f))
    head = ["model", "all", "videos ordered", "videos shuffled", "gap", "order-dependent gap"]
    head += [f"{f} (o/s)" if f in demo_world.ORDER_DEPENDENT else f for f in fams]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, s in scores.items():
        cells = [name, pct(s["all"]), pct(s["video ordered"]), pct(s["video shuffled"]), pct(s["gap"]), pct(s["order gap"])]
        cells += [f"{pct(s[f]['ordered'])}/{pct(s[f]['shuffled'])}" if f in demo_world.ORDER_DEPENDENT
                  else pct(s[f]["ordered"]) for f in fams]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def text_curve(metrics_path, key="reward", bins=10):
    """A training curve in one line of text: the mean of `key` over each tenth of the run."""
    with open(metrics_path) as f:
        xs = [m[key] for m in map(json.loads, f) if key in m and m[key] == m[key]]
    n = max(1, len(xs) // bins)
    return " ".join(f"{mean(xs[i:i + n]):.2f}" for i in range(0, n * bins, n) if xs[i:i + n])


if __name__ == "__main__":
    for d in (SFT_DEMO, TGRPO_DEMO, "out/eval_sft_demo", "out/eval_tgrpo_demo"):
        shutil.rmtree(d, ignore_errors=True)  # a fresh start: old checkpoints or answers would be reused
    ensure_demo_assets(DEMO_WORLD, DEMO_PRETRAINED)
    print(f"demo world in {DEMO_WORLD}, tiny checkpoint in {DEMO_MODEL}, warmed up in {DEMO_PRETRAINED}")
    run("sft.py", "config/sft_demo.py")
    run("tgrpo.py", "config/tgrpo_demo.py")
    evals = {"SFT": "out/eval_sft_demo", "SFT + T-GRPO": "out/eval_tgrpo_demo"}
    for (name, out), model in zip(evals.items(), (SFT_DEMO, TGRPO_DEMO)):
        run("eval.py", "config/eval_demo.py", f"--model_path={model}", "--shuffle=True", f"--out_dir={out}")
    scores = {"chance (blind guess)": score_records(chance_records())}
    scores.update({name: score_records(read_answers(out)) for name, out in evals.items()})
    n_eval = len(read_answers(evals["SFT"]))
    print(f"\nAccuracy in % on eval_demo.json ({n_eval} answers to held-out questions; o/s = ordered/shuffled "
          f"frames; gap = ordered - shuffled):\n")
    print(results_table(scores))
    metrics = os.path.join(TGRPO_DEMO, "metrics.jsonl")
    print(f"\nT-GRPO training, mean per tenth of the run:\n  reward   {text_curve(metrics)}\n"
          f"  accuracy {text_curve(metrics, 'reward_accuracy')}\n"
          f"Curves as a picture: python plot.py {TGRPO_DEMO} (needs matplotlib)")
