"""Tests of common.py: unusable rows (seeded replacement, counts, the bad-media log and its stop rule), the schedule,
the step seed and the optimizer step's skip rule."""
import pytest
import torch
from accelerate import Accelerator

from common import (MIN_BAD_MEDIA, BadMediaLog, cosine_with_warmup, encode_or_replace, encode_rows, make_optimizer,
                    optimizer_step, step_seed)
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


def test_encode_rows_counts_and_draws_replacements_in_row_order():
    # rows 5 (bad) and 3 (too long) are replaced with draws from the one generator, in row order: with seed 12
    # the draws are 3 (too long), 3, 2 (bad), 7 (bad), 3, 6 for row 5, then row 3 takes the next draws
    gen = torch.Generator().manual_seed(12)
    draws = [torch.randint(10, (1,), generator=gen).item() for _ in range(8)]
    assert draws[:6] == [3, 3, 2, 7, 3, 6]
    used, encoded, counts = encode_rows([ROWS[0], ROWS[5], ROWS[3]], ROWS, encode, torch.Generator().manual_seed(12))
    row3 = next(ROWS[d] for d in draws[6:] if d not in BAD | LONG)
    assert used == [ROWS[0], ROWS[6], row3] and encoded == ["encoded 0", "encoded 6", f"encoded {row3['id']}"]
    too_long_after_3 = 1 + sum(d in LONG for d in draws[6:draws.index(row3["id"], 6)])
    assert counts["too_long"] == 3 + too_long_after_3
    assert [p for p, _ in counts["bad"]] == ["/d/5.mp4", "/d/2.mp4", "/d/7.mp4"]
    assert counts["read"] == 3 + counts["too_long"] + len(counts["bad"])  # every row tried, used or not


def test_cosine_schedule_by_hand():
    assert [cosine_with_warmup(u, 10, 2) for u in (0, 1)] == [0.5, 1.0]               # warm-up, 1-based
    assert cosine_with_warmup(2, 10, 2) == 1.0 and cosine_with_warmup(6, 10, 2) == pytest.approx(0.5)
    assert cosine_with_warmup(10, 10, 2) == pytest.approx(0.0) and cosine_with_warmup(15, 10, 2) == 0.0
    assert [cosine_with_warmup(u, 4, 0) for u in range(5)] == pytest.approx([1, 0.853553, 0.5, 0.146447, 0], abs=1e-6)


def test_step_seed_is_distinct_per_step_and_rank():
    seeds = {step_seed(42, s, r) for s in range(1000) for r in range(64)}
    assert len(seeds) == 1000 * 64 and step_seed(42, 0, 0) == 42


@pytest.mark.parametrize("grad", [0.0, float("nan"), 1.0])
def test_optimizer_step_skips_zero_and_non_finite_gradients(grad):
    # AdamW with weight decay and momentum from an earlier step would move the weights on a zero gradient
    acc = Accelerator()
    w = torch.nn.Linear(3, 1, bias=False)
    optimizer, scheduler = make_optimizer(w, 0.1, (0.9, 0.999), 1e-8, 0.1, total_updates=10, warmup=0)
    w.weight.grad = torch.ones_like(w.weight)
    optimizer_step(acc, w, optimizer, scheduler, grad_clip=5.0)  # momentum now non-zero
    before = w.weight.detach().clone()
    w.weight.grad = torch.full_like(w.weight, grad)
    norm = optimizer_step(acc, w, optimizer, scheduler, grad_clip=5.0)
    assert norm == pytest.approx(3 ** 0.5 * grad, nan_ok=True)
    assert torch.equal(w.weight, before) == (grad != 1.0)  # only a finite non-zero gradient steps
    assert scheduler.last_epoch == 2 and w.weight.grad is None  # the schedule advances, gradients cleared
