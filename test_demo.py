"""Tests of the demo's scoring (demo.py), which the README's demo and experiment tables come from."""
import json

import pytest

import demo
import demo_world


def rec(pid, family, score, shuffled=False, output="<think>x</think><answer>A</answer>", tokens=10):
    return {"problem_id": pid, "data_source": f"demo/{family}", "shuffled": shuffled, "status": "ok",
            "score": score, "output": output, "gen_tokens": tokens}


def test_score_records_by_hand():
    records = [rec(0, "order", 1.0), rec(0, "order", 0.0, shuffled=True),        # order: 1 vs 0
               rec(1, "order", 1.0), rec(1, "order", 1.0, shuffled=True),        # order: 1 vs 1
               rec(2, "count", 0.5), rec(2, "count", 0.5, shuffled=True),        # order-free video
               rec(3, "colour", 0.0, output="no tags", tokens=20),               # image: no shuffled pair
               {**rec(4, "colour", 1.0), "status": "error"}]                     # errors are left out
    s = demo.score_records(records)
    assert s["all"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert s["video ordered"] == pytest.approx(2.5 / 3) and s["video shuffled"] == pytest.approx(1.5 / 3)
    assert s["gap"] == pytest.approx(1 / 3) and s["order gap"] == pytest.approx(0.5)  # order is order-dependent
    assert s["format"] == pytest.approx(3 / 4) and s["length"] == pytest.approx((10 * 3 + 20) / 4)
    assert s["order"] == {"ordered": 1.0, "format": 1.0, "length": 10, "shuffled": 0.5, "gap": 0.5}
    assert "shuffled" not in s["colour"] and s["colour"]["ordered"] == 0.0
    table = demo.results_table({"a": s})
    assert table.splitlines()[2].startswith("| a | 62 | 83 | 50 | 33 | 50 | 100/50 |")  # order-dependent first


def test_chance_is_a_blind_guess_from_the_training_answers(tmp_path):
    demo_world.make_demo_world(str(tmp_path), n_rl=160, n_cot=8, n_eval=80, n_warmup=0)
    s = demo.score_records(demo.chance_records(str(tmp_path)))
    for family in ("order", "direction", "colour", "count"):  # balanced classes: 1/4, whatever the row
        assert s[family]["ordered"] == pytest.approx(0.25, abs=0.02)
    assert s["gap"] == 0.0 and s["ocr"]["ordered"] < 0.1


def test_text_curve(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i, "reward": float(i)}) + "\n" for i in range(20))
                    + json.dumps({"heldout": 1}) + "\n")
    assert demo.text_curve(str(path), bins=4) == "2.00 7.00 12.00 17.00"


def test_novel_ids_by_hand(tmp_path):
    # a hand-made world: an item is a repeat when a training file holds the same question (with its
    # options), answer and pixels, whatever the file it sits in
    import numpy as np
    from PIL import Image
    (tmp_path / "images").mkdir()
    red = np.zeros((28, 28, 3), np.uint8)
    red[4:12, 4:12] = (255, 0, 0)
    blue = np.zeros((28, 28, 3), np.uint8)
    blue[10:20, 10:20] = (0, 0, 255)
    Image.fromarray(red).save(tmp_path / "images/a.png")
    Image.fromarray(red).save(tmp_path / "images/b.png", compress_level=0)  # same pixels, other bytes
    Image.fromarray(blue).save(tmp_path / "images/c.png")
    opts = ["A. red", "B. blue"]

    def row(pid, family, path, answer, options=opts, **kw):
        return {"problem_id": pid, "problem": "What colour?", "data_type": "image", "options": options,
                "problem_type": "multiple choice", "solution": f"<answer>{answer}</answer>",
                "path": f"./images/{path}", "data_source": f"demo/{family}", **kw}

    (tmp_path / "rl.json").write_text(json.dumps([row(0, "colour", "a.png", "A")]))
    (tmp_path / "cot.json").write_text(json.dumps([row(1, "shape", "c.png", "B", process="<think>x</think>")]))
    (tmp_path / "eval_demo.json").write_text(json.dumps([
        row(10, "colour", "b.png", "A"),                            # a copy of rl.json's row
        row(11, "colour", "b.png", "B"),                            # another answer
        row(12, "colour", "c.png", "A"),                            # other pixels
        row(13, "shape", "c.png", "B"),                             # a copy of cot.json's row
        row(14, "shape", "c.png", "B", options=["A. blue", "B. red"])]))  # other options
    novel, repeats = demo.novel_ids(str(tmp_path))
    assert novel == {11, 12, 14}
    assert repeats == {"colour": (1, 3), "shape": (1, 2)}
    line = demo.repeat_line({**repeats, "ocr": (4, 4)})
    assert "6 of 9 held-out questions (66.7%)" in line
    assert "colour 33%, shape 50%, ocr 100% (no novel items)" in line


def test_novel_table_leaves_out_families_without_novel_items():
    records = [rec(0, "order", 1.0), rec(0, "order", 0.0, shuffled=True), rec(3, "colour", 0.0)]
    s = demo.score_records([r for r in records if r["problem_id"] in {0}])
    head, _, line = demo.results_table({"a": s}).splitlines()
    assert "order (o/s)" in head and "colour" not in head and line.startswith("| a | 100 | 100 | 0 |")
