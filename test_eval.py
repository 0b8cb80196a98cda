"""Tests of eval.py: the scoring rules on hand-made answers, then the evaluation loop on the tiny
checkpoint and a small demo world (end to end with shuffled frames, resume, a broken sample, two
processes)."""
import collections
import json
import os
import shutil
import threading
import weakref

import pytest
import torch

import data
import demo_world
import eval as ev
import model as engine
from conftest import BAD_MEDIA, bad_media, decode_or_misbehave, demo_config
from demo import make_tiny_checkpoint

REAL_GENERATE = engine.generate
MC, NUM, REG = "multiple choice", "numerical", "regression"


# ----------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("output, solution, problem_type, answer, score", [
    ("<think>hmm</think><answer>B</answer>", "<answer>B</answer>", MC, "B", 1.0),
    ("<think>hmm</think><answer>C</answer>", "<answer>B</answer>", MC, "C", 0.0),
    ("  B\n", "<answer>B</answer>", MC, "B", 1.0),                   # no tag: the whole output
    ("The answer is B", "<answer>B</answer>", MC, "The answer is B", 0.0),
    ("<answer>3.141</answer>", "<answer>3.14</answer>", NUM, "3.141", 1.0),  # equal at 2 decimals
    ("<answer>3</answer>", "<answer>3.0</answer>", NUM, "3", 0.0),   # notation differs: wrong
    ("<answer>1,000</answer>", "<answer>1000</answer>", NUM, "1,000", 0.0),
    ("<answer>12</answer>", "<answer>12</answer>", NUM, "12", 1.0),
    ("<answer>7</answer>", "<answer>7</answer>", REG, "7", 1.0),
    ("<answer>7.5</answer>", "<answer>7</answer>", REG, "7.5", 0.9),  # rel 0.071 < 1-theta for 9 thetas
    ("9", "<answer>7</answer>", REG, "9", 0.5),                      # rel 0.286: thetas 0.50..0.70
    ("<answer>30</answer>", "<answer>7</answer>", REG, "30", 0.0),
    ("<answer>about 7</answer>", "<answer>7</answer>", REG, "about 7", 0.0),
])
def test_score_sample_rules(output, solution, problem_type, answer, score):
    s = ev.score_sample(output, solution, problem_type)
    assert s["answer"] == answer
    assert s["score"] == pytest.approx(score)


def rec(score, problem_type=MC, source="s", pid=0, shuffled=False, status="ok", temporal=False):
    return {"benchmark": "b", "problem_id": pid, "shuffled": shuffled, "status": status, "score": score,
            "problem_type": problem_type, "data_source": source, "temporal": temporal}


def test_vsi_release_figure_vs_task_macro():
    records = [rec(1.0, source="rel_dir", pid=0), rec(0.0, source="rel_dir", pid=1),
               rec(0.0, source="rel_dir", pid=2), rec(1.0, source="route", pid=3),
               rec(0.5, REG, "count", pid=4), rec(0.0, REG, "count", pid=5)]
    s = ev.summarize(records)["b"]
    # release: (MC mean 2/4 + MRA mean 0.25) / 2; macro: (1/3 + 1 + 0.25) / 3; row mean would be 2.5/6
    assert s["all"]["release"] == pytest.approx(0.375)
    assert s["all"]["macro"] == pytest.approx((1 / 3 + 1 + 0.25) / 3)
    assert s["problem_type"][REG]["release"] == pytest.approx(0.25)
    assert s["data_source"]["rel_dir"]["release"] == pytest.approx(1 / 3)
    # a benchmark without regression rows reports the plain mean
    assert ev.release_score(records[:4]) == pytest.approx(0.5)


def test_temporal_keyword_rule():
    assert ev.refers_to_time("<think>First the ball rolls, THEN it stops.</think><answer>A</answer>")
    assert ev.refers_to_time("<think>Hmm. The red one begins on the left.</think>")
    assert not ev.refers_to_time("<think>A map of Athens, southern part.</think>")  # whole words only
    assert not ev.refers_to_time("<think>It is red.</think><answer>then</answer>")  # reasoning only
    assert not ev.refers_to_time("first, then, finally")  # no <think>: no reasoning
    s = ev.group_stats([rec(1.0, temporal=True, pid=0), rec(0.0, pid=1), rec(0.0, pid=2), rec(0.0, pid=3)])
    assert s["temporal_share"] == pytest.approx(0.25)


def test_gap_is_over_questions_answered_both_ways():
    records = [rec(1.0, pid=1), rec(0.0, pid=1, shuffled=True),
               rec(1.0, pid=2), rec(1.0, pid=2, shuffled=True),
               rec(0.0, pid=3), rec(None, pid=3, shuffled=True, status="error")]
    s = ev.group_stats(records)
    assert (s["n"], s["errors"], s["pairs"]) == (3, 1, 2)
    assert s["release"] == pytest.approx(2 / 3)  # all ordered answers
    assert (s["ordered"], s["shuffled"], s["gap"]) == pytest.approx((1.0, 0.5, 0.5))


# ----------------------------------------------------------------------------- the loop


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    world, ckpt = str(root / "world"), str(root / "ckpt")
    demo_world.make_demo_world(world, n_rl=8, n_cot=4, n_eval=6, n_warmup=0)  # eval_demo.json: 3 videos, 3 images
    make_tiny_checkpoint(ckpt, texts=demo_world.demo_texts(world))
    return world, ckpt


def run_eval(monkeypatch, demo, out_dir, **overrides):
    """Run eval.main() with small settings; returns the number of prompts of each generate call."""
    world, ckpt = demo
    calls = []

    def counting_generate(*args, **kwargs):
        out = REAL_GENERATE(*args, **kwargs)
        calls.append(len(out["lengths"]))
        return out

    monkeypatch.setattr(engine, "generate", counting_generate)
    settings = dict(model_path=ckpt, data_dir=world, benchmarks="demo", out_dir=str(out_dir), limit=4,
                    max_new_tokens=6, batch_size=2, shuffle=False, log_every=1)
    demo_config(monkeypatch, ev, **{**settings, **overrides})
    ev.main()
    return calls


def summary_of(out_dir):
    with open(os.path.join(out_dir, "summary.json")) as f:
        return json.load(f)["summary"]


def test_demo_end_to_end_with_shuffled_frames(monkeypatch, demo, tmp_path):
    seeds = []
    real_shuffle = data.shuffle_order
    monkeypatch.setattr(data, "shuffle_order",
                        lambda T, g, level: seeds.append(g.initial_seed()) or real_shuffle(T, g, level))
    calls = run_eval(monkeypatch, demo, tmp_path, shuffle=True, max_new_tokens=8)
    rows = data.load_rows(os.path.join(demo[0], "eval_demo.json"), limit=4)
    videos = [r["problem_id"] for r in rows if r["data_type"] == "video"]
    assert 0 < len(videos) < 4  # the first rows mix videos and images
    records = ev.read_records(str(tmp_path), ["demo"])
    assert set(records) == {("demo", r["problem_id"], False) for r in rows} | {("demo", p, True) for p in videos}
    assert sum(calls) == len(records)
    for r in records.values():
        assert r["status"] == "ok" and 0.0 <= r["score"] <= 1.0 and 1 <= r["gen_tokens"] <= 8
        assert r["seconds"] > 0 and isinstance(r["output"], str) and isinstance(r["temporal"], bool)
    assert len(set(seeds)) == len(videos)  # one seeded permutation per video row

    s = summary_of(tmp_path)["demo"]
    by_hand = [(records[("demo", p, False)]["score"], records[("demo", p, True)]["score"]) for p in videos]
    assert s["all"]["n"] == 4 and s["all"]["pairs"] == len(videos)
    assert s["all"]["ordered"] == pytest.approx(sum(o for o, _ in by_hand) / len(by_hand))
    assert s["all"]["gap"] == pytest.approx(s["all"]["ordered"] - s["all"]["shuffled"])
    assert sum(g["n"] for g in s["problem_type"].values()) == 4
    assert sum(g["pairs"] for g in s["data_source"].values()) == len(videos)
    table = (tmp_path / "summary.md").read_text()
    assert "| **demo** | 4 | 0 |" in table and "gap" in table


def test_resume_skips_finished_rows(monkeypatch, demo, tmp_path):
    assert run_eval(monkeypatch, demo, tmp_path, limit=3) == [2, 1]
    assert run_eval(monkeypatch, demo, tmp_path, limit=3) == []  # all done: no model call
    # a run killed while writing: the last answer lost and half a line left behind
    path = tmp_path / "demo.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + lines[2][:25])
    assert run_eval(monkeypatch, demo, tmp_path, limit=3) == [1]
    assert [json.loads(l)["problem_id"] for l in path.read_text().splitlines()] == \
           [json.loads(l)["problem_id"] for l in lines]
    assert run_eval(monkeypatch, demo, tmp_path, limit=5) == [2]  # only the new rows
    assert summary_of(tmp_path)["demo"]["all"]["n"] == 5
    with pytest.raises(ValueError, match="max_frames"):  # never mix answers made with other settings
        run_eval(monkeypatch, demo, tmp_path, max_frames=4)


def test_broken_media_is_isolated_recorded_and_retried(monkeypatch, demo, tmp_path):
    world, _ = demo
    with open(os.path.join(world, "eval_demo.json")) as f:
        rows = json.load(f)
    good = next(r for r in rows if r["data_type"] == "video")
    good_video = os.path.join(world, good["path"][2:])
    image = os.path.join(world, next(r["path"] for r in rows if r["data_type"] == "image")[2:])
    paths = bad_media(tmp_path, good_video, image)
    # a good row (absolute paths are kept as they are), then one row per way a media file can fail
    rows = [dict(good, path=good_video, problem_id=0)] + [
        dict(good, path=paths[kind], data_type=BAD_MEDIA[kind][1], problem_id=i + 1) for i, kind in enumerate(BAD_MEDIA)]
    (tmp_path / "eval_broken.json").write_text(json.dumps(rows))
    kw = dict(data_dir=str(tmp_path), benchmarks="broken", out_dir=str(tmp_path / "out"), limit=None)

    assert run_eval(monkeypatch, demo, **kw) == [1]  # batch 1: good + bad; the other batches: nothing to generate
    records = ev.read_records(kw["out_dir"], ["broken"])
    status = {pid: (r["status"], r.get("error", "")) for (_, pid, _), r in records.items()}
    assert status[0] == ("ok", "")
    for i, kind in enumerate(BAD_MEDIA):
        assert status[i + 1][0] == "error" and paths[kind] in status[i + 1][1], kind
    s = summary_of(kw["out_dir"])["broken"]["all"]
    assert (s["n"], s["errors"]) == (1, len(BAD_MEDIA))
    # errors are tried again on the next run: once the video is there, it is answered
    shutil.copy(good_video, paths["missing"])
    assert run_eval(monkeypatch, demo, **kw) == [1]
    s = summary_of(kw["out_dir"])["broken"]["all"]
    assert (s["n"], s["errors"]) == (2, len(BAD_MEDIA) - 1)


def test_a_video_whose_decoder_hangs_is_an_error_answer_and_the_rest_are_answered(
        monkeypatch, demo, tmp_path):
    world, _ = demo
    with open(os.path.join(world, "eval_demo.json")) as f:
        rows = json.load(f)
    good = next(r for r in rows if r["data_type"] == "video")
    good_video = os.path.join(world, good["path"][2:])
    shutil.copy(good_video, tmp_path / "hang.mp4")  # conftest.decode_or_misbehave never returns
    rows = [dict(good, path=str(tmp_path / "hang.mp4"), problem_id=0),
            dict(good, path=good_video, problem_id=1), dict(good, path=good_video, problem_id=2)]
    (tmp_path / "eval_hang.json").write_text(json.dumps(rows))
    monkeypatch.setattr(data, "decode_frames", decode_or_misbehave)
    kw = dict(data_dir=str(tmp_path), benchmarks="hang", out_dir=str(tmp_path / "out"), limit=None)
    assert run_eval(monkeypatch, demo, media_timeout=3, **kw) == [1, 1]  # batches of 2
    records = ev.read_records(kw["out_dir"], ["hang"])
    status = {pid: (r["status"], r.get("error", "")) for (_, pid, _), r in records.items()}
    assert status[0][0] == "error" and status[0][1].startswith(
        f"hung: decoding {tmp_path / 'hang.mp4'} took longer than media_timeout=3 s")
    assert status[1] == status[2] == ("ok", "")
    s = summary_of(kw["out_dir"])["hang"]["all"]
    assert (s["n"], s["errors"]) == (2, 1)


def test_bfloat16_weights_as_in_the_paper_config(monkeypatch, demo, tmp_path):
    # config/eval_7b.py loads the model in bfloat16; on CPU too. It runs end to end:
    kw = dict(shuffle=True, limit=6, max_new_tokens=16)
    run_eval(monkeypatch, demo, tmp_path / "bf16", dtype="bfloat16", **kw)
    records = ev.read_records(str(tmp_path / "bf16"), ["demo"])
    assert len(records) == 9 and all(r["status"] == "ok" for r in records.values())
    # and its numbers are fp32's up to bf16 rounding. Greedy texts are not compared: after the first
    # near-tie that rounding flips, two correct decoders part ways, at a point that depends on the
    # CPU's kernels. Compared instead, before any such amplification: the log-probs both models give
    # to the same tokens (bf16's greedy answers, teacher-forced), against a same-machine measure of
    # what 8-bit mantissas do to this model: the fp32 model with its weights rounded to bf16 (fp32
    # arithmetic, so no kernel's choice enters). bf16 arithmetic also rounds the input of every
    # matmul, each by at most the same 2^-9 relative: ~28 rounding sites here (6 per LM layer and
    # per vision block, the merger, the head, the weights), whose errors add up in quadrature, so
    # sqrt(28) ~ 5x the weights-only shift (measured 5.7x); the bound, 20x, leaves room for
    # errors that partly align. Feeding the bf16 model blank pixels breaks it (110x, measured).
    world, ckpt = demo
    rows = data.load_rows(os.path.join(world, "eval_demo.json"), limit=6)
    media = {k: getattr(ev, k) for k in data.MEDIA_KEYS if k != "media_timeout"}
    visuals = [data.make_visual(*data.load_frames(r, **media)) for r in rows]
    hf16, tokenizer = engine.load_model(ckpt, dtype=torch.bfloat16)
    hf32, _ = engine.load_model(ckpt)
    rounded, _ = engine.load_model(ckpt)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    batch = data.collate([data.prompt_text(r) for r in rows], visuals, tokenizer)
    out = REAL_GENERATE(hf16, batch, 1, 16, temperature=0.0,
                        stop_ids=engine.stop_token_ids(tokenizer))
    args = (batch, out["prompt_index"], out["completion_ids"], out["lengths"])
    with torch.no_grad():
        logp16, logp32 = engine.token_logprobs(hf16, *args), engine.token_logprobs(hf32, *args)
        logp_rounded = engine.token_logprobs(rounded, *args)
    valid = torch.arange(logp32.shape[1]) < out["lengths"][:, None]                    # [6, T]
    assert valid.sum() > 12 and logp32[valid].mean() < -1.0  # real answers, non-trivial log-probs
    weights_only = (logp_rounded - logp32)[valid].abs().max()
    assert 0 < weights_only < 0.05  # 8 bits of mantissa move log-probs of O(1-10) a little
    assert (logp16 - logp32)[valid].abs().max() <= 20 * weights_only


class FakeAccelerator:
    """One rank of a 2-process run, executed one after the other in this process."""

    def __init__(self, rank, world):
        self.process_index, self.num_processes, self.is_main_process = rank, world, rank == 0
        self.device = torch.device("cpu")

    def wait_for_everyone(self):
        pass

    def end_training(self):
        pass


def test_two_processes_give_the_same_summary_as_one(monkeypatch, demo, tmp_path):
    # model_path may be a training out_dir: its newest complete step_* is evaluated
    run = tmp_path / "run"
    (run / "step_000001.tmp").mkdir(parents=True)
    os.symlink(demo[1], run / "step_000003")
    kw = dict(model_path=str(run), shuffle=True, batch_size=1)  # batch 1: no padding differences
    run_eval(monkeypatch, demo, tmp_path / "one", **kw)
    (tmp_path / "two").mkdir()
    for rank in (1, 0):  # rank 0 last: it writes the summary from both ranks' files
        monkeypatch.setattr(ev, "Accelerator", lambda rank=rank: FakeAccelerator(rank, 2))
        run_eval(monkeypatch, demo, tmp_path / "two", **kw)
    assert sorted(os.listdir(tmp_path / "two")) == ["demo.rank0.jsonl", "demo.rank1.jsonl", "settings.json",
                                                     "summary.json", "summary.md"]
    one, two = ev.read_records(str(tmp_path / "one"), ["demo"]), ev.read_records(str(tmp_path / "two"), ["demo"])
    assert {k: r["output"] for k, r in one.items()} == {k: r["output"] for k, r in two.items()}
    assert summary_of(tmp_path / "one") == summary_of(tmp_path / "two")
    with open(tmp_path / "two" / "summary.json") as f:
        assert json.load(f)["model"].endswith("step_000003")


def shared_media_file(world, folder):
    """eval_shared.json in folder: each media file of the demo's eval file asked 3 questions (as VideoMME), the
    questions spread over the file; plus a damaged video asked twice. Returns the benchmark's settings."""
    with open(os.path.join(world, "eval_demo.json")) as f:
        rows = [dict(r, path=os.path.join(world, r["path"][2:])) for r in json.load(f)]
    video = next(r for r in rows if r["data_type"] == "video")
    image = next(r for r in rows if r["data_type"] == "image")
    broken = bad_media(folder, video["path"], image["path"])["damaged frames"]
    rows = [dict(r, problem_id=100 * q + i) for q in range(3) for i, r in enumerate(rows)] + \
        [dict(video, path=broken, problem_id=1000 + q) for q in range(2)]
    with open(os.path.join(folder, "eval_shared.json"), "w") as f:
        json.dump(rows, f)
    return dict(data_dir=str(folder), benchmarks="shared", limit=None, shuffle=True)


def test_a_media_file_asked_several_questions_is_decoded_once(monkeypatch, demo, tmp_path):
    kw = shared_media_file(demo[0], tmp_path)
    decodes, earlier_alive, frames_refs = collections.Counter(), [], []
    real_load = data.load_frames

    def counting_load(row, **media):
        earlier_alive.append(sum(r() is not None for r in frames_refs))  # decoded files still held in memory
        decodes[row["media"]] += 1
        frames, spt = real_load(row, **media)
        frames_refs.append(weakref.ref(frames))
        return frames, spt

    monkeypatch.setattr(data, "load_frames", counting_load)
    run_eval(monkeypatch, demo, tmp_path / "one", batch_size=2, **kw)
    assert len(decodes) == 7 and set(decodes.values()) == {1}  # 6 files x 3 questions and a damaged one x 2
    assert max(earlier_alive) <= 1  # the questions of a file are answered one after the other
    one = ev.read_records(str(tmp_path / "one"), ["shared"])
    assert len(one) == 20 + 11 and sum(r["status"] == "error" for r in one.values()) == 4  # + shuffled videos
    # two processes: a file's questions go to one of them, so it is still decoded once
    decodes.clear()
    (tmp_path / "two").mkdir()
    for rank in (1, 0):  # rank 0 last: it writes the summary
        monkeypatch.setattr(ev, "Accelerator", lambda rank=rank: FakeAccelerator(rank, 2))
        run_eval(monkeypatch, demo, tmp_path / "two", batch_size=1, **kw)
    assert len(decodes) == 7 and set(decodes.values()) == {1}
    two = ev.read_records(str(tmp_path / "two"), ["shared"])
    assert two.keys() == one.keys()
    assert 10 <= sum(1 for line in open(tmp_path / "two" / "shared.rank0.jsonl")) <= 19  # both ranks worked


def test_background_media_give_the_inline_answers_exactly(monkeypatch, demo, tmp_path):
    kw = shared_media_file(demo[0], tmp_path)
    real_load, threads = data.load_frames, set()
    monkeypatch.setattr(data, "load_frames", lambda *a, **k: threads.add(threading.get_ident()) or real_load(*a, **k))
    background_calls = run_eval(monkeypatch, demo, tmp_path / "background", batch_size=3, **kw)
    assert threading.get_ident() not in threads  # decoded on the prefetch thread
    monkeypatch.setattr(data, "prefetch", lambda fn, items: map(fn, items))
    threads.clear()
    assert run_eval(monkeypatch, demo, tmp_path / "inline", batch_size=3, **kw) == background_calls
    assert threads == {threading.get_ident()}
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}
    background, inline = (ev.read_records(str(tmp_path / d), ["shared"]) for d in ("background", "inline"))
    assert {k: drop(r) for k, r in background.items()} == {k: drop(r) for k, r in inline.items()}
    assert summary_of(tmp_path / "background") == summary_of(tmp_path / "inline")


def test_plan_jobs_keeps_a_media_file_on_one_rank_and_balances_the_rest():
    row = lambda i, media, kind: {"problem_id": i, "media": media, "data_type": kind}
    rows = {"b": [row(0, "v1", "video"), row(1, "i1", "image"), row(2, "v1", "video"), row(3, "v2", "video")]}
    plans = [ev.plan_jobs(rows, 2, rank, shuffle=True) for rank in (0, 1)]
    jobs = {rank: [(j[1], j[3]) for j in plans[rank][0]] for rank in (0, 1)}
    # v1's two questions (ordered and shuffled) go to rank 0, one after the other; i1 to the rank with fewer
    # jobs (1), v2 then to rank 1 (2 jobs against 4)
    assert jobs == {0: [(0, False), (0, True), (2, False), (2, True)], 1: [(1, False), (3, False), (3, True)]}
    expected = {("b", 0, False), ("b", 0, True), ("b", 1, False), ("b", 2, False), ("b", 2, True), ("b", 3, False),
                ("b", 3, True)}
    assert plans[0][1] == plans[1][1] == expected                 # every rank knows the whole set
    assert [(j[1], j[3]) for j in ev.plan_jobs(rows, 1, 0, shuffle=False)[0]] == [(0, False), (2, False),
                                                                                   (1, False), (3, False)]
    with pytest.raises(ValueError, match="eval_b.json: problem_id values repeat"):
        ev.plan_jobs({"b": [row(0, "v1", "video"), row(0, "v2", "video")]}, 1, 0, False)
