"""Tests of the demo world (demo_world.py): files, balance, labels that match the pixels, order dependence."""
import collections

import numpy as np
import pytest
import torch

import data
import demo_world as W

DEMO = dict(max_frames=8, fps=2.0, video_min_pixels=112 * 112, video_max_pixels=112 * 112,
            image_min_pixels=112 * 112, image_max_pixels=112 * 112)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return out, W.make_demo_world(str(out), n_rl=160, n_cot=40, n_eval=48, n_warmup=48)


def answer_text(row):
    """The answer as words: the option text for multiple choice."""
    answer = row["solution"][len("<answer>"):-len("</answer>")]
    return {o[0]: o[3:] for o in row["options"]}[answer] if row["problem_type"] == "multiple choice" else answer


def squares(frame):
    """What a decoded frame [3, H, W] shows: {quadrant: colour name} (the colour nearest each quadrant's centre)."""
    out = {}
    for q in range(4):
        y, x = 56 * (q // 2) + 28, 56 * (q % 2) + 28
        pixel = frame[:, y, x] * 255
        if (pixel - W.BACKGROUND).abs().max() > 60:
            out[q] = min(W.COLOURS, key=lambda c: (pixel - torch.tensor(W.COLOURS[c])).abs().sum())
    return out


def test_files_sizes_and_grids(world):
    out, files = world
    counts = {name: len(data.load_rows(str(out / f"{name}.json"), require_process=name == "cot")) for name in files}
    assert counts == {"rl": 160, "cot": 40, "eval_demo": 48, "warmup": 48}
    assert files["cot"][0]["problem"] == files["rl"][0]["problem"] and "process" not in files["rl"][0]
    assert {r["problem_type"] for r in files["rl"]} == set(data.PROBLEM_TYPES)
    assert not {r["path"] for r in files["eval_demo"]} & {r["path"] for r in files["rl"] + files["warmup"]}
    for name in ("rl", "warmup"):
        for kind in ("video", "image"):
            r = next(r for r in data.load_rows(str(out / f"{name}.json")) if r["data_type"] == kind)
            frames, spg = data.load_frames(r, **DEMO)
            grid = data.make_visual(frames, spg)["grid_thw"].tolist()
            assert grid == ([4, 8, 8] if kind == "video" else [1, 8, 8])  # 64 and 16 tokens
            assert spg == (1.0 if kind == "video" else None)
    with pytest.raises(ValueError, match="subset"):
        W.make_demo_world(str(out / "bad"), n_rl=4, n_cot=8)


def test_families_are_balanced_and_constant_answers_score_poorly(world):
    _, files = world
    by_family = collections.defaultdict(list)
    for r in files["rl"] + files["eval_demo"]:
        by_family[r["data_source"]].append(r["solution"])
    assert set(by_family) == {f"demo/{f}" for f in [*W.VIDEO_FAMILIES, *W.IMAGE_FAMILIES]}
    for family, answers in by_family.items():
        top = collections.Counter(answers).most_common(1)[0][1] / len(answers)
        assert top <= 0.4, (family, collections.Counter(answers))


def test_labels_match_the_pixels(world):
    out, files = world
    shortcut, directions = 0, 0
    for r in data.load_rows(str(out / "rl.json")):
        family, answer = r["data_source"].split("/")[1], answer_text(r)
        frames, _ = data.load_frames(r, **DEMO)               # [8, 3, 112, 112]; moment m = frames 2m, 2m+1
        scenes = [squares(frames[min(2 * m, len(frames) - 1)]) for m in range(W.MOMENTS)]
        if family == "order":  # the first colour seen; the last one seen is another
            assert list(scenes[0].values()) == [answer] and list(scenes[-1].values()) != [answer]
        elif family == "sequence":
            seen = [c for s in scenes for c in s.values()]
            assert ", ".join(dict.fromkeys(seen)) == answer
        elif family == "direction":
            (start, colour), = scenes[0].items()
            (end, _), = scenes[-1].items()
            assert W.neighbour(start, answer) == end
            shortcut, directions = shortcut + (W.USUAL_COLOUR[answer] == colour), directions + 1
        elif family == "count":
            assert all(s == scenes[0] for s in scenes) and len(scenes[0]) == int(answer)
        elif family == "colour":
            assert list(squares(frames[0]).values()) == [answer]
        elif family == "describe":
            n, colour = answer.split()[:2]
            assert list(squares(frames[0]).values()) == [colour] * W.NUMBER_WORDS.index(n)
        elif family == "area":  # PNG is lossless: count the coloured cells exactly
            cells = (frames[0, :, 14::28, 14::28] * 255 - W.BACKGROUND).abs().amax(0) > 60  # [4, 4]
            assert f"{100 * int(cells.sum()) / 16:g}" == answer
    assert directions > 0 and shortcut / directions == pytest.approx(0.75, abs=0.15)  # one frame: 75%


def test_order_families_lose_their_answer_when_frames_are_reversed(world):
    """What makes a family order-dependent: the same frames in another order have another answer."""
    out, files = world
    for r in data.load_rows(str(out / "rl.json")):
        family = r["data_source"].split("/")[1]
        if family in W.ORDER_DEPENDENT:
            frames, _ = data.load_frames(r, **DEMO)
            first, last = squares(frames[0]), squares(frames[-1])
            assert first != last  # reversed, the first scene becomes the last: another answer
        elif r["data_type"] == "video":
            frames, _ = data.load_frames(r, **DEMO)
            assert squares(frames[0]) == squares(frames[-1])


def test_warmup_answers_match_the_pixels(world):
    out, _ = world
    for r in data.load_rows(str(out / "warmup.json")):
        answer = r["solution"][len("<answer>"):-len("</answer>")]
        frames, _ = data.load_frames(r, **DEMO)
        if r["problem"] == "What do you see first?":
            assert W.caption(sorted(squares(frames[0]).items())) == answer
        elif r["problem"] == "What do you see last?":
            assert W.caption(sorted(squares(frames[-1]).items())) == answer
        elif r["problem"] == "Describe the picture.":
            assert W.caption(sorted(squares(frames[0]).items())) == answer
        elif r["problem"].startswith("Which comes first"):
            first = {c: min(m for m in range(W.MOMENTS) if c in squares(frames[2 * m]).values())
                     for c in W.NAMES if any(c in squares(frames[2 * m]).values() for m in range(W.MOMENTS))}
            a, b = r["problem"].split("the ")[1].split()[0], r["problem"].split("the ")[2].split()[0]
            assert answer == f"the {min((a, b), key=first.get)} square" and first[a] != first[b]
    assert data.prompt_text(r, "plain").endswith(f"<|vision_end|>{r['problem']}<|im_end|>\n<|im_start|>assistant\n")


def test_deterministic_and_texts(tmp_path):
    kw = dict(n_rl=8, n_cot=4, n_eval=4, n_warmup=4)
    a = W.make_demo_world(str(tmp_path / "a"), seed=3, **kw)
    b = W.make_demo_world(str(tmp_path / "b"), seed=3, **kw)
    c = W.make_demo_world(str(tmp_path / "c"), seed=4, **kw)
    assert a == b and a != c
    assert (tmp_path / "a/videos/train_00003.mp4").read_bytes() == (tmp_path / "b/videos/train_00003.mp4").read_bytes()
    texts = W.demo_texts(str(tmp_path / "a"))
    r = data.load_rows(str(tmp_path / "a/eval_demo.json"))[0]
    assert all(data.prompt_text(r, t) in texts for t in data.TEMPLATES)
    assert a["cot"][0]["process"] in texts and a["rl"][0]["solution"] in texts
    assert all(o in texts for row in a["rl"] for o in row["options"])
