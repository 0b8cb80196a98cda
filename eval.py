"""
Evaluate a checkpoint on video benchmarks (SPEC 5): batched greedy decoding, one JSON line per
answer (so an interrupted run resumes where it stopped), a summary per benchmark, problem type and
data source, and optionally the same rows again with shuffled frames to measure how much the
answers depend on frame order.

CPU demo (the tiny random model on the synthetic demo world; both are built on first use):
    python eval.py                        # the globals below (= config/eval_demo.py)
    python eval.py --shuffle=True         # + every video again with shuffled frames, and the gap
Real benchmarks (files eval_<name>.json, media relative to data_dir), 8 GPUs, data parallel:
    accelerate launch --num_processes 8 eval.py config/eval_7b.py --model_path=out/tgrpo_7b   # 64 frames
    ... --max_frames=16 --out_dir=out/eval_7b_16f   # the ablation setting (an out_dir per setting)
    ... --temperature=0.1 --top_p=0.001   # the release's near-greedy decoding instead of greedy
Several CPU processes, to see the sharding work without GPUs (same numbers as one process):
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 eval.py --shuffle=True
Run the same command again to resume: finished answers are read back from out_dir and skipped.

Output in out_dir: <benchmark>.jsonl (<benchmark>.rank<r>.jsonl per process when launched on
several; the summary reads them all), summary.md and summary.json.

Simplified on purpose:
- The question wording defaults to the training template (template="train"): it is what the
  checkpoints were trained on. template="eval" is the release evaluation script's wording.
- A row whose media fails to load is recorded with status "error" and its reason, left out of the
  scores (the table counts it) and tried again on the next run.
- The temporal-reasoning share is a keyword proxy (TEMPORAL_WORDS below), not the paper's judgement.
- Each process holds the whole model (a 7B model fits one GPU in bf16); rows are dealt out by media
  file (each file is decoded once, for all its questions), and on several nodes out_dir must be a
  shared folder. The next batch's media decode in a background thread while the model answers.
"""
import collections
import glob
import json
import os
import re
import time

import torch

# model and data
model_path = "out/tgrpo_demo"           # HF checkpoint, or a training out_dir (its newest step_*)
data_dir = "demo/world"                 # folder of eval_<name>.json files; media paths relative to it
benchmarks = "demo"                     # comma-separated <name>s of eval_<name>.json, or "all"
limit = None                            # at most this many rows per benchmark (None: all)
out_dir = "out/eval_demo"               # answers (.jsonl) and summary; rerun to resume
# prompt and decoding
template = "train"                      # "train": the wording checkpoints were trained on; "eval": release eval script
max_new_tokens = 96                     # release: 1024
batch_size = 16                         # prompts per generate call, per process
temperature = 0.0                       # 0: greedy (paper); release: 0.1 with top_p 0.001
top_p = 1.0
seed = 0                                # frame shuffles and sampling (temperature > 0)
# vision (SPEC 1.3; the demo world uses tiny frames, config/eval_7b.py the paper's)
max_frames = 8                          # 16, 32 or 64 on the benchmarks
fps = 2.0
video_min_pixels = 112 * 112            # demo: 112x112 frames, 64 tokens a video; paper 128*28*28
video_max_pixels = 112 * 112
image_min_pixels = 112 * 112            # demo: 16 tokens an image; paper 4*28*28 .. 256*28*28
image_max_pixels = 112 * 112            # release: 256*28*28
# temporal reliance
shuffle = False                         # also answer every video with shuffled frames; report the gap
shuffle_level = "frame"                 # "frame" (as T-GRPO) or "patch" (whole 2-frame patches)
# runtime
dtype = "float32"                       # "bfloat16" on GPUs
log_every = 10                          # a progress line with ETA every this many batches

from configurator import configure

config = configure(globals(), None if __name__ == "__main__" else [])  # tests import the defaults

from accelerate import Accelerator

import data
import model as engine
from checkpoint import resolve_model_path
from demo import ensure_demo_assets
from rewards import ANSWER_RE, eval_score

# Words that place events in time, matched whole-word and case-insensitively in the reasoning
# (the <think> part). A proxy for the paper's "temporal reasoning share" (75.0% T-GRPO, 60.2% GRPO).
TEMPORAL_WORDS = ("first", "then", "after", "afterwards", "before", "later", "earlier", "begins",
                  "beginning", "ends", "finally", "next", "moves", "moving", "order", "sequence",
                  "initially", "eventually", "meanwhile")
TEMPORAL_RE = re.compile(r"\b(?:" + "|".join(TEMPORAL_WORDS) + r")\b", re.IGNORECASE)
THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
# settings that change the answers: resuming into an out_dir made with others would mix two runs
RESULT_KEYS = ("model_path", "template", "max_new_tokens", "temperature", "top_p", "seed", "max_frames",
               "fps", "video_min_pixels", "video_max_pixels", "image_min_pixels", "image_max_pixels",
               "shuffle_level", "dtype")


def refers_to_time(output):
    """Whether the reasoning (the first <think>...</think>) uses a word of TEMPORAL_WORDS; an
    answer without a <think> part has no reasoning, so False.

    >>> refers_to_time("<think>First it rolls, then it stops.</think><answer>A</answer>")
    True
    >>> refers_to_time("<think>It is red.</think><answer>then</answer>"), refers_to_time("then")
    (False, False)
    """
    m = THINK_RE.search(output)
    return m is not None and TEMPORAL_RE.search(m.group(1)) is not None


def score_sample(output, solution, problem_type):
    """Parsed answer, score and time-word flag of one benchmark answer (SPEC 2, evaluation): no
    answer tag -> the whole output is the answer; MC and numerical by accuracy, regression by MRA.

    >>> score_sample("no tags, just B ", "<answer>B</answer>", "multiple choice")["answer"]
    'no tags, just B'
    """
    m = ANSWER_RE.search(output)
    return {"answer": m.group(1).strip() if m else output.strip(),
            "score": eval_score(output, solution, problem_type), "temporal": refers_to_time(output)}


def media_key(row):
    """What load_frames reads for a row: rows with the same key share one decode."""
    return row["media"], row["data_type"]


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def release_score(records):
    """The figure the release reports: mean score, except that a benchmark mixing regression rows
    with others (VSI-Bench) gets (mean over non-regression + mean MRA over regression) / 2.
    Example: MC scores 1, 0, 0, 1 and MRA 0.5, 0.0 -> (0.5 + 0.25) / 2 = 0.375 (row mean 0.417).
    """
    reg = [r["score"] for r in records if r["problem_type"] == "regression"]
    other = [r["score"] for r in records if r["problem_type"] != "regression"]
    return (mean(reg) + mean(other)) / 2 if reg and other else mean(reg or other)


def task_macro(records):
    """Mean over tasks (data_source) of each task's mean score: every task weighs the same."""
    tasks = {}
    for r in records:
        tasks.setdefault(r["data_source"], []).append(r["score"])
    return mean(mean(s) for s in tasks.values())


def group_stats(records):
    """Scores of one group of records (ordered and shuffled rows of the same questions).
    Errors are counted and left out; ordered/shuffled/gap are over questions answered both ways."""
    ordered = [r for r in records if not r["shuffled"] and r["status"] == "ok"]
    shuffled = {r["problem_id"]: r["score"] for r in records if r["shuffled"] and r["status"] == "ok"}
    pairs = [(r["score"], shuffled[r["problem_id"]]) for r in ordered if r["problem_id"] in shuffled]
    stats = {"n": len(ordered), "errors": sum(r["status"] == "error" for r in records),
             "release": release_score(ordered), "macro": task_macro(ordered),
             "temporal_share": mean(r["temporal"] for r in ordered), "pairs": len(pairs)}
    if pairs:
        stats["ordered"], stats["shuffled"] = mean(o for o, _ in pairs), mean(s for _, s in pairs)
        stats["gap"] = stats["ordered"] - stats["shuffled"]
    return stats


def summarize(records):
    """{benchmark: {"all": stats, "problem_type": {type: stats}, "data_source": {source: stats}}}."""
    out = {}
    for bench in sorted({r["benchmark"] for r in records}):
        rows = [r for r in records if r["benchmark"] == bench]
        out[bench] = {"all": group_stats(rows)}
        for key in ("problem_type", "data_source"):
            out[bench][key] = {v: group_stats([r for r in rows if r[key] == v])
                               for v in sorted({r[key] for r in rows})}
    return out


def markdown(summary, shuffled):
    """The summary as a Markdown table (scores in %), one line per benchmark, type and source."""
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}".replace("-0.0", "0.0")  # no "-0.0" gaps
    cols = ["benchmark / group", "n", "errors", "score (release)", "task macro", "time words"]
    cols += ["pairs", "ordered", "shuffled", "gap"] if shuffled else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for bench, s in summary.items():
        groups = [(f"**{bench}**", s["all"])]
        groups += [(f"{bench} · type: {k}", v) for k, v in s["problem_type"].items()]
        groups += [(f"{bench} · source: {k}", v) for k, v in s["data_source"].items()]
        for label, st in groups:
            cells = [label, st["n"], st["errors"], pct(st["release"]), pct(st["macro"]), pct(st["temporal_share"])]
            if shuffled:
                cells += [st["pairs"], pct(st.get("ordered")), pct(st.get("shuffled")), pct(st.get("gap"))]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines + [
        "",
        "score (release): mean accuracy (multiple choice, numerical; OCR and free-form as their rewards) or",
        "Mean Relative Accuracy (regression);",
        "a benchmark mixing regression with other rows (VSI-Bench) reports (mean non-regression + mean",
        "regression) / 2, as the release does. task macro: mean over data sources of their mean scores.",
        f"time words: share of answers whose <think> uses one of: {', '.join(TEMPORAL_WORDS)}.",
        "ordered / shuffled: mean score of the questions answered with both frame orders; gap = ordered -",
        "shuffled (> 0: the answers use the order). Errors (media failed to load) are left out of all scores.",
    ])


def read_records(out_dir, names):
    """All records saved in out_dir for these benchmarks (every process's file), keyed by
    (benchmark, problem_id, shuffled)."""
    records = {}
    for name in names:
        for path in sorted(glob.glob(os.path.join(out_dir, f"{name}.jsonl")) +
                           glob.glob(os.path.join(out_dir, f"{name}.rank*.jsonl"))):
            with open(path) as f:
                for line in f:
                    if not line.endswith("\n"):
                        continue  # the partial last line of a run killed mid-write
                    r = json.loads(line)
                    key = (r["benchmark"], r["problem_id"], r["shuffled"])
                    if key not in records or r["status"] == "ok":  # an answer beats an error record
                        records[key] = r
    return records


def open_answers(path):
    """Open for appending, after cutting a partial last line left by a run killed mid-write."""
    if os.path.exists(path):
        with open(path, "rb+") as f:
            f.truncate(f.read().rfind(b"\n") + 1)
    return open(path, "a")


def main():
    accelerator = Accelerator()
    rank, world, master = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    device = accelerator.device
    cfg = {k: globals()[k] for k in config}  # tests set the globals directly
    if master:
        print("config:", cfg)
        ensure_demo_assets(data_dir, model_path)
    accelerator.wait_for_everyone()
    path = resolve_model_path(model_path)

    # refuse to resume into answers produced with other settings
    settings = {**{k: cfg[k] for k in RESULT_KEYS}, "model_path": os.path.abspath(path)}
    settings_path = os.path.join(out_dir, "settings.json")
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            old = json.load(f)
        changed = sorted(k for k in settings if old.get(k) != settings[k])
        if changed:
            raise ValueError(f"{out_dir} holds answers made with other settings ({', '.join(changed)}): "
                             f"use another out_dir, or delete it to start over")
    accelerator.wait_for_everyone()
    if master:
        os.makedirs(out_dir, exist_ok=True)
        with open(settings_path, "w") as f:
            json.dump(settings, f, indent=1)

    # the work: every (row, ordered/shuffled) of every benchmark. The rows that read one media file (VideoMME
    # asks 3 questions per video) go to one rank, one after the other, so that it decodes the file once; each
    # file goes to the rank with the fewest jobs so far
    if benchmarks == "all":
        names = sorted(f[len("eval_"):-len(".json")] for f in os.listdir(data_dir)
                       if f.startswith("eval_") and f.endswith(".json"))
    else:
        names = [b.strip() for b in benchmarks.split(",")]
    jobs, expected, load = [], set(), [0] * world
    for name in names:
        file = os.path.join(data_dir, f"eval_{name}.json")
        rows = data.load_rows(file, limit=limit)
        if len({r["problem_id"] for r in rows}) != len(rows):
            raise ValueError(f"{file}: problem_id values repeat; answers are saved under them")
        readers = {}  # media file -> its rows, in file order
        for i, row in enumerate(rows):
            readers.setdefault(media_key(row), []).append(i)
        for users in readers.values():
            r = load.index(min(load))
            for i in users:
                for shuffled in ([False, True] if shuffle and rows[i]["data_type"] == "video" else [False]):
                    expected.add((name, rows[i]["problem_id"], shuffled))
                    load[r] += 1
                    if r == rank:
                        jobs.append((name, i, rows[i], shuffled))
    done = {k for k, r in read_records(out_dir, names).items() if r["status"] == "ok"}
    todo = [j for j in jobs if (j[0], j[2]["problem_id"], j[3]) not in done]
    accelerator.wait_for_everyone()  # every rank has read the old answers before anyone appends
    if master:
        print(f"{len(expected)} answers in {len(names)} benchmark(s), {len(expected) - len(done & expected)} "
              f"to do, {world} process(es)")

    hf, tokenizer = engine.load_model(path, dtype=getattr(torch, dtype), device=device)
    hf.eval()
    stop_ids = engine.stop_token_ids(tokenizer)
    sample_gen = torch.Generator(device=device).manual_seed(seed + rank)
    suffix = f".rank{rank}" if world > 1 else ""
    files = {name: open_answers(os.path.join(out_dir, f"{name}{suffix}.jsonl")) for name in names}
    uses = collections.Counter(media_key(row) for _, _, row, _ in todo)
    decoded = {}  # media file -> (frames, seconds per patch) or its MediaError, until its last job here has it

    def frames_of(row):
        """load_frames once per media file for all the jobs reading it (its questions, ordered and shuffled); they
        are adjacent in todo, so this holds at most one decoded file. Raises the file's MediaError for each job."""
        key = media_key(row)
        if key not in decoded:
            try:
                decoded[key] = data.load_frames(row, max_frames, fps, video_min_pixels, video_max_pixels,
                                                image_min_pixels, image_max_pixels)
            except data.MediaError as e:
                decoded[key] = e
        uses[key] -= 1
        got = decoded[key] if uses[key] else decoded.pop(key)
        if isinstance(got, data.MediaError):
            raise got
        return got

    def batch_inputs(batch_jobs):
        """1. media and prompts of a batch; a row whose media fails to load becomes an error record, alone.
        Runs on the prefetch thread, batch after batch, while the model answers the batch before."""
        records, prompts, visuals = [], [], []
        for name, i, row, shuffled in batch_jobs:
            rec = {"benchmark": name, "problem_id": row["problem_id"], "shuffled": shuffled,
                   "problem_type": row["problem_type"], "data_source": row.get("data_source", ""),
                   "solution": row["solution"]}
            records.append(rec)
            t0 = time.time()
            try:
                frames, spt = frames_of(row)                             # [T, 3, H, W]
            except data.MediaError as e:  # missing, empty, damaged: this answer only
                rec.update(status="error", error=str(e))
                continue
            if shuffled:  # one seeded permutation per row: reruns and resumes see the same order
                frames = data.shuffle_frames(frames, torch.Generator().manual_seed(seed * 1_000_003 + i),
                                             level=shuffle_level)        # [T, 3, H, W]
            prompts.append(data.prompt_text(row, template=template))
            visuals.append(data.make_visual(frames, spt))
            rec.update(status="ok", load_s=time.time() - t0)
        return records, prompts, visuals

    n_batches = (len(todo) + batch_size - 1) // batch_size
    batches = data.prefetch(batch_inputs, (todo[b * batch_size:(b + 1) * batch_size] for b in range(n_batches)))
    t_start, n_tokens = time.time(), 0
    for b, (records, prompts, visuals) in enumerate(batches):
        # 2. one generate call for the batch, then score each answer
        ok = [r for r in records if r["status"] == "ok"]
        if ok:
            batch = data.collate(prompts, visuals, tokenizer)
            t0 = time.time()
            out = engine.generate(hf, batch, 1, max_new_tokens, temperature=temperature, top_p=top_p,
                                  generator=sample_gen, stop_ids=stop_ids)
            gen_s = time.time() - t0
            for j, p in enumerate(out["prompt_index"].tolist()):
                n = out["lengths"][j].item()
                output = tokenizer.decode(out["completion_ids"][j, :n], skip_special_tokens=True)
                rec = ok[p]
                rec.update(output=output, **score_sample(output, rec["solution"], rec["problem_type"]),
                           gen_tokens=n, truncated=bool(out["truncated"][j]),
                           seconds=rec.pop("load_s") + gen_s / len(ok))  # own load + share of the batch
                n_tokens += n
        for rec in records:
            files[rec["benchmark"]].write(json.dumps(rec) + "\n")
        for f in files.values():
            f.flush()
        if master and ((b + 1) % log_every == 0 or b + 1 == n_batches):
            elapsed = time.time() - t_start
            print(f"batch {b + 1}/{n_batches} | {n_tokens / elapsed:.0f} tok/s | {elapsed / 60:.1f} min, "
                  f"ETA {elapsed / (b + 1) * (n_batches - b - 1) / 60:.1f} min (rank 0)", flush=True)
    for f in files.values():
        f.close()
    accelerator.wait_for_everyone()

    # 3. summary on rank 0, from every process's answers: the same numbers as one process
    if master:
        found = read_records(out_dir, names)
        records = [found[k] for k in sorted(expected, key=str) if k in found]
        if len(records) < len(expected):
            print(f"warning: {len(expected) - len(records)} answers missing from {out_dir}")
        errors = [r for r in records if r["status"] == "error"]
        if errors:
            print(f"{len(errors)} answers have no result because their media failed to load (left out of the "
                  f"scores, tried again on the next run):\n" + "\n".join(r["error"] for r in errors[:20]))
        summary = summarize(records)
        table = markdown(summary, shuffle)
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump({"config": cfg, "model": path, "summary": summary}, f, indent=1)
        with open(os.path.join(out_dir, "summary.md"), "w") as f:
            f.write(f"# {path}\n\n{table}\n")
        print(table)
    accelerator.end_training()


if __name__ == "__main__":
    main()
