"""Tests of rewards.py: hand-checked tables per problem type and edge, then properties (hypothesis)."""
import doctest
import math
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

import rewards
from rewards import (accuracy_reward, eval_score, extract_answer, format_reward, group_share,
                     is_correct, length_bonus, mean_relative_accuracy, temporal_bonus)

PROPERTY = settings(max_examples=200, deadline=None)
PROBLEM_TYPES = ["multiple choice", "numerical", "OCR", "free-form", "regression"]


def tagged(x):
    return f"<answer>{x}</answer>"


def levenshtein_table(a, b):
    """The textbook dynamic program, the oracle for the bit-parallel version."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_docstring_examples():
    result = doctest.testmod(rewards)
    assert result.attempted >= 15 and result.failed == 0


@pytest.mark.parametrize("text, expected", [
    ("<answer>A</answer>", "A"),
    ("<answer>  A \n</answer>", "A"),
    ("<think>x</think><answer>A</answer><answer>B</answer>", "A"),  # first tag wins
    ("<answer>\nline 1\nline 2\n</answer>", "line 1\nline 2"),  # DOTALL
    ("<answer>A", ""),  # unclosed
    ("A</answer>", ""),
    ("<answer></answer>", ""),
    ("", ""),
    ("no tags at all", ""),
    ("<ANSWER>A</ANSWER>", ""),  # tags are case sensitive
    ("<answer>A</answer >", ""),
    ("<answer><answer>A</answer>", "<answer>A"),  # the literal regex: first opening tag
    ("<answer>日本語 ü</answer>", "日本語 ü"),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("completion, solution, expected", [
    (tagged("A"), tagged("A"), 1.0),
    (tagged(" A\n"), tagged("A "), 1.0),
    (tagged("B"), tagged("A"), 0.0),
    (tagged("a"), tagged("A"), 0.0),  # exact match, case included
    (tagged("A. red"), tagged("A"), 0.0),
    ("A", tagged("A"), 0.0),  # no answer tag in training: no reward
    (tagged("B") + tagged("A"), tagged("A"), 0.0),  # first tag wins
    (tagged(""), tagged(""), 0.0),  # empty never matches empty
    (tagged("A"), "A", 0.0),  # solution without tags: gt is "", nothing can match it
])
def test_multiple_choice(completion, solution, expected):
    assert accuracy_reward(completion, solution, "multiple choice") == expected


@pytest.mark.parametrize("pred, gt, expected", [
    ("3", "3", 1.0),
    ("3", "3.0", 0.0),  # exactly one has a dot
    ("3.0", "3", 0.0),
    ("3.0", "3.00", 1.0),
    ("3.141", "3.14", 1.0),  # rounded to 2 decimals
    ("3.15", "3.14", 0.0),
    ("1,000", "1,000", 1.0),
    ("1,000", "1000", 0.0),  # exactly one has a comma
    ("1,000.5", "1000.5", 1.0),  # both have a separator; commas removed
    ("-2", "-2", 1.0),
    ("-2", "2", 0.0),
    ("1e3", "1000", 1.0),
    ("1e3", "1000.0", 0.0),
    ("  7 \n", "7", 1.0),
    ("nan", "nan", 0.0),
    ("inf", "inf", 0.0),
    ("-inf", "-inf", 0.0),
    ("1e999", "1e999", 0.0),  # overflows to inf
    ("seven", "7", 0.0),
    ("7 apples", "7", 0.0),
    ("0x10", "16", 0.0),
    ("1.2.3", "1.2", 0.0),
    ("", "0", 0.0),
    ("٣", "3", 1.0),  # float() reads other Unicode digits
])
def test_numerical(pred, gt, expected):
    assert accuracy_reward(tagged(pred), tagged(gt), "numerical") == expected


@pytest.mark.parametrize("pred, gt, expected", [
    ("the cat sat on the mat", "the cat sat on the mat", 1.0),
    ("the cat sat on mat", "the cat sat on the mat", 1 - 1 / 6),  # one deletion
    ("the dog sat on the mat", "the cat sat on the mat", 1 - 1 / 6),  # one substitution
    ("the cat sat on the big mat", "the cat sat on the mat", 1 - 1 / 6),  # one insertion
    ("a b x d e", "a b c d", 0.5),  # substitution + insertion over 4 reference words
    ("c b a", "a b c", 1 - 2 / 3),
    ("hello world", "hello", 0.0),  # WER 1
    ("x y z w v u q", "a b", 0.0),  # WER 3.5, clipped
    ("The Cat", "the cat", 0.0),  # case sensitive
    ("the   cat\nsat", "the cat sat", 1.0),  # str.split(): any whitespace
    ("日本 語", "日本 語", 1.0),
    ("", "a b", 0.0),
])
def test_ocr_hand_computed(pred, gt, expected):
    assert accuracy_reward(tagged(pred), tagged(gt), "OCR") == pytest.approx(expected)


def test_ocr_long_inputs_are_fast_and_exact():
    rng = random.Random(0)
    ref = [f"w{rng.randrange(300)}" for _ in range(10_000)]
    hyp = list(ref)
    for i in rng.sample(range(len(ref)), 100):
        hyp[i] = "zzz"  # 100 substitutions
    other = [f"w{rng.randrange(300)}" for _ in range(10_000)]
    start = time.perf_counter()
    near = accuracy_reward(tagged(" ".join(hyp)), tagged(" ".join(ref)), "OCR")
    far = accuracy_reward(tagged(" ".join(other)), tagged(" ".join(ref)), "OCR")
    assert time.perf_counter() - start < 2.0
    assert near == pytest.approx(1 - 100 / 10_000)
    assert 0.0 <= far < 0.5


@given(st.lists(st.sampled_from("abcd"), max_size=90), st.lists(st.sampled_from("abcde"), max_size=90))
@PROPERTY
def test_word_edit_distance_matches_table(a, b):
    assert rewards._word_edit_distance(a, b) == levenshtein_table(a, b)


def test_free_form_hand_computed():
    # stemmed tokens: gt "the cat are run", pred "the cat run"
    # rouge1 = rougeL = F(P=1, R=3/4) = 6/7; rouge2 = F(P=1/2, R=1/3) = 2/5
    score = accuracy_reward(tagged("the cat runs"), tagged("The cats are running"), "free-form")
    assert score == pytest.approx((6 / 7 + 2 / 5 + 6 / 7) / 3)


@pytest.mark.parametrize("pred, gt, expected", [
    ("A red ball.", "a red ball", 1.0),  # rouge_score lowercases and drops punctuation
    ("", "a red ball", 0.0),
    ("!!!", "!!!", 0.0),  # no tokens
    ("日本語", "日本語", 0.0),  # rouge_score's tokenizer keeps only [a-z0-9]
    ("green cube", "a red ball", 0.0),
])
def test_free_form_edges(pred, gt, expected):
    assert accuracy_reward(tagged(pred), tagged(gt), "free-form") == pytest.approx(expected)


WORDS = ["the", "cat", "cats", "running", "runs", "ran", "a", "red", "ball", "is", "on", "mat", "42"]


@given(st.lists(st.sampled_from(WORDS), max_size=30), st.lists(st.sampled_from(WORDS), min_size=1, max_size=30))
@PROPERTY
def test_free_form_matches_rouge_score(pred_words, gt_words):
    pred, gt = " ".join(pred_words), " ".join(gt_words)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = scorer.score(target=gt, prediction=pred)
    expected = (scores["rouge1"].fmeasure + scores["rouge2"].fmeasure + scores["rougeL"].fmeasure) / 3
    assert accuracy_reward(tagged(pred), tagged(gt), "free-form") == pytest.approx(expected)


@pytest.mark.parametrize("pred, gt, expected", [
    ("10", "10", 1.0),
    ("9", "10", 0.9),
    ("15", "10", 0.5),
    ("12.5", "10", 0.75),  # no notation rule for regression
    ("30", "10", 0.0),  # relative error 2, clipped
    ("-10", "10", 0.0),
    ("1,000", "900", 1 - 1 / 9),
    ("0", "0", 0.0),  # the spec formula: (0 + 1e-9) / (0 + 1e-9) = 1
    ("nan", "10", 0.0),
    ("1e999", "10", 0.0),
    ("ten", "10", 0.0),
    ("1e308", "-1e308", 0.0),  # the difference overflows to inf: still clipped, no error
])
def test_regression(pred, gt, expected):
    assert accuracy_reward(tagged(pred), tagged(gt), "regression") == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("problem_type", ["", "Multiple Choice", "yes/no", "mc"])
def test_unknown_problem_type_scores_zero(problem_type):
    assert accuracy_reward(tagged("A"), tagged("A"), problem_type) == 0.0
    assert eval_score(tagged("A"), tagged("A"), problem_type) == 0.0


@pytest.mark.parametrize("completion, expected", [
    ("<think>a</think><answer>B</answer>", 1.0),
    ("<think>a</think>\n\n <answer>B</answer>", 1.0),
    ("<think>\nmulti\nline\n</think>\n<answer>\nB\n</answer>", 1.0),
    ("<think></think><answer></answer>", 1.0),
    ("<think>a</think><answer>B</answer><answer>C</answer>", 1.0),  # .*? may span tags
    (" <think>a</think><answer>B</answer>", 0.0),  # full match: nothing before
    ("<think>a</think><answer>B</answer>\n", 0.0),  # nor after
    ("<think>a</think><answer>B</answer>extra", 0.0),
    ("<think>a</think>so<answer>B</answer>", 0.0),  # only whitespace between
    ("<think>a<answer>B</answer>", 0.0),
    ("<answer>B</answer>", 0.0),
    ("<think>a</think>", 0.0),
    ("", 0.0),
])
def test_format_reward(completion, expected):
    assert format_reward(completion) == expected


@pytest.mark.parametrize("pred, gt, expected", [
    ("93", "100", 0.9),  # error 0.07 passes every 1 - theta >= 0.10
    (100, 100, 1.0),
    ("101", "100", 1.0),
    ("79", "100", 0.6),  # error 0.21 passes 0.50, 0.45, ..., 0.25
    ("149", "100", 0.1),
    ("151", "100", 0.0),  # error 0.51 passes none
    ("-93", "-100", 0.9),
    (" 1,000 ", 1000.0, 1.0),
    ("0", "0", 1.0),
    ("1", "0", 0.0),
    ("nan", 100, 0.0),
    (float("nan"), 100, 0.0),
    (float("inf"), 100, 0.0),
    (100, float("inf"), 0.0),
    (10 ** 400, 1, 0.0),  # int too large for a float
    (None, 1, 0.0),
    ("", "", 0.0),
])
def test_mean_relative_accuracy(pred, gt, expected):
    assert mean_relative_accuracy(pred, gt) == pytest.approx(expected)


@pytest.mark.parametrize("output, solution, problem_type, expected", [
    (" B\n", tagged("B"), "multiple choice", 1.0),  # no tag: the whole output is the answer
    ("<think>hm</think><answer>B</answer>", tagged("B"), "multiple choice", 1.0),
    ("The answer is B", tagged("B"), "multiple choice", 0.0),
    ("<answer>B", tagged("B"), "multiple choice", 0.0),  # unclosed: whole output, which is not "B"
    ("<answer></answer>B", tagged("B"), "multiple choice", 0.0),  # a tag, though empty: no fallback
    ("3.0", tagged("3"), "numerical", 0.0),
    ("1,000", tagged("1,000"), "numerical", 1.0),
    ("the cat sat", tagged("the cat sat down"), "OCR", 0.75),
    ("93", tagged("100"), "regression", 0.9),  # MRA, not 1 - relative error (0.93)
    (tagged("151"), tagged("100"), "regression", 0.0),
    ("", tagged("B"), "multiple choice", 0.0),
])
def test_eval_score(output, solution, problem_type, expected):
    assert eval_score(output, solution, problem_type) == pytest.approx(expected)


def test_eval_free_form_uses_rouge_on_whole_output():
    assert eval_score("The cats are running", tagged("the cat runs"), "free-form") == pytest.approx(
        accuracy_reward(tagged("The cats are running"), tagged("the cat runs"), "free-form"))
    assert 0.0 < eval_score("The cats are running", tagged("the cat runs"), "free-form") < 1.0


@pytest.mark.parametrize("acc, expected", [(0.0, False), (0.1, False), (0.1000001, True), (1.0, True)])
def test_is_correct(acc, expected):
    assert is_correct(acc) is expected


@pytest.mark.parametrize("acc_ordered, acc_shuffled, kwargs, expected", [
    ([1.0] * 4, [1.0] * 2, {}, [0.3] * 4),  # all correct: p = p~ = 1
    ([0.0] * 4, [1.0, 0.0], {}, [0.0] * 4),  # none correct
    ([0.0] * 4, [0.0] * 2, {}, [0.0] * 4),  # 0 >= 0 holds, but nobody is correct
    ([1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], {}, [0.0] * 4),  # ordered worse than shuffled
    ([1.0, 0.0, 1.0, 0.0], [1.0, 0.0], {}, [0.3, 0.0, 0.3, 0.0]),  # tie p == p~
    ([0.1, 0.5], [0.0], {}, [0.0, 0.3]),  # 0.1 is not correct
    ([0.5, 0.2, 0.05, 0.0], [1.0, 1.0], {}, [0.0] * 4),  # p = 0.5 < p~ = 1
    ([1.0, 0.5, 0.0, 0.0], [0.5, 0.4], {"share": "mean", "mu": 0.8}, [0.3, 0.3, 0.0, 0.0]),  # 0.375 >= 0.36
    ([1.0, 0.5, 0.0, 0.0], [0.5, 0.4], {"share": "mean"}, [0.0] * 4),  # 0.375 < 0.45
    ([1.0, 0.5, 0.0, 0.0], [0.5, 0.4], {"mu": 0.8}, [0.0] * 4),  # share correct: 0.5 < 0.8 * 1
    ([0.7, 0.5], [0.0], {"alpha": 0.5, "threshold": 0.6}, [0.5, 0.0]),
    ([1.0, 1.0], [], {}, [0.0, 0.0]),  # no shuffled completions (image prompt): no bonus
    ([], [1.0], {}, []),
    ([float("nan"), 1.0], [0.0], {"share": "mean"}, [0.0, 0.0]),  # nan p: no bonus
])
def test_temporal_bonus(acc_ordered, acc_shuffled, kwargs, expected):
    assert temporal_bonus(acc_ordered, acc_shuffled, **kwargs) == pytest.approx(expected)


def test_group_share_and_bad_share():
    assert group_share([1.0, 0.05, 0.5, 0.0]) == 0.5
    assert group_share([1.0, 0.05, 0.5, 0.0], share="mean") == pytest.approx(0.3875)
    assert group_share([]) == 0.0
    with pytest.raises(ValueError):
        temporal_bonus([1.0], [], share="median")  # a config error is loud even without shuffles


@pytest.mark.parametrize("acc, lengths, kwargs, expected", [
    ([1.0, 1.0, 0.0], [400, 600, 400], {}, [0.2, 0.0, 0.0]),
    ([1.0] * 4, [319, 320, 512, 513], {}, [0.0, 0.2, 0.2, 0.0]),  # bounds inclusive
    ([0.0, 0.1], [400, 400], {}, [0.0, 0.0]),  # none correct
    ([1.0, 0.0, 0.0], [400, 400, 400], {"min_correct": 2}, [0.0] * 3),  # release: needs 2 correct
    ([1.0, 0.3, 0.0], [400, 400, 400], {"min_correct": 2}, [0.2, 0.2, 0.0]),
    ([1.0, 1.0], [10, 30], {"omega": 0.5, "l_min": 20, "l_max": 40}, [0.0, 0.5]),
    ([], [], {}, []),
])
def test_length_bonus(acc, lengths, kwargs, expected):
    assert length_bonus(acc, lengths, **kwargs) == pytest.approx(expected)


def test_length_bonus_rejects_mismatched_lists():
    with pytest.raises(ValueError):
        length_bonus([1.0, 1.0], [400])


# Properties over arbitrary text. FRAGMENTS steer hypothesis towards tags, numbers and odd values.
FRAGMENTS = ["<answer>", "</answer>", "<think>", "</think>", " ", "\n", "A", "B", "3", "3.0", "1,000",
             "-2", "1e3", "nan", "inf", "1e999", ".", ",", "é", "中", "\u00a0"]
texts = st.one_of(st.text(), st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)),
                                      max_size=20).map("".join))
problem_types = st.sampled_from(PROBLEM_TYPES + ["unknown"])


@given(texts, texts, problem_types)
@PROPERTY
def test_accuracy_and_eval_are_floats_in_unit_interval(completion, solution, problem_type):
    for solution_text in (solution, tagged(solution)):
        for score in (accuracy_reward(completion, solution_text, problem_type),
                      eval_score(completion, solution_text, problem_type)):
            assert type(score) is float and 0.0 <= score <= 1.0


@given(texts, texts, texts)
@PROPERTY
def test_format_reward_is_binary_and_accepts_any_inner_text(text, thought, answer):
    assert format_reward(text) in (0.0, 1.0)
    assert format_reward(f"<think>{thought}</think>\n<answer>{answer}</answer>") == 1.0
    assert format_reward(f"x<think>{thought}</think>\n<answer>{answer}</answer>") == 0.0


@given(texts, texts, texts)
@PROPERTY
def test_extract_answer_takes_first_tag(before, inner, after):
    before, inner = before.replace("<answer>", ""), inner.replace("</answer>", "")
    assert extract_answer(f"{before}<answer>{inner}</answer>{after}") == inner.strip()


@given(st.floats(allow_nan=False, allow_infinity=False))
@PROPERTY
def test_numerical_and_regression_accept_any_finite_number(x):
    assert accuracy_reward(tagged(repr(x)), tagged(repr(x)), "numerical") == 1.0
    assert mean_relative_accuracy(repr(x), x) == 1.0
    if abs(x) >= 1e-6:  # below ~1e-7 the spec's +1e-9 smoothing dominates the relative error
        assert accuracy_reward(tagged(repr(x)), tagged(repr(x)), "regression") > 0.99


@given(st.one_of(texts, st.floats(), st.integers()), st.one_of(texts, st.floats(), st.integers()))
@PROPERTY
def test_mean_relative_accuracy_in_unit_interval(pred, gt):
    score = mean_relative_accuracy(pred, gt)
    assert type(score) is float and 0.0 <= score <= 1.0


accuracies = st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=8)


@given(accuracies, accuracies, st.sampled_from([0.8, 1.0]), st.sampled_from(["correct", "mean"]))
@PROPERTY
def test_temporal_bonus_values(acc_ordered, acc_shuffled, mu, share):
    bonus = temporal_bonus(acc_ordered, acc_shuffled, mu=mu, share=share)
    assert len(bonus) == len(acc_ordered)
    assert all(b == (0.3 if b else 0.0) for b in bonus)
    assert all(b == 0.0 for a, b in zip(acc_ordered, bonus) if not is_correct(a))
    if not acc_shuffled:
        assert not any(bonus)


@given(st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 1000)), max_size=8), st.sampled_from([1, 2]))
@PROPERTY
def test_length_bonus_values(rows, min_correct):
    acc, lengths = [a for a, _ in rows], [n for _, n in rows]
    bonus = length_bonus(acc, lengths, min_correct=min_correct)
    assert len(bonus) == len(acc)
    for a, n, b in zip(acc, lengths, bonus):
        assert b in (0.0, 0.2)
        if b:
            assert is_correct(a) and 320 <= n <= 512
    if sum(map(is_correct, acc)) < min_correct:
        assert not any(bonus)
