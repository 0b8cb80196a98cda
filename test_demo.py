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
