"""
Check a dataset file before a long run: every row validated, every media file decoded with the frame
settings training will use, in parallel processes (a file that hangs the decoder or kills it is
reported as such, and the check goes on); a report of the bad rows, exit status 1 if there
is any, and optionally a clean copy without them. A bad file then costs nothing during training.

    python check_data.py data/Video-R1-data/Video-R1-260k.json --workers=64 \
        --clean=data/Video-R1-data/Video-R1-260k.clean.json
    python check_data.py data/Video-R1-data/Video-R1-COT-165k.json --require_process=True
    python check_data.py data/eval/eval_vsibench.json --max_frames=64 --video_max_pixels=200704

The report (file, row, field or media path, reason) goes to <file name>.check.tsv.
"""
import json
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

data_dir = None                         # media root (default: the file's folder, as training)
max_frames = 16                         # the frame settings of the run to check for (the paper's)
fps = 2.0
video_min_pixels = 128 * 28 * 28
video_max_pixels = 128 * 28 * 28
image_min_pixels = 4 * 28 * 28
image_max_pixels = 256 * 28 * 28
family = "qwen2_5_vl"                   # the model's: frame sides in its units (qwen3_vl: 32 pixels)
video_cap_floor_ratio = 1.05            # frame cap >= 1.05 x the floor: qwen-vl-utils (None: off)
media_timeout = 120                     # s per media file: a decode that takes longer is bad media
require_process = False                 # True for the COT file: every row needs its <think>
workers = os.cpu_count() or 1           # files decoded at once, each in its own process
report = ""                             # report path (default: <file name>.check.tsv here)
clean = ""                              # also write the file without its bad rows to this path

from configurator import configure

config = configure(globals(), sys.argv[2:] if __name__ == "__main__" else [])  # argv[1] is the file

import data
import families


_local = threading.local()  # .decoder: each worker thread's decode process


def _decode_problem(key, settings, timeout):
    """(media, data_type) -> the MediaError message of decoding it as training does, or None. In
    the calling thread's own quiet data.DecodeProcess: a file that hangs (past `timeout` seconds)
    or kills its decoder is a bad row like any other, and the check goes on."""
    if not hasattr(_local, "decoder"):
        _local.decoder = data.DecodeProcess(threads=1, quiet=True)  # the workers: the parallelism
    try:
        _local.decoder({"media": key[0], "data_type": key[1]}, settings, timeout)
    except data.MediaError as e:
        return str(e)
    return None


def decode_all(keys, settings, timeout, workers):
    """Yield (key, MediaError message or None) for every (media, data_type) key, as they finish,
    `workers` at a time (threads, each waiting on its decode process)."""
    with ThreadPoolExecutor(workers, thread_name_prefix="check") as pool:
        futures = {pool.submit(_decode_problem, key, settings, timeout): key for key in keys}
        for future in as_completed(futures):
            yield futures[future], future.result()


def check_rows(path, data_root=None, require_process=False, workers=1, progress=True,
               media_timeout=120, **media):
    """Validate every row of a dataset file and decode every media file of the valid rows exactly as
    training reads it (media: decode_frames' keywords), each distinct file once, `workers` at a
    time, each decode stopped after media_timeout seconds (a "hung: ..." reason).

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
    for key, reason in decode_all(users, media, media_timeout, workers):
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
