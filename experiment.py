"""
The teaching experiment: from the same SFT start and with the same RL budget, what do GRPO and T-GRPO
do to accuracy and to the use of frame order, under the paper's per-group advantage normalisation and
under one where the temporal bonus can act?

    python experiment.py                  # 3 seeds x 8 arms on 2 CPU cores (see README for the time)
    python experiment.py --seeds=[0] --rl_steps=20 --out_root=out/experiment_quick   # a few minutes
    python plot.py                        # training curves of every arm of the last seed
    python experiment.py --family=qwen3_vl   # on a tiny Qwen3-VL: timestamps "keep" vs "follow"

Arms per seed (one SFT run, config/sft_demo.py, shared by the four RL arms, which differ only by flags):
  sft                SFT only
  grpo, tgrpo        config/tgrpo_demo.py with temporal off / on, advantage_norm="group" (paper)
  grpo_batch, tgrpo_batch   the same with advantage_norm="batch": rewards minus the group mean over
                     one std of the whole step, so a bonus paid to a group's correct answers enlarges
                     its advantages instead of being normalised away
and two controls:
  sft_long           SFT for long_sft_epochs instead of 80 on the same 96 rows: has the demo's SFT converged?
  sft_all, tgrpo_all SFT on all 352 COT rows (all_sft_epochs), alone and with tgrpo's run after it: what
                     3.7x more written reasoning buys, and what RL adds to that
With family="qwen3_vl" the arms are sft, tgrpo_keep and tgrpo_follow: T-GRPO whose shuffled videos keep
their timestamps in order (the frames move, the text does not) or carry each frame's timestamp along
(tgrpo.py's shuffle_timestamps), results in experiment/qwen3_vl/.
Every model is evaluated on eval_demo.json with ordered and shuffled frames (eval.py --shuffle=True).
Each stage is skipped when its output exists, so an interrupted run resumes; delete out_root to start
over. Tables (mean +- std over seeds) go to results_dir/results.md and results.json.
"""
import json
import os
import statistics
import subprocess
import sys
import time

seeds = [0, 1, 2]
rl_steps = 300                          # the same for every RL arm (config/tgrpo_demo.py's max_steps)
parallel = 2                            # processes at a time (2 cores, one torch thread each)
out_root = "out/experiment"
results_dir = "experiment"
extra_rl = []                           # more tgrpo.py flags for every RL arm, e.g. ["--alpha=1.0"]
long_sft_epochs = 160                   # sft_long's epochs (config/sft_demo.py: 80 over its 96 rows)
all_sft_epochs = 20                     # sft_all's epochs over all 320 training rows of cot.json
family = "qwen2_5_vl"                   # or "qwen3_vl": the tiny Qwen3-VL and the timestamp arms

from configurator import configure

config = configure(globals())

import demo
from demo import ensure_demo_assets

GRPO = ["config/tgrpo_grpo.py"]
SFTS = {"sft": [], "sft_long": [f"--num_epochs={long_sft_epochs}"],  # SFT arm -> sft.py flags
        "sft_all": ["--train_rows=None", f"--num_epochs={all_sft_epochs}"]}
ARMS = {"sft": None, "grpo": GRPO, "tgrpo": [], "grpo_batch": GRPO + ["--advantage_norm=batch"],
        "tgrpo_batch": ["--advantage_norm=batch"], "sft_long": None, "sft_all": None,
        "tgrpo_all": []}                # RL arm -> flags
START = {"tgrpo_all": "sft_all"}      # the SFT an RL arm starts from, if not "sft"
NAMES = {"chance": "chance (blind guess)", "sft": "SFT only", "grpo": "SFT + GRPO", "tgrpo": "SFT + T-GRPO",
         "grpo_batch": "SFT + GRPO, batch norm", "tgrpo_batch": "SFT + T-GRPO, batch norm",
         "sft_long": f"SFT only, {long_sft_epochs} epochs", "sft_all": "SFT only, all 352 COT rows",
         "tgrpo_all": "SFT all 352 COT rows + T-GRPO"}
if family != "qwen2_5_vl":
    SFTS = {"sft": []}
    ARMS = {"sft": None, "tgrpo_keep": ["--shuffle_timestamps=keep"],
            "tgrpo_follow": ["--shuffle_timestamps=follow"]}
    NAMES.update(tgrpo_keep="SFT + T-GRPO, timestamps kept in order",
                 tgrpo_follow="SFT + T-GRPO, timestamps follow the frames")
    if out_root == "out/experiment":
        out_root, results_dir = f"out/experiment_{family}", f"experiment/{family}"
PATHS, OVERLAY = demo.demo_paths(family)  # the family's demo configs go after config/<stage>_demo.py
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def run_all(commands):
    """Run (args, log) pairs, `parallel` at a time; raise if any fails."""
    pending, running = list(commands), []
    while pending or running:
        while pending and len(running) < parallel:
            args, log = pending.pop(0)
            print("$ python", " ".join(args), f"> {log}", flush=True)
            running.append((subprocess.Popen([sys.executable, *args], stdout=open(log, "w"),
                                             stderr=subprocess.STDOUT, env=ENV), log))
        p, log = running.pop(0)
        if p.wait() != 0:
            raise RuntimeError(f"{' '.join(p.args)} failed with code {p.returncode}, see {log}")


def done(out_dir, step=None):
    """A training run is finished when its last checkpoint exists."""
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    return any(n.startswith("step_") for n in names) if step is None else f"step_{step:06d}" in names


def train_stats(out_dir):
    """What the RL run saw, from its metrics.jsonl: reward and accuracy reward over the first and last
    25 steps; on video groups p - p~, the share of groups paid the temporal bonus and the share whose
    advantages it changed."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        steps = [m for m in map(json.loads, f) if "reward" in m]
    video = [m for m in steps if m["p_ordered"] == m["p_ordered"]]  # NaN: no video group that step
    return {"reward_first": demo.mean(m["reward"] for m in steps[:25]),
            "reward_last": demo.mean(m["reward"] for m in steps[-25:]),
            "accuracy_first": demo.mean(m["reward_accuracy"] for m in steps[:25]),
            "accuracy_last": demo.mean(m["reward_accuracy"] for m in steps[-25:]),
            "p_minus_p_shuffled": demo.mean(m["p_ordered"] - m["p_shuffled"] for m in video),
            "bonus_rate": demo.mean(m["temporal_bonus_rate"] for m in video),
            "bonus_moved": demo.mean(m["temporal_bonus_moved"] for m in video)}


def run_seed(seed, novel):
    root = os.path.join(out_root, f"seed{seed}")
    os.makedirs(root, exist_ok=True)
    run_all([(["sft.py", "config/sft_demo.py", *OVERLAY("sft"), *flags, f"--seed={seed}", f"--out_dir={root}/{arm}"],
              f"{root}/{arm}.log") for arm, flags in SFTS.items() if not done(os.path.join(root, arm))])
    runs = []
    for arm, flags in ARMS.items():
        out = os.path.join(root, arm)
        if flags is not None and not done(out, rl_steps):
            if os.path.isdir(os.path.join(root, f"eval_{arm}")):  # answers of an older model
                os.rename(os.path.join(root, f"eval_{arm}"), os.path.join(root, f"eval_{arm}.old.{time.time():.0f}"))
            sft = os.path.join(root, START.get(arm, "sft"))
            runs.append((["tgrpo.py", "config/tgrpo_demo.py", *OVERLAY("tgrpo"), *flags, f"--model_path={sft}", f"--seed={seed}",
                          f"--out_dir={out}", f"--max_steps={rl_steps}", *extra_rl], f"{root}/{arm}.log"))
    run_all(runs)
    evals = []
    for arm in ARMS:
        out = os.path.join(root, f"eval_{arm}")
        if not os.path.exists(os.path.join(out, "summary.json")):
            evals.append((["eval.py", "config/eval_demo.py", *OVERLAY("eval"), f"--model_path={root}/{arm}", "--shuffle=True",
                           f"--out_dir={out}"], f"{root}/eval_{arm}.log"))
    run_all(evals)
    results = {}
    for arm in ARMS:
        answers = demo.read_answers(os.path.join(root, f"eval_{arm}"))
        results[arm] = demo.score_records(answers)
        results[arm]["novel"] = demo.score_records([r for r in answers if r["problem_id"] in novel])
    for arm, flags in ARMS.items():
        if flags is not None:
            results[arm].update(train_stats(os.path.join(root, arm)))
    return results


def cell(values, scale=100, digits=1):
    xs = [v * scale for v in values]
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.{digits}f} ± {sd:.{digits}f}"


def tables(results, chance, repeats):
    """{seed: {arm: scores}} -> Markdown tables of mean +- std over seeds (in %, lengths in tokens);
    repeats: demo.novel_ids' {family: (copies, rows)}."""
    arms = ["chance", *ARMS]
    get = lambda arm, *keys: [_dig(chance if arm == "chance" else results[s][arm], keys) for s in results]
    main = [("all", "accuracy, all"), ("video ordered", "videos ordered"), ("video shuffled", "videos shuffled"),
            ("gap", "video gap"), ("order gap", "order-dependent gap"), ("format", "format")]
    lines = ["| arm | " + " | ".join(c for _, c in main) + " | length (tokens) |", "|---" * (len(main) + 2) + "|"]
    for arm in arms:
        length = "-" if arm == "chance" else cell(get(arm, "length"), 1)
        lines.append(f"| {NAMES[arm]} | " + " | ".join(cell(get(arm, k)) for k, _ in main) + f" | {length} |")
    novel_fams = sorted((f for f in chance["novel"] if isinstance(chance["novel"][f], dict)),
                        key=lambda f: (f not in demo.demo_world.ORDER_DEPENDENT, f))
    lines += ["", f"Novel questions only (in no training file; families without any left out). "
              f"{demo.repeat_line(repeats)}", "",
              "| arm | all | " + " | ".join(novel_fams) + " |", "|---" * (len(novel_fams) + 2) + "|"]
    for arm in arms:
        lines.append(f"| {NAMES[arm]} | {cell(get(arm, 'novel', 'all'))} | "
                     + " | ".join(cell(get(arm, "novel", f, "ordered")) for f in novel_fams) + " |")
    fams = sorted((f for f in chance if isinstance(chance[f], dict) and f != "novel"),
                  key=lambda f: (f not in demo.demo_world.ORDER_DEPENDENT, f))
    lines += ["", "Per family: accuracy with ordered frames / with shuffled frames (videos), format rate and "
              "length of the answers (model arms):", "",
              "| arm | " + " | ".join(fams) + " |", "|---" * (len(fams) + 1) + "|"]
    for arm in arms:
        row = []
        for f in fams:
            text = cell(get(arm, f, "ordered"))
            if "shuffled" in chance[f]:
                text += f" / {cell(get(arm, f, 'shuffled'))}"
            row.append(text)
        lines.append(f"| {NAMES[arm]} | " + " | ".join(row) + " |")
    lines += ["", "| arm | " + " | ".join(f"{f} format / length" for f in fams) + " |", "|---" * (len(fams) + 1) + "|"]
    for arm in ARMS:
        lines.append(f"| {NAMES[arm]} | " + " | ".join(
            f"{cell(get(arm, f, 'format'), digits=0)} / {cell(get(arm, f, 'length'), 1, 0)}" for f in fams) + " |")
    lines += ["", "During RL (metrics.jsonl): mean reward and accuracy reward over the first and last 25 steps; on "
              "video groups, p - p~ (share correct with ordered minus shuffled frames; sampled by T-GRPO only) and "
              "the share of video groups paid the temporal bonus, and of those whose advantages it changed:", "",
              "| arm | reward, first 25 | reward, last 25 | accuracy, first 25 | accuracy, last 25 | p - p~ (%) | bonus paid (%) "
              "| advantages moved (%) |", "|---|---|---|---|---|---|---|---|"]
    for arm in (a for a, flags in ARMS.items() if flags is not None):
        temporal = "tgrpo" in arm
        lines.append(f"| {NAMES[arm]} | " + " | ".join(cell(get(arm, k), 1, 2) for k in
                     ("reward_first", "reward_last", "accuracy_first", "accuracy_last")) + " | "
                     + (f"{cell(get(arm, 'p_minus_p_shuffled'))} | {cell(get(arm, 'bonus_rate'))} | "
                        f"{cell(get(arm, 'bonus_moved'))}" if temporal else "- | - | -")
                     + " |")
    return "\n".join(lines)


def _dig(d, keys):
    for k in keys:
        d = d[k]
    return d


if __name__ == "__main__":
    t0 = time.time()
    ensure_demo_assets(model_type=family)
    novel, repeats = demo.novel_ids()
    results = {}
    for seed in seeds:
        results[seed] = run_seed(seed, novel)
        print(f"seed {seed} done after {(time.time() - t0) / 60:.1f} min", flush=True)
    chance = demo.score_records(demo.chance_records())
    chance["novel"] = demo.score_records([r for r in demo.chance_records() if r["problem_id"] in novel])
    os.makedirs(results_dir, exist_ok=True)
    minutes = (time.time() - t0) / 60
    text = (f"# GRPO vs T-GRPO on the demo world\n\n`python experiment.py {' '.join(sys.argv[1:])}` ({minutes:.0f} min "
            f"for this invocation, finished stages skipped; seeds {seeds}, {rl_steps} RL steps per arm; "
            f"eval_demo.json; scores in %, mean ± standard deviation over seeds)\n\n"
            f"{tables(results, chance, repeats)}\n")
    with open(os.path.join(results_dir, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(results_dir, "results.json"), "w") as f:
        json.dump({"config": config, "minutes": minutes, "chance": chance, "results": results}, f, indent=1)
    print(text)
