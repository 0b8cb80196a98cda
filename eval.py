"""
Evaluate a checkpoint on video benchmarks (SPEC 5): batched greedy decoding, one JSON line per
answer (so an interrupted run resumes where it stopped), a summary per benchmark, problem type and
data source, and optionally the same rows again with shuffled frames to measure how much the
answers depend on frame order.

The paper's evaluation (the defaults: 64 frames of 256*28*28 pixels), 8 GPUs, data parallel:
    accelerate launch --num_processes 8 eval.py config/eval_7b.py --model_path=out/tgrpo_7b
    ... --max_frames=16 --out_dir=out/eval_7b_16f   # the ablation setting (an out_dir per setting)
    ... --temperature=0.1 --top_p=0.001   # the release's near-greedy decoding instead of greedy
    ... --shuffle=True                    # + every video again with shuffled frames, and the gap
The CPU demo (after `python demo.py`, or its first stages):
    python eval.py config/eval_demo.py --model_path=out/tgrpo_demo --shuffle=True
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
model_path = "out/tgrpo_7b"             # a HF checkpoint (Video-R1/Video-R1-7B, ...) or an out_dir
data_dir = "data/eval"                  # eval_<name>.json files; media paths relative to it
benchmarks = "all"                      # comma-separated <name>s of eval_<name>.json, or "all"
limit = None                            # at most this many rows per benchmark (None: all)
out_dir = "out/eval_7b"                 # answers (.jsonl) and summary; rerun to resume
# prompt and decoding
template = "train"                      # "train": the wording of training; "eval": the release's
max_new_tokens = 1024
batch_size = 8                          # prompts per generate call (64 frames: ~8k tokens each)
temperature = 0.0                       # 0: greedy (paper); release: 0.1 with top_p 0.001
top_p = 1.0
seed = 0                                # frame shuffles and sampling (temperature > 0)
# vision (SPEC 1.3, 5)
max_frames = 64                         # the paper's main table; its ablations use 16
fps = 2.0
video_min_pixels = 128 * 28 * 28        # qwen-vl-utils' default floor
video_max_pixels = 256 * 28 * 28        # the release's inference setting per frame
image_min_pixels = 4 * 28 * 28
image_max_pixels = 256 * 28 * 28
video_cap_floor_ratio = 1.05            # frame cap >= 1.05 x the floor: qwen-vl-utils (None: off)
media_timeout = 120                     # s per media file: a decode that takes longer is bad media
# temporal reliance
shuffle = False                         # also answer each video with shuffled frames: the gap
shuffle_level = "frame"                 # "frame" (as T-GRPO) or "patch" (whole 2-frame patches)
shuffle_timestamps = "keep"             # Qwen3-VL: as tgrpo.py
# runtime
dtype = "bfloat16"                      # "float32" on CPU
log_every = 20                          # a progress line with ETA every this many batches

from configurator import configure

config = configure(globals(), None if __name__ == "__main__" else [])  # tests import the defaults

from accelerate import Accelerator

import data
import families
import model as engine
from common import resolve_model_path
from rewards import ANSWER_RE, eval_score

# Words that place events in time, matched whole-word and case-insensitively in the reasoning
# (the <think> part). A proxy for the paper's "temporal reasoning share" (75.0% T-GRPO, 60.2% GRPO).
TEMPORAL_WORDS = ("first", "then", "after", "afterwards", "before", "later", "earlier", "begins",
                  "beginning", "ends", "finally", "next", "moves", "moving", "order", "sequence",
                  "initially", "eventually", "meanwhile")
TEMPORAL_RE = re.compile(r"\b(?:" + "|".join(TEMPORAL_WORDS) + r")\b", re.IGNORECASE)
THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
# settings that change the answers: resuming into an out_dir made with others would mix two runs
RESULT_KEYS = ("model_path", "template", "max_new_tokens", "temperature", "top_p", "seed",
               "max_frames", "fps", "video_min_pixels", "video_max_pixels", "image_min_pixels",
               "image_max_pixels", "video_cap_floor_ratio", "shuffle_level", "shuffle_timestamps",
               "dtype")


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
    shuffled = {r["problem_id"]: r["score"] for r in records
                if r["shuffled"] and r["status"] == "ok"}
    pairs = [(r["score"], shuffled[r["problem_id"]]) for r in ordered
             if r["problem_id"] in shuffled]
    stats = {"n": len(ordered), "errors": sum(r["status"] == "error" for r in records),
             "release": release_score(ordered), "macro": task_macro(ordered),
             "temporal_share": mean(r["temporal"] for r in ordered), "pairs": len(pairs)}
    if pairs:
        stats["ordered"], stats["shuffled"] = mean(o for o, _ in pairs), mean(s for _, s in pairs)
        stats["gap"] = stats["ordered"] - stats["shuffled"]
    return stats


def summarize(records):
    """{benchmark: {"all": stats, "problem_type": {type: stats}, "data_source": {src: stats}}}."""
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
            cells = [label, st["n"], st["errors"], pct(st["release"]), pct(st["macro"]),
                     pct(st["temporal_share"])]
            if shuffled:
                cells += [st["pairs"], pct(st.get("ordered")), pct(st.get("shuffled")),
                          pct(st.get("gap"))]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines + [
        "",
        "score (release): mean accuracy (multiple choice, numerical; OCR and free-form as their",
        "rewards) or Mean Relative Accuracy (regression); a benchmark mixing regression with",
        "other rows (VSI-Bench) reports (mean non-regression + mean regression) / 2, as the",
        "release does. task macro: mean over data sources of their mean scores.",
        f"time words: share of answers whose <think> uses one of: {', '.join(TEMPORAL_WORDS)}.",
        "ordered / shuffled: mean score of the questions answered with both frame orders; gap =",
        "ordered - shuffled (> 0: the answers use the order). Errors (media failed to load) are",
        "left out of all scores.",
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


def benchmark_names(data_dir, benchmarks):
    """"all": every eval_<name>.json in data_dir; else the comma-separated names."""
    if benchmarks == "all":
        return sorted(f[len("eval_"):-len(".json")] for f in os.listdir(data_dir)
                      if f.startswith("eval_") and f.endswith(".json"))
    return [b.strip() for b in benchmarks.split(",")]


def plan_jobs(rows_of, world, rank, shuffle):
    """The work: (benchmark, row index, row, shuffled) for every row of every benchmark, ordered and
    (for videos when shuffle) shuffled. The rows that read one media file (VideoMME asks 3 questions
    per video) go to one rank, one after the other, so that it decodes the file once; each file goes
    to the rank with the fewest jobs so far. Returns (this rank's jobs, the keys (benchmark,
    problem_id, shuffled) of all).

    >>> rows = [{"problem_id": i, "media": m, "data_type": "image"} for i, m in enumerate("aab")]
    >>> [(j[1], j[3]) for j in plan_jobs({"b": rows}, 2, 0, False)[0]]   # a.png's two questions
    [(0, False), (1, False)]
    """
    jobs, expected, load = [], set(), [0] * world
    for name, rows in rows_of.items():
        if len({r["problem_id"] for r in rows}) != len(rows):
            raise ValueError(f"eval_{name}.json: problem_id values repeat; answers are saved "
                             f"under them")
        readers = {}  # media file -> its rows, in file order
        for i, row in enumerate(rows):
            readers.setdefault(media_key(row), []).append(i)
        for users in readers.values():
            r = load.index(min(load))
            for i in users:
                both = shuffle and rows[i]["data_type"] == "video"
                for shuffled in ([False, True] if both else [False]):
                    expected.add((name, rows[i]["problem_id"], shuffled))
                    load[r] += 1
                    if r == rank:
                        jobs.append((name, i, rows[i], shuffled))
    return jobs, expected


def check_settings(accelerator, settings):
    """Refuse to resume into an out_dir of answers made with other settings; then record them."""
    path = os.path.join(out_dir, "settings.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        changed = sorted(k for k in settings if old.get(k) != settings[k])
        if changed:
            raise ValueError(f"{out_dir} holds answers made with other settings "
                             f"({', '.join(changed)}): use another out_dir, or delete it to "
                             f"start over")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        os.makedirs(out_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(settings, f, indent=1)


class DecodeOnce:
    """load_frames once per media file for all the jobs that read it (its questions, ordered and
    shuffled). They are adjacent in the job list, so at most one decoded file is held beyond the
    batches in flight."""

    def __init__(self, jobs, media):
        self.uses = collections.Counter(media_key(row) for _, _, row, _ in jobs)
        self.decoded, self.media = {}, media

    def __call__(self, row):
        """(frames, seconds per patch) of the row's media; raises its MediaError for each job."""
        key = media_key(row)
        if key not in self.decoded:
            try:
                self.decoded[key] = data.load_frames(row, **self.media)
            except data.MediaError as e:
                self.decoded[key] = e
        self.uses[key] -= 1
        got = self.decoded[key] if self.uses[key] else self.decoded.pop(key)
        if isinstance(got, data.MediaError):
            raise got
        return got


def batch_inputs(batch_jobs, frames_of):
    """1. Records, prompts and visuals of a batch of jobs; a row whose media fails to load becomes
    an error record, alone. Runs on the prefetch thread while the model answers the batch before."""
    records, prompts, visuals = [], [], []
    family = frames_of.media.get("family", data.QWEN2_5_VL)
    for name, i, row, shuffled in batch_jobs:
        rec = {"benchmark": name, "problem_id": row["problem_id"], "shuffled": shuffled,
               "problem_type": row["problem_type"], "data_source": row.get("data_source", ""),
               "solution": row["solution"]}
        records.append(rec)
        t0 = time.time()
        try:
            frames, spt = frames_of(row)                                 # [T, 3, H, W]
        except data.MediaError as e:  # missing, empty, damaged: this answer only
            rec.update(status="error", error=str(e))
            continue
        if shuffled:  # one seeded permutation per row: reruns and resumes see the same order
            gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
            frames, spt = data.shuffle_video(frames, spt, gen, shuffle_level,
                                             shuffle_timestamps)  # [T, 3, H, W]
        prompts.append(data.prompt_text(row, template, family))
        visuals.append(data.make_visual(frames, spt, family))
        rec.update(status="ok", load_s=time.time() - t0)
    return records, prompts, visuals


def answer(hf, tokenizer, records, prompts, visuals, generator):
    """2. One generate call for the batch's loadable rows; each answer scored into its record.
    Returns the tokens generated."""
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return 0
    t0 = time.time()
    out = engine.generate(hf, data.collate(prompts, visuals, tokenizer), 1, max_new_tokens,
                          temperature=temperature, top_p=top_p, generator=generator,
                          stop_ids=engine.stop_token_ids(tokenizer))
    gen_s = time.time() - t0
    for j, p in enumerate(out["prompt_index"].tolist()):
        n = out["lengths"][j].item()
        output = engine.completion_texts(tokenizer, out["completion_ids"][j:j + 1, :n])[0]
        rec = ok[p]
        rec.update(output=output, **score_sample(output, rec["solution"], rec["problem_type"]),
                   gen_tokens=n, truncated=bool(out["truncated"][j]),
                   seconds=rec.pop("load_s") + gen_s / len(ok))  # own load + share of the batch
    return out["lengths"].sum().item()


def write_summary(path, cfg, names, expected):
    """3. The summary from every process's answers (the same numbers as one process)."""
    found = read_records(out_dir, names)
    records = [found[k] for k in sorted(expected, key=str) if k in found]
    if len(records) < len(expected):
        print(f"warning: {len(expected) - len(records)} answers missing from {out_dir}")
    errors = [r for r in records if r["status"] == "error"]
    if errors:
        print(f"{len(errors)} answers have no result because their media failed to load (left out "
              f"of the scores, tried again on the next run):")
        print("\n".join(r["error"] for r in errors[:20]))
    summary = summarize(records)
    table = markdown(summary, shuffle)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump({"config": cfg, "model": path, "summary": summary}, f, indent=1)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(f"# {path}\n\n{table}\n")
    print(table)


def main():
    cfg = {k: globals()[k] for k in config}  # tests set the globals directly
    accelerator = Accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    master = accelerator.is_main_process
    if master:
        print("config:", cfg)
    path = resolve_model_path(model_path)
    settings = {k: cfg[k] for k in RESULT_KEYS}
    check_settings(accelerator, {**settings, "model_path": os.path.abspath(path)})
    names = benchmark_names(data_dir, benchmarks)
    rows_of = {name: data.load_rows(os.path.join(data_dir, f"eval_{name}.json"), limit=limit)
               for name in names}
    jobs, expected = plan_jobs(rows_of, world, rank, shuffle)
    done = {k for k, r in read_records(out_dir, names).items() if r["status"] == "ok"}
    todo = [j for j in jobs if (j[0], j[2]["problem_id"], j[3]) not in done]
    accelerator.wait_for_everyone()  # every rank has read the old answers before anyone appends
    if master:
        print(f"{len(expected)} answers in {len(names)} benchmark(s), "
              f"{len(expected - done)} to do, "
              f"{world} process(es)")

    hf, tokenizer = engine.load_model(path, dtype=getattr(torch, dtype), device=accelerator.device)
    hf.eval()
    generator = torch.Generator(device=accelerator.device).manual_seed(seed + rank)
    suffix = f".rank{rank}" if world > 1 else ""
    files = {name: open_answers(os.path.join(out_dir, f"{name}{suffix}.jsonl")) for name in names}
    frames_of = DecodeOnce(todo, data.media_settings(cfg, families.of(hf.config)))
    chunks = [todo[b:b + batch_size] for b in range(0, len(todo), batch_size)]
    t_start, n_tokens = time.time(), 0
    batches = data.prefetch(lambda c: batch_inputs(c, frames_of), chunks)
    for b, (records, prompts, visuals) in enumerate(batches):
        n_tokens += answer(hf, tokenizer, records, prompts, visuals, generator)
        for rec in records:
            files[rec["benchmark"]].write(json.dumps(rec) + "\n")
        for f in files.values():
            f.flush()
        if master and ((b + 1) % log_every == 0 or b + 1 == len(chunks)):
            elapsed = time.time() - t_start
            eta = elapsed / (b + 1) * (len(chunks) - b - 1)
            print(f"batch {b + 1}/{len(chunks)} | {n_tokens / elapsed:.0f} tok/s | "
                  f"{elapsed / 60:.1f} min, ETA {eta / 60:.1f} min (rank 0)", flush=True)
    for f in files.values():
        f.close()
    accelerator.wait_for_everyone()
    if master:
        write_summary(path, cfg, names, expected)
    accelerator.end_training()


if __name__ == "__main__":
    main()
