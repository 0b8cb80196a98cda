"""Tests of checkpoint.py's handling of unusable rows: seeded replacement, the bad-media log and its stop rule."""
import pytest
import torch
from accelerate import Accelerator

from checkpoint import MIN_BAD_MEDIA, BadMediaLog, encode_or_replace
from data import MediaError

ROWS = [{"id": i, "media": f"/d/{i}.mp4"} for i in range(10)]
BAD, LONG = {2, 5, 7}, {3}


def encode(row):
    if row["id"] in BAD:
        raise MediaError(f"cannot decode video {row['media']}: damaged")
    return None if row["id"] in LONG else f"encoded {row['id']}"


def test_encode_or_replace_replaces_bad_and_long_rows_with_seeded_draws():
    assert encode_or_replace(ROWS[0], ROWS, encode, torch.Generator().manual_seed(0)) == (ROWS[0], "encoded 0", 0, [])
    # the replacements are the generator's draws, in order (the same on a resumed run): with seed 12 they are
    # 3 (too long), 3, 2 (bad), 7 (bad), 3, 6 (good)
    gen = torch.Generator().manual_seed(12)
    assert [torch.randint(10, (1,), generator=gen).item() for _ in range(6)] == [3, 3, 2, 7, 3, 6]
    row, encoded, rejected, bad = encode_or_replace(ROWS[5], ROWS, encode, torch.Generator().manual_seed(12))
    assert (row, encoded, rejected) == (ROWS[6], "encoded 6", 3)
    assert bad == [(f"/d/{i}.mp4", f"cannot decode video /d/{i}.mp4: damaged") for i in (5, 2, 7)]


def test_encode_or_replace_gives_up_with_the_reason():
    with pytest.raises(ValueError, match=r"100 rows in a row could not be used: 0 rejected .*100 with bad media; "
                                         r"the last bad media: cannot decode video /d/\d.mp4: damaged"):
        encode_or_replace(ROWS[2], [ROWS[i] for i in BAD], encode, torch.Generator().manual_seed(0))


def test_bad_media_log_counts_writes_each_path_once_and_resumes(tmp_path):
    acc = Accelerator()
    log = BadMediaLog(acc, str(tmp_path), max_share=0.5)
    log.update(1, [("/d/a.mp4", "cannot decode video /d/a.mp4:\n damaged")], 4)
    log.update(2, [], 4)
    log.update(3, [("/d/a.mp4", "again"), ("/d/b.png", "image not found: /d/b.png")], 4)
    assert log.state() == {"bad_media": 3, "rows_read": 12}
    text = (tmp_path / "bad_media.txt").read_text()
    assert text == "1\t/d/a.mp4\tcannot decode video /d/a.mp4: damaged\n3\t/d/b.png\timage not found: /d/b.png\n"
    # resuming from step 2 drops what steps 3+ wrote (they run again) and keeps the counts of the checkpoint
    log = BadMediaLog(acc, str(tmp_path), max_share=0.5, resume_step=2, state={"bad_media": 1, "rows_read": 8})
    assert (tmp_path / "bad_media.txt").read_text() == "1\t/d/a.mp4\tcannot decode video /d/a.mp4: damaged\n"
    log.update(3, [("/d/a.mp4", "again"), ("/d/b.png", "image not found: /d/b.png")], 4)
    assert (tmp_path / "bad_media.txt").read_text() == text and log.state() == {"bad_media": 3, "rows_read": 12}
    # a fresh run starts the file empty
    BadMediaLog(acc, str(tmp_path), max_share=0.5)
    assert (tmp_path / "bad_media.txt").read_text() == ""


def test_bad_media_log_stops_past_the_share_once_there_are_enough(tmp_path):
    acc = Accelerator()
    log = BadMediaLog(acc, str(tmp_path), max_share=0.1)
    bad = lambda k: [(f"/d/{i}.mp4", "damaged") for i in range(k)]
    log.update(1, bad(MIN_BAD_MEDIA), MIN_BAD_MEDIA + 1)  # 10 of 11 bad, but too few to judge a share
    log.update(2, [], 100 - MIN_BAD_MEDIA - 1)             # 10 of 100: at the share, not past it
    assert log.state() == {"bad_media": 10, "rows_read": 100}
    with pytest.raises(RuntimeError, match=r"11 of the 101 rows read so far had media that failed to load, more than "
                                           r"max_bad_media_share=0.1: see .*bad_media.txt"):
        log.update(3, bad(1), 1)
