"""
The teaching experiment: with the same SFT start and the same number of RL steps, does T-GRPO make
the tiny model rely on frame order more than plain GRPO does?

    python experiment.py                  # 3 seeds x {SFT, SFT+GRPO, SFT+T-GRPO}, ~20 min on 2 CPU cores
    python experiment.py --seeds=[0] --rl_steps=20 --out_root=out/experiment_quick   # a few minutes
    python plot.py                        # the training curves of the last seed, experiment/curves.png

Per seed: one SFT run (config/sft_demo.py), shared by both RL arms, which differ only by
config/tgrpo_grpo.py (temporal off). Every model is evaluated on eval_demo.json with ordered and
shuffled frames (eval.py --shuffle=True). Each stage is skipped when its output exists, so an
interrupted run resumes; delete out_root to start over. The tables go to experiment/results.md and
experiment/results.json: accuracy with ordered frames (all questions), ordered and shuffled accuracy on
the videos and their gap, the same for the order-dependent families, per family accuracy, format rate
and mean completion length; each as mean +- standard deviation over seeds.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

seeds = [0, 1, 2]
rl_steps = 150                          # the same for both RL arms (config/tgrpo_demo.py's max_steps)
parallel = True                         # train the two RL arms of a seed at the same time (2 cores)
out_root = "out/experiment"
results_dir = "experiment"
extra_rl = []                           # more tgrpo.py flags for both arms, e.g. ["--alpha=1.0"]

from configurator import configure

config = configure(globals())

from demo import ensure_demo_assets
from rewards import format_reward

ORDER_DEPENDENT = ("direction", "order", "grow", "motion")   # need the frame order (direction: 75% without)
ORDER_FREE = ("count", "colour", "area", "ocr", "describe")  # one frame (or the image) is enough
ARMS = {"sft": [], "grpo": ["config/tgrpo_grpo.py"], "tgrpo": []}
# one thread per process: the tiny model's matrices are too small to gain from a second one, and on a
# shared CPU spinning threads slow each step several-fold
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def start(args, log):
    print("$ python", " ".join(args), f"> {log}", flush=True)
    return subprocess.Popen([sys.executable, *args], stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ENV)


def wait(procs):
    for p, log in procs:
        if p.wait() != 0:
            raise RuntimeError(f"{' '.join(p.args)} failed with code {p.returncode}, see {log}")


def done(out_dir, step=None):
    """A training run is finished when its last checkpoint exists."""
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    return any(n.startswith("step_") for n in names) if step is None else f"step_{step:06d}" in names


def score_records(path):
    """Answers of one eval run -> the numbers of one cell of the results table."""
    with open(path) as f:
        recs = [json.loads(line) for line in f if line.endswith("\n")]
    ok = [r for r in recs if r["status"] == "ok"]
    ordered = [r for r in ok if not r["shuffled"]]
    shuffled = {r["problem_id"]: r["score"] for r in ok if r["shuffled"]}
    family = lambda r: r["data_source"].split("/")[-1]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")

    def pair(rows):  # ordered and shuffled accuracy of the videos among rows
        rows = [r for r in rows if r["problem_id"] in shuffled]
        o, s = mean([r["score"] for r in rows]), mean([shuffled[r["problem_id"]] for r in rows])
        return o, s, o - s

    out = {"accuracy": mean([r["score"] for r in ordered])}
    out["video_ordered"], out["video_shuffled"], out["video_gap"] = pair(ordered)
    dep = [r for r in ordered if family(r) in ORDER_DEPENDENT]
    out["dep_ordered"], out["dep_shuffled"], out["dep_gap"] = pair(dep)
    out["free_accuracy"] = mean([r["score"] for r in ordered if family(r) in ORDER_FREE])
    for fam in ORDER_DEPENDENT + ORDER_FREE:
        rows = [r for r in ordered if family(r) == fam]
        out[f"acc_{fam}"] = mean([r["score"] for r in rows])
        if fam in ORDER_DEPENDENT:
            out[f"gap_{fam}"] = pair(rows)[2]
    out["format"] = mean([format_reward(r["output"]) for r in ordered])
    out["length"] = mean([r["gen_tokens"] for r in ordered])
    return out


def train_stats(out_dir):
    """What the RL run saw, from its metrics.jsonl: reward over the first and last 25 steps, and on
    video groups p - p~ and the share of groups paid the temporal bonus (T-GRPO only)."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        steps = [m for m in map(json.loads, f) if "reward" in m]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
    video = [m for m in steps if m["p_ordered"] == m["p_ordered"]]  # NaN: no video group that step
    return {"reward_first": mean([m["reward"] for m in steps[:25]]),
            "reward_last": mean([m["reward"] for m in steps[-25:]]),
            "p_minus_p_shuffled": mean([m["p_ordered"] - m["p_shuffled"] for m in video]),
            "bonus_rate": mean([m["temporal_bonus_rate"] for m in video])}


def run_seed(seed):
    root = os.path.join(out_root, f"seed{seed}")
    os.makedirs(root, exist_ok=True)
    sft = os.path.join(root, "sft")
    if not done(sft):
        wait([(start(["sft.py", "config/sft_demo.py", f"--seed={seed}", f"--out_dir={sft}"],
                     f"{root}/sft.log"), f"{root}/sft.log")])
    procs = []
    for arm in ("grpo", "tgrpo"):
        out = os.path.join(root, arm)
        if not done(out, rl_steps):
            shutil.rmtree(os.path.join(root, f"eval_{arm}"), ignore_errors=True)  # answers of an older model
            args = ["tgrpo.py", "config/tgrpo_demo.py", *ARMS[arm], f"--model_path={sft}", f"--seed={seed}",
                    f"--out_dir={out}", f"--max_steps={rl_steps}", *extra_rl]
            procs.append((start(args, f"{root}/{arm}.log"), f"{root}/{arm}.log"))
            if not parallel:
                wait(procs[-1:])
    wait(procs)
    procs = []
    for arm in ARMS:
        model = sft if arm == "sft" else os.path.join(root, arm)
        out = os.path.join(root, f"eval_{arm}")
        if not os.path.exists(os.path.join(out, "summary.json")):
            args = ["eval.py", "config/eval_demo.py", f"--model_path={model}", "--shuffle=True", f"--out_dir={out}"]
            procs.append((start(args, f"{root}/eval_{arm}.log"), f"{root}/eval_{arm}.log"))
            if not parallel or len(procs) == 2:
                wait(procs)
                procs = []
    wait(procs)
    results = {arm: score_records(os.path.join(root, f"eval_{arm}", "demo.jsonl")) for arm in ARMS}
    for arm in ("grpo", "tgrpo"):
        results[arm].update(train_stats(os.path.join(root, arm)))
    return results


def table(results):
    """{seed: {arm: {metric: x}}} -> Markdown tables of mean +- std over seeds (in %, length in tokens)."""
    def cell(arm, key, scale=100):
        xs = [results[s][arm][key] * scale for s in results]
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{statistics.mean(xs):.{1 if scale == 100 else 2}f} ± {sd:.{1 if scale == 100 else 2}f}"

    main_cols = [("accuracy", "accuracy, all (ordered)"), ("video_ordered", "video ordered"),
                 ("video_shuffled", "video shuffled"), ("video_gap", "video gap"),
                 ("dep_ordered", "order-dep. ordered"), ("dep_shuffled", "order-dep. shuffled"),
                 ("dep_gap", "order-dep. gap"), ("free_accuracy", "order-free acc."), ("format", "format")]
    names = {"sft": "SFT only", "grpo": "SFT + GRPO", "tgrpo": "SFT + T-GRPO"}
    lines = ["| arm | " + " | ".join(c for _, c in main_cols) + " | length (tokens) |",
             "|---|" + "---|" * (len(main_cols) + 1)]
    for arm in ARMS:
        lines.append(f"| {names[arm]} | " + " | ".join(cell(arm, k) for k, _ in main_cols)
                     + f" | {cell(arm, 'length', 1)} |")
    fams = ORDER_DEPENDENT + ORDER_FREE
    lines += ["", "Accuracy per family (ordered frames), and the gap (ordered - shuffled) of the order-dependent ones:",
              "", "| arm | " + " | ".join(fams) + " | " + " | ".join(f"gap {f}" for f in ORDER_DEPENDENT) + " |",
              "|---|" + "---|" * (len(fams) + len(ORDER_DEPENDENT))]
    for arm in ARMS:
        lines.append(f"| {names[arm]} | " + " | ".join(cell(arm, f"acc_{f}") for f in fams) + " | "
                     + " | ".join(cell(arm, f"gap_{f}") for f in ORDER_DEPENDENT) + " |")
    lines += ["", "During RL (from metrics.jsonl): mean reward over the first and last 25 steps; on video groups,",
              "p - p~ (share correct with ordered minus shuffled frames; T-GRPO samples the shuffled ones) and",
              "the share of groups paid the temporal bonus:", "",
              "| arm | reward, first 25 steps | reward, last 25 steps | p - p~ (%) | bonus rate (%) |", "|---|---|---|---|---|"]
    lines.append(f"| {names['grpo']} | {cell('grpo', 'reward_first', 1)} | {cell('grpo', 'reward_last', 1)} | - | - |")
    lines.append(f"| {names['tgrpo']} | {cell('tgrpo', 'reward_first', 1)} | {cell('tgrpo', 'reward_last', 1)} | "
                 f"{cell('tgrpo', 'p_minus_p_shuffled')} | {cell('tgrpo', 'bonus_rate')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    t0 = time.time()
    ensure_demo_assets()
    results = {}
    for seed in seeds:
        results[seed] = run_seed(seed)
        print(f"seed {seed} done after {(time.time() - t0) / 60:.1f} min", flush=True)
    os.makedirs(results_dir, exist_ok=True)
    minutes = (time.time() - t0) / 60
    text = (f"# GRPO vs T-GRPO on the demo world\n\n`python experiment.py {' '.join(sys.argv[1:])}`"
            f" ({minutes:.0f} min for this invocation, stages already done skipped; seeds {seeds}, {rl_steps} RL steps per arm, eval_demo.json: 120 questions,"
            f" 80 of them videos; scores in %, mean ± standard deviation over seeds)\n\n{table(results)}\n")
    with open(os.path.join(results_dir, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(results_dir, "results.json"), "w") as f:
        json.dump({"config": config, "minutes": minutes, "results": results}, f, indent=1)
    print(text)
