"""
Rule-based rewards of Video-R1 (SPEC section 2) and the benchmark scoring rule (SPEC section 5).

Pure Python, no torch. Every scoring function is total: any text in, a float out, never an
exception; a missing or unparseable answer scores 0.0. Per completion i of a prompt group:

    R_i = accuracy_reward + format_reward + temporal_bonus + length_bonus

Choices the spec leaves open:
  - A missing answer on either side scores 0.0, so an empty prediction never "matches" a solution
    that lost its tags (otherwise "" == "" would be a correct multiple-choice answer).
  - Numbers are parsed with Python's float() after removing commas; nan/inf (also "1e999", which
    overflows to inf) count as unparseable, so no nan == nan style accident can earn reward.
  - Regression keeps the spec's formula, so gt = 0 scores 0.0 even for pred = 0 (rel = 1e-9/1e-9).
  - ROUGE-L inside rouge_score is an O(n*m) LCS: fine for answers capped at the completion length
    (768 tokens), slow only for thousands of words on both sides. OCR's word edit distance is
    bit-parallel, so two 10k-word strings take milliseconds.
"""
import math
import numbers
import re

from rouge_score import rouge_scorer

ANSWER_RE = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)  # re.search: the first tag wins
FORMAT_RE = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)  # must fullmatch
CORRECT_THRESHOLD = 0.1  # "correct" for the bonuses means accuracy above this (paper and release)
REGRESSION_EPS = 1e-9  # keeps the relative error finite when gt = 0 (release constant)
MRA_EPS = 1e-8  # same role in Mean Relative Accuracy (VSI-Bench constant)
MRA_THETAS = [0.50 + 0.05 * i for i in range(10)]  # confidence thresholds 0.50, 0.55, ..., 0.95
ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)  # build once


def extract_answer(text: str) -> str:
    """Text inside the first <answer>...</answer>, stripped; "" when there is none.

    >>> extract_answer("<think>hmm</think><answer> B </answer><answer>C</answer>")
    'B'
    >>> extract_answer("<answer>B")  # unclosed
    ''
    """
    match = ANSWER_RE.search(text)
    return match.group(1).strip() if match else ""


def _parse_number(x) -> float | None:
    """A finite float from a string (commas removed) or a number; None when there is none.

    >>> _parse_number(" 1,000.5 "), _parse_number("1e3"), _parse_number("nan"), _parse_number("12 m")
    (1000.5, 1000.0, None, None)
    """
    if isinstance(x, str):
        try:
            value = float(x.replace(",", ""))
        except ValueError:
            return None
    elif isinstance(x, numbers.Real):
        try:
            value = float(x)
        except OverflowError:  # an int too large for a float
            return None
    else:
        return None
    return value if math.isfinite(value) else None


def _word_edit_distance(ref: list, hyp: list) -> int:
    """Levenshtein distance between two word lists (substitution, insertion, deletion cost 1).

    The textbook O(len(ref)*len(hyp)) table, one column per hyp word, but with the column held as
    bit vectors in Python ints (Myers 1999, in Hyyro's edit-distance form): bit i of vp/vn says the
    cell in row i+1 is one more/one less than the cell above it. test_rewards.py checks it against
    the plain table.

    >>> _word_edit_distance("the cat sat".split(), "the cat sat down".split())
    1
    """
    if not ref:
        return len(hyp)
    mask, top = (1 << len(ref)) - 1, 1 << (len(ref) - 1)
    peq = {}  # word -> bits of the rows of ref that hold that word
    for i, word in enumerate(ref):
        peq[word] = peq.get(word, 0) | (1 << i)
    vp, vn, dist = mask, 0, len(ref)  # first column: 0, 1, ..., len(ref), all steps +1
    for word in hyp:
        eq = peq.get(word, 0)
        d0 = (((eq & vp) + vp) ^ vp) | eq | vn  # rows whose diagonal step is 0
        hp = vn | (~(d0 | vp) & mask)  # horizontal +1 steps
        hn = vp & d0  # horizontal -1 steps
        if hp & top:
            dist += 1
        elif hn & top:
            dist -= 1
        hp = ((hp << 1) | 1) & mask  # "| 1": row 0 grows by one per hyp word
        hn = (hn << 1) & mask
        vp = hn | (~(d0 | hp) & mask)
        vn = hp & d0
    return dist


def _score_answer(pred: str, gt: str, problem_type: str) -> float:
    """Score an extracted prediction against an extracted ground truth (SPEC 2 table)."""
    if not pred or not gt:
        return 0.0
    if problem_type == "multiple choice":
        return float(pred == gt)
    if problem_type == "numerical":
        # "3" vs "3.0" is wrong on purpose (release rule): the answer must match the gt's notation
        if ("." in pred or "," in pred) != ("." in gt or "," in gt):
            return 0.0
        p, t = _parse_number(pred), _parse_number(gt)
        return float(p is not None and t is not None and round(p, 2) == round(t, 2))
    if problem_type == "OCR":
        ref = gt.split()
        wer = _word_edit_distance(ref, pred.split()) / max(1, len(ref))
        return max(0.0, 1.0 - wer)
    if problem_type == "free-form":
        scores = ROUGE.score(target=gt, prediction=pred)
        return float(min(1.0, max(0.0, sum(s.fmeasure for s in scores.values()) / len(scores))))
    if problem_type == "regression":
        p, t = _parse_number(pred), _parse_number(gt)
        if p is None or t is None:
            return 0.0
        rel = (abs(p - t) + REGRESSION_EPS) / (abs(t) + REGRESSION_EPS)  # may be inf: clipped
        return 1.0 - min(1.0, rel)
    return 0.0  # unknown problem_type


def accuracy_reward(completion: str, solution: str, problem_type: str) -> float:
    """Accuracy in [0, 1] of a completion's answer against the solution's, by problem_type.

    >>> accuracy_reward("<think>..</think><answer>B</answer>", "<answer>B</answer>", "multiple choice")
    1.0
    >>> accuracy_reward("<answer>3</answer>", "<answer>3.0</answer>", "numerical")  # notation differs
    0.0
    >>> accuracy_reward("<answer>the cat sat</answer>", "<answer>the cat sat down</answer>", "OCR")
    0.75
    >>> round(accuracy_reward("<answer>9</answer>", "<answer>10</answer>", "regression"), 6)  # 1 - 0.1
    0.9
    """
    return _score_answer(extract_answer(completion), extract_answer(solution), problem_type)


def format_reward(completion: str) -> float:
    """1.0 if the whole completion is <think>...</think> then <answer>...</answer>, else 0.0.

    >>> format_reward("<think>a</think>\\n<answer>B</answer>"), format_reward("<answer>B</answer>")
    (1.0, 0.0)
    """
    return float(FORMAT_RE.fullmatch(completion) is not None)


def is_correct(acc: float, threshold: float = CORRECT_THRESHOLD) -> bool:
    """Whether an accuracy counts as correct for the bonuses. is_correct(0.75) -> True."""
    return acc > threshold


def group_share(acc: list, threshold: float = CORRECT_THRESHOLD, share: str = "correct") -> float:
    """p of T-GRPO for one group: share of correct completions ("correct", the paper) or mean
    accuracy ("mean", the release); 0.0 for an empty group.

    >>> group_share([1.0, 0.05, 0.5, 0.0]), group_share([1.0, 0.05, 0.5, 0.0], share="mean")
    (0.5, 0.3875)
    """
    if share not in ("correct", "mean"):
        raise ValueError(f"share must be 'correct' or 'mean', got {share!r}")
    if not acc:
        return 0.0
    if share == "correct":
        return sum(is_correct(a, threshold) for a in acc) / len(acc)
    return sum(acc) / len(acc)


def temporal_bonus(acc_ordered: list, acc_shuffled: list, alpha: float = 0.3, mu: float = 1.0,
                   threshold: float = CORRECT_THRESHOLD, share: str = "correct") -> list:
    """Bonus per ordered completion: +alpha for each correct one if p >= mu * p~, else all 0.

    p, p~ = group_share of the ordered and shuffled accuracies. With no shuffled completions (image
    prompts) there is nothing to compare with, so no bonus. The release is share="mean", mu=0.8,
    with all prompts of a GPU's batch passed as one group.

    >>> temporal_bonus([1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0])  # p = 0.5 >= p~ = 0.25
    [0.3, 0.0, 0.3, 0.0]
    >>> temporal_bonus([1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0])  # p = 0.25 < p~ = 0.5
    [0.0, 0.0, 0.0, 0.0]
    """
    p_ordered = group_share(acc_ordered, threshold, share)
    if not acc_shuffled:
        return [0.0] * len(acc_ordered)
    p_shuffled = group_share(acc_shuffled, threshold, share)
    if p_ordered >= mu * p_shuffled:  # False for nan, so a nan accuracy never pays a bonus
        return [alpha if is_correct(a, threshold) else 0.0 for a in acc_ordered]
    return [0.0] * len(acc_ordered)


def length_bonus(acc: list, lengths: list, omega: float = 0.2, l_min: int = 320, l_max: int = 512,
                 threshold: float = CORRECT_THRESHOLD, min_correct: int = 1) -> list:
    """+omega for each correct completion with l_min <= length <= l_max (tokens, end token
    included), provided the group has at least min_correct correct ones (release: 2).

    >>> length_bonus([1.0, 1.0, 0.0], [400, 600, 400])
    [0.2, 0.0, 0.0]
    >>> length_bonus([1.0, 0.0, 0.0], [400, 400, 400], min_correct=2)
    [0.0, 0.0, 0.0]
    """
    correct = [is_correct(a, threshold) for a in acc]
    if sum(correct) < min_correct:
        return [0.0] * len(acc)
    return [omega if c and l_min <= n <= l_max else 0.0 for c, n in zip(correct, lengths, strict=True)]


def mean_relative_accuracy(pred, gt) -> float:
    """VSI-Bench MRA: share of thetas in 0.50..0.95 with |p - t| / |t| < 1 - theta; 0.0 if either
    side is not a finite number. Strings or numbers.

    >>> mean_relative_accuracy("93", 100)  # error 0.07 < 1 - theta for theta <= 0.90
    0.9
    """
    p, t = _parse_number(pred), _parse_number(gt)
    if p is None or t is None:
        return 0.0
    rel = abs(p - t) / (abs(t) + MRA_EPS)
    return sum(rel < 1.0 - theta for theta in MRA_THETAS) / len(MRA_THETAS)


def eval_score(output: str, solution: str, problem_type: str) -> float:
    """Benchmark score of one model output: as accuracy_reward, except that an output without any
    answer tag is taken whole as the answer, and regression uses mean_relative_accuracy.

    >>> eval_score("  B ", "<answer>B</answer>", "multiple choice")  # no tag: whole output
    1.0
    >>> eval_score("<answer>93</answer>", "<answer>100</answer>", "regression")
    0.9
    """
    match = ANSWER_RE.search(output)
    pred = match.group(1).strip() if match else output.strip()
    gt = extract_answer(solution)
    if problem_type == "regression":
        return mean_relative_accuracy(pred, gt)
    return _score_answer(pred, gt, problem_type)
