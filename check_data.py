"""
Check a dataset file before a long run: every row validated, every media file decoded with the frame
settings training will use, in parallel processes; a report of the bad rows, exit status 1 if there
is any, and optionally a clean copy without them. A bad file then costs nothing during training.

    python check_data.py data/Video-R1-data/Video-R1-260k.json --workers=64 \
        --clean=data/Video-R1-data/Video-R1-260k.clean.json
    python check_data.py data/Video-R1-data/Video-R1-COT-165k.json --require_process=True --workers=64
    python check_data.py data/eval/eval_vsibench.json --max_frames=64 --video_max_pixels=200704

The report (file, row, field or media path, reason) goes to <file name>.check.tsv.
"""
import collections
import json
import os
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

data_dir = None                         # media root (default: the file's folder, as training)
max_frames = 16                         # the frame settings of the run to check for (the paper's)
fps = 2.0
video_min_pixels = 128 * 28 * 28
video_max_pixels = 128 * 28 * 28
image_min_pixels = 4 * 28 * 28
image_max_pixels = 256 * 28 * 28
family = "qwen2_5_vl"                   # the model's: frame sides in its units (qwen3_vl: 32 pixels)
require_process = False                 # True for the COT file: every row needs its <think>
workers = os.cpu_count() or 1           # decoding processes
report = ""                             # report path (default: <file name>.check.tsv here)
clean = ""                              # also write the file without its bad rows to this path

from configurator import configure

config = configure(globals(), sys.argv[2:] if __name__ == "__main__" else [])  # argv[1] is the file

import decord
import torch

import data
import families


def _quiet_worker():
    torch.set_num_threads(1)  # the workers are the parallelism
    # decord and ffmpeg print to stderr for every damaged file, over the progress line; the report
    # has the reasons
    decord.logging.set_level(decord.logging.QUIET)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)


def _decode_problem(job):
    """Worker: ((media, data_type), load_frames settings) -> ((media, data_type), MediaError message
    or None)."""
    (media, data_type), settings = job
    try:
        data.load_frames({"media": media, "data_type": data_type}, **settings)
    except data.MediaError as e:
        return (media, data_type), str(e)
    return (media, data_type), None


def decode_all(keys, settings, workers):
    """Yield (key, MediaError message or None) for every (media, data_type) key, decoded in
    `workers` processes. A decoder can also kill its process on a damaged file (decord has been seen
    to segfault and abort): the files in flight are then decoded again one at a time, each in a
    process of its own, to name the culprit."""
    todo = collections.deque(keys)
    while todo:
        in_flight = {}  # future -> key
        try:
            with ProcessPoolExecutor(workers, initializer=_quiet_worker) as pool:
                while todo or in_flight:
                    while todo and len(in_flight) < 2 * workers:
                        key = todo.popleft()
                        in_flight[pool.submit(_decode_problem, (key, settings))] = key
                    for future in wait(in_flight, return_when=FIRST_COMPLETED).done:
                        yield future.result()
                        del in_flight[future]
        except BrokenProcessPool:
            for key in in_flight.values():
                with ProcessPoolExecutor(1, initializer=_quiet_worker) as alone:
                    try:
                        yield alone.submit(_decode_problem, (key, settings)).result()
                    except BrokenProcessPool:
                        yield key, f"the decoder crashed its process on {key[0]}"


def check_rows(path, data_root=None, require_process=False, workers=1, progress=True, **media):
    """Validate every row of a dataset file and decode every media file of the valid rows exactly as
    training reads it (media: load_frames' keywords), each distinct file once, in `workers`
    processes.

    Returns (items, problems): the file's rows, and one (row index, field or media path, reason) per
    bad row, in row order. E.g. [(3, "problem_type", "unknown value 'mcq'"), (7, "/d/v7.mp4", "video
    not found: ...")].
    """
    with open(path) as f:
        items = json.load(f)  # a file that is not a JSON list stops here: no row can be checked
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of rows, got {type(items).__name__}")
    root = os.path.dirname(os.path.abspath(path)) if data_root is None else data_root
    root = os.path.abspath(root)
    problems, users = [], {}  # users: (media, data_type) -> indices of the rows that read it
    for i, row in enumerate(items):
        where = f"{path}: row {i}"
        try:
            data.check_row(row, where, require_process)
        except ValueError as e:
            m = re.match(r"field '(\w+)': (.*)", str(e)[len(where) + 2:], re.DOTALL)
            reason = str(e)[len(where) + 2:]
            problems.append((i, m.group(1), m.group(2)) if m else (i, "row", reason))
            continue
        users.setdefault((data.media_path(row["path"], root), row["data_type"]), []).append(i)
    t0 = shown = time.time()
    done = bad = 0
    for key, reason in decode_all(users, media, workers):
        done += 1
        if reason is not None:
            problems += [(i, key[0], reason) for i in users[key]]
            bad += 1
        if progress and (time.time() - shown > 0.5 or done == len(users)):  # twice a second
            shown, elapsed = time.time(), time.time() - t0
            eta = elapsed / done * (len(users) - done)
            print(f"\rdecoded {done}/{len(users)} media files | {done / elapsed:.1f} files/s | "
                  f"{bad} bad | {elapsed:.0f} s, ETA {eta // 3600:.0f}:{eta % 3600 // 60:02.0f}:"
                  f"{eta % 60:02.0f}", end="\n" if done == len(users) else "", file=sys.stderr,
                  flush=True)
    return items, sorted(problems, key=lambda p: p[0])


def main(file):
    """Check `file` with the globals above; returns the exit status: 0 when every row is fine, 1 if
    not."""
    cfg = {k: globals()[k] for k in config}
    t0 = time.time()
    media = data.media_settings(cfg, families.of(family))
    items, problems = check_rows(file, data_dir, require_process, workers, **media)
    seconds = time.time() - t0
    out = report or os.path.splitext(os.path.basename(file))[0] + ".check.tsv"
    with open(out, "w") as f:
        f.write("file\trow\tfield_or_path\treason\n")
        f.writelines(f"{file}\t{i}\t{where}\t{' '.join(reason.split())}\n"
                     for i, where, reason in problems)
    bad_rows = sorted({i for i, _, _ in problems})
    for i, where, reason in problems[:10]:
        print(f"row {i}: {where}: {reason}")
    print(f"{file}: {len(items)} rows, {len(bad_rows)} bad ({len(items) / seconds:.1f} rows/s over "
          f"{seconds:.1f} s, {workers} workers); report: {out}")
    if clean:
        bad = set(bad_rows)
        with open(clean, "w") as f:
            json.dump([row for i, row in enumerate(items) if i not in bad], f, ensure_ascii=False)
        print(f"wrote {len(items) - len(bad)} good rows to {clean}")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("--"):
        raise SystemExit("usage: python check_data.py FILE.json [--data_dir=...] [--max_frames=16] "
                         "[--workers=N] [--report=bad.tsv] [--clean=FILE.clean.json] ...")
    print("check:", config)
    sys.exit(main(sys.argv[1]))
