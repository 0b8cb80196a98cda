"""Tests of the T-GRPO math (hand-made tensors) and of the trainer end to end on the demo."""
import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tgrpo
from tgrpo import group_advantages, policy_loss


def test_group_advantages_by_hand():
    # group 1: rewards 2, 0 -> mean 1, unbiased std sqrt(2); group 2: all equal -> zeros
    adv = group_advantages(torch.tensor([[2.0, 0.0], [1.5, 1.5]]))
    s = math.sqrt(2.0)
    assert torch.allclose(adv, torch.tensor([[1 / (s + 1e-4), -1 / (s + 1e-4)], [0.0, 0.0]]))


@pytest.mark.parametrize("value", [1.3, 2.1])
def test_zero_spread_group_gets_exactly_zero_where_the_formula_does_not(value):
    rewards = torch.full((1, 8), value)
    naive = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
    assert (naive != 0).all()  # float32 rounding of the mean: about -0.001 each, the bug this guards against
    assert torch.equal(group_advantages(rewards), torch.zeros(1, 8))


@settings(max_examples=300, deadline=None)
@given(st.floats(-1e6, 1e6, width=32), st.integers(2, 16),
       st.lists(st.floats(-10, 10, width=32), min_size=2, max_size=16))
def test_zero_spread_groups_are_exactly_zero_and_others_untouched(value, G, other):
    # one zero-spread group at any reward value, next to a group with spread (or none, if `other` is constant)
    other = (other * G)[:G]
    rewards = torch.tensor([[value] * G, other])  # [2, G]
    adv = group_advantages(rewards)
    assert torch.equal(adv[0], torch.zeros(G))   # exactly 0, not 1e-3
    assert tgrpo.zero_spread(rewards)[:, 0].tolist() == [True, len(set(other)) == 1]
    if len(set(other)) > 1:                      # the others: exactly the formula of SPEC 3
        formula = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)  # [2, G]
        assert torch.equal(adv[1], formula[1])
    else:
        assert torch.equal(adv[1], torch.zeros(G))


def test_group_advantages_are_per_group_not_per_batch():
    # The release normalises over what is on the GPU; with several prompts per batch that mixes
    # groups. Here each prompt's advantages depend only on its own group.
    a = torch.tensor([[3.0, 1.0, 2.0, 2.0]])
    b = torch.tensor([[0.0, 0.0, 0.1, 0.0]])
    together = group_advantages(torch.cat([a, b]))
    assert torch.allclose(together[0], group_advantages(a)[0])
    assert torch.allclose(together[1], group_advantages(b)[0])
    # a batch-level normalisation would differ: catch a regression to it
    batch_level = (torch.cat([a, b]) - torch.cat([a, b]).mean()) / (torch.cat([a, b]).std() + 1e-4)
    assert not torch.allclose(together, batch_level)


def test_temporal_bonus_cannot_move_group_normalised_advantages():
    """With 0/1 accuracy and equal format, T-GRPO's reward is c + (1 + alpha) * acc on a group paid
    the bonus: a positive affine change, invisible to per-group normalisation, visible to the others."""
    right, wrong = "<think>I see it.</think><answer>B</answer>", "<think>I see it.</think><answer>C</answer>"
    video = [right, wrong, wrong, right, wrong, wrong, wrong, right]   # p = 3/8
    image = [right, right, wrong, right, wrong, right, right, wrong]
    lengths = [12] * 8
    paid = tgrpo.score_group(video, "<answer>B</answer>", "multiple choice", lengths, shuffled_completions=[wrong] * 4)
    plain = tgrpo.score_group(video, "<answer>B</answer>", "multiple choice", lengths)  # GRPO: no shuffled rollouts
    assert paid["temporal"] == [tgrpo.alpha if c == right else 0.0 for c in video]     # p = 3/8 >= p~ = 0
    img = tgrpo.score_group(image, "<answer>B</answer>", "multiple choice", lengths)["total"]
    t_grpo, grpo = torch.tensor([paid["total"], img]), torch.tensor([plain["total"], img])  # [2 groups, 8]
    assert not torch.equal(t_grpo, grpo)
    std = lambda R: R.std().item()  # "batch": one std over every reward of the step
    adv = {norm: (tgrpo.group_advantages(t_grpo, norm, std(t_grpo)), tgrpo.group_advantages(grpo, norm, std(grpo)))
           for norm in ("group", "none", "batch")}
    assert torch.allclose(*adv["group"], atol=1e-3)
    for norm in ("none", "batch"):
        assert (adv[norm][0][0] - adv[norm][1][0]).abs().max() > 0.05, norm  # the bonus group moves
    # "none" scales the bonus group by exactly 1 + alpha and leaves the other alone
    assert torch.allclose(adv["none"][0][0], (1 + tgrpo.alpha) * adv["none"][1][0])
    assert torch.equal(adv["none"][0][1], adv["none"][1][1])
    # "batch" divides every group by the one std of the step
    assert torch.allclose(adv["batch"][0] * (std(t_grpo) + 1e-4), t_grpo - t_grpo.mean(1, keepdim=True))
    # the training metric says the same per group: the bonus moved the video group except under "group"
    img_scores = tgrpo.score_group(image, "<answer>B</answer>", "multiple choice", lengths)
    assert tgrpo.bonus_moved([paid, img_scores], "group") == [False, False]
    assert tgrpo.bonus_moved([paid, img_scores], "none") == [True, False]
    assert tgrpo.bonus_moved([paid, img_scores], "batch", std(t_grpo)) == [True, False]


def test_temporal_bonus_moves_group_normalised_advantages_of_continuous_accuracies():
    """Free-form (ROUGE) accuracies are not 0/1, so the bonus is no affine change: it moves "group" too."""
    answer = lambda text: f"<think>I see it.</think><answer>{text}</answer>"
    video = [answer(t) for t in ("red then blue then green", "red then blue", "red", "yellow",
                                 "red then green", "blue", "yellow then red", "green")]
    paid = tgrpo.score_group(video, answer("red then blue then green"), "free-form", [12] * 8,
                             shuffled_completions=[answer("yellow")] * 4)
    assert len(set(paid["accuracy"])) > 2 and any(paid["temporal"])  # continuous accuracies, bonus paid
    assert tgrpo.bonus_moved([paid], "group") == [True]
    unpaid = tgrpo.score_group(video, answer("red then blue then green"), "free-form", [12] * 8)
    assert tgrpo.bonus_moved([unpaid], "group") == [False]


def test_advantage_norms_by_hand():
    R = torch.tensor([[2.0, 0.0, 1.0], [1.3, 1.3, 1.3]])
    s = 1.0  # unbiased std of 2, 0, 1
    assert torch.allclose(tgrpo.group_advantages(R), torch.tensor([[1 / (s + 1e-4), -1 / (s + 1e-4), 0.0], [0, 0, 0]]))
    assert torch.allclose(tgrpo.group_advantages(R, "none"), torch.tensor([[1.0, -1.0, 0.0], [0, 0, 0]]))
    assert torch.allclose(tgrpo.group_advantages(R, "batch", 0.5), torch.tensor([[1 / 0.5001, -1 / 0.5001, 0.0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="advantage_norm"):
        tgrpo.group_advantages(R, "mean")


def scalar_loss(logp, old, ref, adv, mask, eps, beta, agg):
    """Independent scalar re-statement of SPEC 3, written with math on Python floats."""
    per_seq, all_tok = [], []
    for i in range(len(logp)):
        toks = []
        for t in range(len(logp[i])):
            if not mask[i][t]:
                continue
            r = math.exp(logp[i][t] - old[i][t])
            surr = min(r * adv[i], min(max(r, 1 - eps), 1 + eps) * adv[i])
            x = min(max(ref[i][t] - logp[i][t], -10), 10)
            toks.append(-(surr - beta * (math.exp(x) - x - 1)))
        per_seq.append(sum(toks) / len(toks))
        all_tok += toks
    return sum(per_seq) / len(per_seq) if agg == "seq-mean" else sum(all_tok) / len(all_tok)


LOGP = [[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]]
OLD = [[-1.1, -2.0, -0.1], [-0.3, -0.9, -1.0]]   # ratios e^0.1, 1, e^-0.4 | 1, e^0.2
REF = [[-1.0, -1.5, -0.5], [-0.5, -0.7, -2.0]]
ADV = [1.0, -2.0]
MASK = [[1, 1, 1], [1, 1, 0]]                    # the last token of row 2 is past its end


@pytest.mark.parametrize("agg", ["seq-mean", "token-mean"])
def test_policy_loss_matches_hand_computation(agg):
    t = lambda x: torch.tensor(x, dtype=torch.float64)
    loss, stats = policy_loss(t(LOGP), t(OLD), t(REF), t(ADV), t(MASK), eps=0.2, beta=0.04, loss_agg=agg)
    assert loss.item() == pytest.approx(scalar_loss(LOGP, OLD, REF, ADV, MASK, 0.2, 0.04, agg), abs=1e-12)
    # ratios e^-0.4 (row 1, A > 0) and e^0.2 = 1.2214 (row 2, A < 0) are outside [0.8, 1.2], but
    # each on the side away from where its advantage pushes: the clip binds on none (the min keeps
    # the unclipped term and its gradient); counting "outside the range" would say 2 of 5
    assert (stats["clip_low"], stats["clip_high"], stats["clip_frac"]) == (0.0, 0.0, 0.0)


def test_clip_shares_count_where_the_clip_binds_on_each_side():
    # row 1, A = +1: ratios 1.3 (binds high: the surrogate is flat there), 0.7 (outside, no bind), 1
    # row 2, A = -1: ratios 0.7 (binds low), 1.3 (outside, no bind), 1; row 3, A = 0: 1.3, 0.7
    # masked from row 3's second token on. Tokens: 3 + 3 + 1 = 7; TRL's clip_ratio/low_mean and
    # high_mean are 1/7 each, region 2/7; "outside [0.8, 1.2]" would be 5/7.
    ratios = torch.tensor([[1.3, 0.7, 1.0], [0.7, 1.3, 1.0], [1.3, 0.7, 0.7]])
    logp = torch.log(ratios).requires_grad_()
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.0, -1.0, 0.0])
    loss, stats = policy_loss(logp, torch.zeros(3, 3), None, adv, mask, eps=0.2, beta=0.0,
                              loss_agg="token-mean")
    assert stats["clip_low"] == pytest.approx(1 / 7) and stats["clip_high"] == pytest.approx(1 / 7)
    assert stats["clip_frac"] == pytest.approx(2 / 7)
    loss.backward()  # exactly the binding tokens get no gradient (and row 3's A = 0 gives none)
    assert (logp.grad[:2] == 0).tolist() == [[True, False, False], [True, False, False]]


def test_policy_loss_literal_values():
    # ratio 1, A = 1, no KL: loss -1. One token with ratio e^1 and A = 1 is clipped at 1.2.
    one = torch.zeros(1, 1)
    loss, _ = policy_loss(one, one, one, torch.ones(1), torch.ones(1, 1), eps=0.2, beta=0.04)
    assert loss.item() == pytest.approx(-1.0)
    loss, _ = policy_loss(one, one - 1, None, torch.ones(1), torch.ones(1, 1), eps=0.2, beta=0.0)
    assert loss.item() == pytest.approx(-1.2)
    # negative advantage: min picks the unclipped, larger penalty e^1 * -1
    loss, _ = policy_loss(one, one - 1, None, -torch.ones(1), torch.ones(1, 1), eps=0.2, beta=0.0)
    assert loss.item() == pytest.approx(math.e)


def test_kl_zero_when_policy_equals_reference_and_gradient_is_advantage():
    logp = torch.tensor([[-0.5, -1.5, -2.0]], requires_grad=True)
    mask = torch.ones(1, 3)
    loss, stats = policy_loss(logp, logp.detach(), logp.detach(), torch.tensor([0.7]), mask)
    assert stats["kl"] == 0.0
    loss.backward()
    # with ratio == 1 and zero KL, d loss / d logp_t = -A / T for each token (seq-mean)
    assert torch.allclose(logp.grad, torch.full((1, 3), -0.7 / 3))


def test_clip_engages_on_second_iteration():
    # num_iterations = 2: after one update the policy moved away from logp_old; tokens whose ratio
    # leaves [1-eps, 1+eps] in the advantage's direction get zero gradient.
    logp_old = torch.tensor([[-1.0, -1.0]])
    logp = torch.tensor([[-0.5, -0.95]], requires_grad=True)   # ratios e^0.5 (clipped), e^0.05
    loss, stats = policy_loss(logp, logp_old, None, torch.tensor([1.0]), torch.ones(1, 2), eps=0.2, beta=0.0)
    loss.backward()
    assert stats["clip_frac"] == stats["clip_high"] == pytest.approx(0.5) and stats["clip_low"] == 0
    assert logp.grad[0, 0].item() == 0.0
    assert logp.grad[0, 1].item() == pytest.approx(-math.exp(0.05) / 2)


def test_bf16_update_with_bf16_reference_and_checkpointing_matches_fp32(demo_assets):
    # One T-GRPO update as tgrpo.py runs it on GPUs (policy with fp32 weights under bf16 autocast and activation
    # checkpointing, reference model in bf16), against all-fp32, on the same 8 sampled completions of a video
    # and an image prompt. Tolerances from bf16's 8 significant bits (relative rounding up to 2^-9): per-token
    # log-probs of O(1) logits move by ~0.002 (measured; bound 0.02), the KL of a policy to its own bf16 copy is
    # ~3e-7 (bound 1e-5, where the k3 KL of a changed policy is ~1e-4 per step), the gradient direction by ~5e-6.
    import data
    import model as engine
    world, tiny = demo_assets
    rows = [next(r for r in data.load_rows(f"{world}/rl.json") if r["data_type"] == kind) for kind in ("video", "image")]
    hf, tokenizer = engine.load_model(tiny)
    visuals = [data.make_visual(*data.load_frames(r, 8, 2.0, 112 * 112, 112 * 112, 112 * 112, 112 * 112)) for r in rows]
    batch = data.collate([data.prompt_text(r) for r in rows], visuals, tokenizer)
    out = engine.generate(hf, batch, 4, 24, generator=torch.Generator().manual_seed(0),
                          stop_ids=engine.stop_token_ids(tokenizer))
    pi, ids, lengths = out["prompt_index"], out["completion_ids"], out["lengths"]
    mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]  # [R, T]
    advantages = torch.tensor([1.0, -0.5, 0.2, -0.7, 0.9, -1.1, 0.4, 0.3])

    def update(bf16):
        policy, _ = engine.load_model(tiny)
        policy.train()
        if bf16:
            policy.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        ref, _ = engine.load_model(tiny, dtype=torch.bfloat16 if bf16 else torch.float32)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                logp_ref = engine.token_logprobs(ref, batch, pi, ids, lengths)
            logp = engine.token_logprobs(engine.VisionOnceLM(policy), batch, pi, ids, lengths)
            loss, stats = policy_loss(logp, logp.detach(), logp_ref, advantages, mask, eps=0.2, beta=0.04)
        loss.backward()
        return loss.item(), stats, logp.detach(), torch.cat([p.grad.flatten() for p in policy.parameters()])

    loss32, stats32, logp32, g32 = update(False)
    loss16, stats16, logp16, g16 = update(True)
    assert stats32["kl"] == 0.0 and 0.0 <= stats16["kl"] < 1e-5
    assert (logp16 - logp32).abs().max() < 0.02 and logp32[mask].mean() < -1.0  # real, non-trivial log-probs
    assert loss16 == pytest.approx(loss32, abs=1e-5)  # ratio 1: -mean(A) + beta * KL
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.9995
    assert abs(g16.norm() / g32.norm() - 1) < 0.01


def test_score_group_temporal_bonus_per_group(monkeypatch):
    monkeypatch.setattr(tgrpo, "omega", 0.0)
    sol = "<answer>B</answer>"
    right = "<think>it moves to the right</think><answer>B</answer>"
    wrong = "<think>hmm</think><answer>A</answer>"
    # ordered 3/4 correct, shuffled 1/2 correct: p = 0.75 >= p~ = 0.5 -> bonus on correct answers
    s = tgrpo.score_group([right, right, right, wrong], sol, "multiple choice", [10] * 4, [right, wrong])
    assert s["p_ordered"] == 0.75 and s["p_shuffled"] == 0.5
    assert s["temporal"] == [0.3, 0.3, 0.3, 0.0]
    assert s["total"] == [2.3, 2.3, 2.3, 1.0]
    # ordered worse than shuffled: no bonus
    s = tgrpo.score_group([right, wrong, wrong, wrong], sol, "multiple choice", [10] * 4, [right, right])
    assert s["temporal"] == [0.0] * 4
    # an image (no shuffled answers): no bonus and no p
    s = tgrpo.score_group([right, wrong], sol, "multiple choice", [10, 10], None)
    assert s["temporal"] == [0.0, 0.0] and s["p_ordered"] is None


def test_step_rows_split_ranks_and_epochs(monkeypatch):
    monkeypatch.setattr(tgrpo, "prompts_per_rank", 2)
    rows = list(range(10))
    r0 = [tgrpo.step_rows(rows, s, 2, 0) for s in range(5)]
    r1 = [tgrpo.step_rows(rows, s, 2, 1) for s in range(5)]
    epoch0 = sorted([x for s in range(0, 2) for x in r0[s] + r1[s]] + r0[2][:1] + r1[2][:1])
    assert epoch0 == sorted(rows)                # every row once per epoch, across both ranks
    assert all(set(a).isdisjoint(b) for a, b in zip(r0[:2], r1[:2]))
    assert tgrpo.step_rows(rows, 3, 2, 1) == r1[3]  # a pure function of step: resume-safe


def test_zero_spread_step_leaves_the_weights_bit_identical(demo_assets, tmp_path, monkeypatch):
    # every completion scores 1.3 (accuracy 0.3 + format 1): all groups of G = 8 have zero spread, beta = 0, so there
    # is nothing to learn. Before the fix each answer got A = -0.0012 and AdamW turned that rounding error into
    # a full-size step; AdamW's weight decay alone would also move the weights.
    from transformers import Qwen2_5_VLForConditionalGeneration
    from conftest import demo_config, read_metrics
    world, tiny = demo_assets
    monkeypatch.setattr(tgrpo, "accuracy_reward", lambda completion, solution, problem_type: 0.3)
    monkeypatch.setattr(tgrpo, "format_reward", lambda completion: 1.0)
    settings = dict(model_path=tiny, data_dir=world, out_dir=str(tmp_path), beta=0.0, temporal=False, max_steps=2,
                    save_every=2, G=8, prompts_per_rank=2, max_new_tokens=8, lr=1e-2, warmup_steps=1, sample_every=0)
    demo_config(monkeypatch, tgrpo, **settings)
    tgrpo.main()
    m = read_metrics(str(tmp_path))
    assert [(x["step"], x["zero_spread_groups"], x["grad_norm"]) for x in m] == [(1, 1.0, 0.0), (2, 1.0, 0.0)]
    assert m[-1]["reward"] == pytest.approx(1.3)
    before = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny).state_dict()
    after = Qwen2_5_VLForConditionalGeneration.from_pretrained(f"{tmp_path}/step_000002").state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


RL_ARGS = ["--max_new_tokens=64", "--G=4", "--G_shuffled=2", "--prompts_per_rank=3", "--micro_batch_size=4",
           "--lr=1e-3", "--sample_every=1"]


@pytest.mark.slow
def test_end_to_end_one_process(sft_run, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration
    from conftest import read_metrics, run_script
    out = f"{tmp_path}/rl"  # one update per step, as the paper: step 1's KL is taken before the policy moves
    run_script("tgrpo.py", f"--model_path={sft_run}", f"--out_dir={out}", "--max_steps=3", "--save_every=3",
               "--num_iterations=1", *RL_ARGS)
    m = read_metrics(out)
    assert [x["step"] for x in m] == [1, 2, 3]
    for key in ("reward_accuracy", "reward_format", "reward_temporal", "reward_length", "p_ordered", "p_shuffled",
                "temporal_bonus_rate", "temporal_bonus_moved", "zero_spread_groups", "kl", "clip_frac", "clip_low", "clip_high", "completion_len", "completion_len_max", "truncated",
                "rollout_tok_s", "t_rollout", "t_reward", "t_logprob", "t_update"):
        assert key in m[-1] and m[-1][key] == m[-1][key], key   # present and not nan
    assert any(x["grad_norm"] > 0 for x in m)                    # the SFT model gives varied rewards
    assert m[0]["kl"] == 0.0 and m[-1]["kl"] > 0.0               # policy starts at the reference
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(f"{out}/step_000003")
    assert hf.config.text_config.use_cache
    assert "=== step 3" in open(f"{out}/samples.txt").read()


@pytest.mark.slow
def test_two_processes_different_prompts_identical_weights(sft_run, tmp_path):
    from conftest import read_metrics, run_script
    out = f"{tmp_path}/ddp"  # batch normalisation: its std is gathered over both ranks' rewards
    run_script("tgrpo.py", f"--model_path={sft_run}", f"--out_dir={out}", "--max_steps=3", "--save_every=3",
               "--advantage_norm=batch", *RL_ARGS, processes=2)
    m = read_metrics(out)
    assert len(m) == 3
    for x in m:
        r0, r1 = x["problem_ids"]
        assert len(r0) == len(r1) == 3 and set(r0).isdisjoint(r1)  # each rank its own prompts
        assert x["weight_checksums"][0] == x["weight_checksums"][1]  # and the same weights after the step
    assert any(x["grad_norm"] > 0 for x in m)
    assert len({c for x in m for c in x["weight_checksums"]}) == 3  # the weights did move


@pytest.mark.slow
def test_resume_reproduces_next_batch_and_loss(sft_run, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration
    from conftest import read_metrics, run_script
    args = [f"--model_path={sft_run}", "--max_steps=3", "--save_every=1", "--keep_last=5", *RL_ARGS]
    run_script("tgrpo.py", f"--out_dir={tmp_path}/a", *args)
    run_script("tgrpo.py", f"--out_dir={tmp_path}/b", f"--resume={tmp_path}/a/step_000002", *args)
    a, b = read_metrics(f"{tmp_path}/a")[-1], read_metrics(f"{tmp_path}/b")
    assert [x["step"] for x in b] == [3]
    for key in ("problem_ids", "loss", "reward", "kl", "completion_len", "weight_checksums"):
        assert a[key] == b[0][key], key
    wa = Qwen2_5_VLForConditionalGeneration.from_pretrained(f"{tmp_path}/a/step_000003").state_dict()
    wb = Qwen2_5_VLForConditionalGeneration.from_pretrained(f"{tmp_path}/b/step_000003").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_bad_media_two_processes_replace_log_once_and_resume_exactly(sft_run, demo_assets, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration
    from conftest import BAD_MEDIA, dataset_with_bad_media, read_metrics, run_script
    world, _ = demo_assets
    # 24 rows, the first 8 with bad media (one per kind): most steps meet some
    file, bad_paths = dataset_with_bad_media(f"{world}/rl.json", tmp_path, dict(enumerate(BAD_MEDIA)))
    with open(file) as f:
        rows = json.load(f)[:24]
    with open(file, "w") as f:
        json.dump(rows, f)
    bad_ids = {rows[i]["problem_id"] for i in bad_paths}
    out = tmp_path / "out"
    args = [f"--model_path={sft_run}", f"--data_dir={tmp_path}", f"--out_dir={out}", "--max_steps=3",
            "--save_every=1", "--keep_last=5", "--max_bad_media_share=0.6", *RL_ARGS]
    run_script("tgrpo.py", *args, processes=2)
    m = read_metrics(out)
    assert [x["step"] for x in m] == [1, 2, 3]
    assert all(set(r0 + r1).isdisjoint(bad_ids) for r0, r1 in (x["problem_ids"] for x in m))  # never trained on
    logged = [line.split("\t") for line in (out / "bad_media.txt").read_text().splitlines()]
    paths = [p for _, p, _ in logged]
    assert len(paths) == len(set(paths)) >= 2 and set(paths) <= set(bad_paths.values())  # both ranks', once each
    assert all(p in reason for _, p, reason in logged)
    assert m[-1]["bad_media"] >= len(paths)
    # resume from step 2 in the same out_dir: step 3 again, identically, without duplicate lines
    first_log = (out / "bad_media.txt").read_text()
    w3 = Qwen2_5_VLForConditionalGeneration.from_pretrained(f"{out}/step_000003").state_dict()
    run_script("tgrpo.py", *args, f"--resume={out}/step_000002", processes=2)
    again = read_metrics(out)
    for key in ("problem_ids", "loss", "reward", "bad_media", "weight_checksums"):
        assert [x[key] for x in again] == [x[key] for x in m], key
    assert (out / "bad_media.txt").read_text() == first_log
    w3_again = Qwen2_5_VLForConditionalGeneration.from_pretrained(f"{out}/step_000003").state_dict()
    assert all(torch.equal(w3[k], w3_again[k]) for k in w3)


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_bf16_reference_and_checkpointing_run_end_to_end(sft_run, tmp_path, processes):
    # tgrpo.py as on GPUs (bf16 autocast, bf16 reference model, activation checkpointing in the updates and
    # not in the rollouts). The numbers are checked against fp32 in the unit test above; here: it runs, ranks
    # agree, and the KL starts at bf16 rounding level (exactly 0 in fp32) and grows as the policy moves. One update
    # per step, so that step 1's KL is measured before the policy has moved.
    from conftest import read_metrics, run_script
    out = f"{tmp_path}/rl"
    run_script("tgrpo.py", f"--model_path={sft_run}", f"--out_dir={out}", "--max_steps=3", "--save_every=3",
               "--gradient_checkpointing=True", "--num_iterations=1", *RL_ARGS, processes=processes,
               mixed_precision="bf16")
    m = read_metrics(out)
    assert [x["step"] for x in m] == [1, 2, 3]
    assert all(math.isfinite(x[k]) for x in m for k in ("loss", "reward", "kl", "grad_norm"))
    assert all(len(set(x["weight_checksums"])) == 1 and len(x["weight_checksums"]) == processes for x in m)
    assert m[0]["kl"] < 1e-4 and m[-1]["kl"] > m[0]["kl"]
    assert any(x["grad_norm"] > 0 for x in m)


def test_background_media_give_the_inline_steps_exactly(demo_assets, tmp_path, monkeypatch):
    # the media of step s+1 are decoded on data.prefetch's thread while step s trains: the same rows, bad-media
    # replacements and log, rewards, losses and weights as decoding each step's media inline
    import threading
    import data
    from transformers import Qwen2_5_VLForConditionalGeneration
    from conftest import BAD_MEDIA, dataset_with_bad_media, demo_config, read_metrics
    world, tiny = demo_assets
    file, _ = dataset_with_bad_media(f"{world}/rl.json", tmp_path, dict(enumerate(BAD_MEDIA)))
    with open(file) as f:
        rows = json.load(f)[:24]  # 8 bad of 24: most steps replace some
    with open(file, "w") as f:
        json.dump(rows, f)
    # answers of even length are "right": the groups have spread, so the weights move
    monkeypatch.setattr(tgrpo, "accuracy_reward", lambda completion, solution, problem_type: len(completion) % 2)
    real_load, threads = data.load_frames, []
    monkeypatch.setattr(data, "load_frames", lambda *a, **k: threads.append(threading.get_ident()) or real_load(*a, **k))

    def run(out):
        settings = dict(model_path=tiny, data_dir=str(tmp_path), out_dir=str(out), max_steps=3, save_every=3,
                        G=4, G_shuffled=2, prompts_per_rank=3, micro_batch_size=4, max_new_tokens=16, lr=1e-2,
                        warmup_steps=1, sample_every=0, max_bad_media_share=0.9)
        demo_config(monkeypatch, tgrpo, **settings)
        threads.clear()
        tgrpo.main()
        m = [{k: v for k, v in x.items() if not k.startswith("t_") and k != "rollout_tok_s"} for x in read_metrics(out)]
        w = Qwen2_5_VLForConditionalGeneration.from_pretrained(f"{out}/step_000003").state_dict()
        return m, (out / "bad_media.txt").read_text(), w, set(threads)

    background = run(tmp_path / "background")
    monkeypatch.setattr(data, "prefetch", lambda fn, items: map(fn, items))
    inline = run(tmp_path / "inline")
    assert threading.get_ident() not in background[3] and inline[3] == {threading.get_ident()}
    assert background[0] == inline[0] and background[1] == inline[1]
    assert background[0][-1]["bad_media"] > 0 and background[1].count("\n") > 0
    assert any(x["grad_norm"] > 0 for x in background[0])
    assert all(torch.equal(background[2][k], inline[2][k]) for k in inline[2])


def test_score_by_hand_groups_and_the_completions_trained_on():
    # two groups: a video (prompts 0 ordered, 1 shuffled) and an image (prompt 2); 2 + 1 + 2 rows
    right, wrong = "<think>t</think><answer>B</answer>", "<think>t</think><answer>A</answer>"
    groups = [{"row": {"solution": "<answer>B</answer>", "problem_type": "multiple choice"}, "ordered": 0,
               "shuffled": 1},
              {"row": {"solution": "<answer>A</answer>", "problem_type": "multiple choice"}, "ordered": 2,
               "shuffled": None}]
    out = {"prompt_index": torch.tensor([0, 0, 1, 2, 2]), "completion_ids": torch.arange(15).view(5, 3),
           "lengths": torch.tensor([3, 2, 3, 1, 3]), "truncated": torch.tensor([False, False, True, False, True])}
    texts = [right, wrong, wrong, wrong, right]
    scores, c = tgrpo.score(groups, out, texts)
    assert [s["accuracy"] for s in scores] == [[1.0, 0.0], [1.0, 0.0]]
    assert scores[0]["p_shuffled"] == 0.0 and scores[0]["temporal"] == [tgrpo.alpha, 0.0]  # p = 1/2 >= p~ = 0
    assert scores[1]["p_ordered"] is None and scores[1]["temporal"] == [0.0, 0.0]
    assert c["prompt_index"].tolist() == [0, 0, 2, 2]                 # the shuffled row is never trained on
    assert torch.equal(c["ids"], out["completion_ids"][[0, 1, 3, 4]]) and c["lengths"].tolist() == [3, 2, 1, 3]
    assert c["mask"].tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]
    assert c["truncated"].tolist() == [False, False, False, True]


def update_inputs(demo_assets):
    """A tiny model, a video and an image prompt and 4 sampled completions each, as tgrpo.update takes them."""
    import data
    import model as engine
    from accelerate import Accelerator
    world, tiny = demo_assets
    rows = [next(r for r in data.load_rows(f"{world}/rl.json") if r["data_type"] == k) for k in ("video", "image")]
    hf, tokenizer = engine.load_model(tiny)
    media = dict(max_frames=8, fps=2.0, video_min_pixels=112 * 112, video_max_pixels=112 * 112,
                 image_min_pixels=112 * 112, image_max_pixels=112 * 112)
    visuals = [data.make_visual(*data.load_frames(r, **media)) for r in rows]
    batch = data.collate([data.prompt_text(r) for r in rows], visuals, tokenizer)
    out = engine.generate(hf, batch, 4, 12, generator=torch.Generator().manual_seed(0),
                          stop_ids=engine.stop_token_ids(tokenizer))
    _, c = tgrpo.score([{"row": r, "ordered": i, "shuffled": None} for i, r in enumerate(rows)], out,
                       ["x"] * 8)
    policy = engine.VisionOnceLM(hf)
    return Accelerator(), policy, batch, c


@pytest.mark.parametrize("advantage", [0.0, 1.0])
def test_update_on_zero_advantages_and_no_kl_leaves_the_weights_bit_identical(demo_assets, monkeypatch, advantage):
    # called directly: every group without spread (A = 0) and beta = 0, so the loss has no gradient; AdamW would
    # still move the weights (weight decay); with A = 1 the same call does move them (the test can fail)
    from common import make_optimizer
    monkeypatch.setattr(tgrpo, "beta", 0.0)
    monkeypatch.setattr(tgrpo, "num_iterations", 2)
    acc, policy, batch, c = update_inputs(demo_assets)
    optimizer, scheduler = make_optimizer(policy, 1e-2, (0.9, 0.999), 1e-8, 0.1, total_updates=4, warmup=1)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    advantages = torch.tensor([advantage, -advantage] * 4)
    stats = tgrpo.update(acc, policy, optimizer, scheduler, batch, c, advantages, None, None)
    after = policy.state_dict()
    unchanged = all(torch.equal(before[k], after[k]) for k in before)
    assert unchanged == (advantage == 0.0)
    assert (stats["grad_norm"] == 0.0) == (advantage == 0.0) and stats["kl"] == 0.0
    assert scheduler.last_epoch == 2  # one schedule step per iteration, applied or not


def test_a_video_whose_decoder_hangs_is_replaced_logged_and_resumes_exactly(demo_assets, tmp_path,
                                                                             monkeypatch):
    # One of 6 rows never decodes (conftest.decode_or_misbehave): its decode process is ended after
    # media_timeout, the row is replaced like any bad media, the run finishes and resumes exactly.
    import shutil
    import data
    from conftest import decode_or_misbehave, demo_config, read_metrics
    world, tiny = demo_assets
    with open(f"{world}/rl.json") as f:
        rows = [r for r in json.load(f) if r["data_type"] == "video"][:6]
    hang = str(tmp_path / "hang.mp4")
    shutil.copy(f"{world}/{rows[0]['path'][2:]}", hang)
    rows = [dict(r, path=f"{world}/{r['path'][2:]}") for r in rows]
    rows[0]["path"] = hang
    (tmp_path / "rl.json").write_text(json.dumps(rows))
    monkeypatch.setattr(data, "decode_frames", decode_or_misbehave)
    out = tmp_path / "out"

    def run(**kw):
        demo_config(monkeypatch, tgrpo, model_path=tiny, data_dir=str(tmp_path), out_dir=str(out),
                    max_steps=2, save_every=1, keep_last=5, G=2, G_shuffled=1, prompts_per_rank=3,
                    micro_batch_size=4, max_new_tokens=8, sample_every=0, media_timeout=3,
                    max_bad_media_share=0.9, **kw)
        tgrpo.main()
        return [{k: v for k, v in x.items() if not k.startswith("t_") and k != "rollout_tok_s"}
                for x in read_metrics(out)]

    m = run()
    logged = [line.split("\t") for line in (out / "bad_media.txt").read_text().splitlines()]
    assert [x["step"] for x in m] == [1, 2] and m[-1]["bad_media"] >= 1
    assert [p for _, p, _ in logged] == [hang]
    assert logged[0][2].startswith(f"hung: decoding {hang} took longer than media_timeout=3 s")
    assert all(rows[0]["problem_id"] not in r for x in m for r in x["problem_ids"])
    log = (out / "bad_media.txt").read_text()
    assert run(resume=str(out / "step_000001")) == m and (out / "bad_media.txt").read_text() == log


@pytest.mark.parametrize("knob, value, message", [
    ("G", 1, "G=1: must be at least 2"), ("G_shuffled", 0, "G_shuffled=0: must be at least 1"),
    ("mu", -0.5, "mu=-0.5: must be >= 0"), ("eps", 0.0, "eps=0.0: must be > 0"),
    ("beta", -0.01, "beta=-0.01"), ("alpha", -0.3, "alpha=-0.3"),
    ("num_iterations", 0, "num_iterations=0"), ("temperature", 0.0, "temperature=0.0"),
    ("top_p", 1.5, "top_p=1.5"), ("l_max", 100, "l_max=100: must be >= l_min"),
    ("loss_agg", "mean", "loss_agg='mean'"), ("advantage_norm", "std", "advantage_norm='std'")])
def test_knobs_are_checked_at_start_naming_the_knob(knob, value, message):
    cfg = {k: getattr(tgrpo, k) for k in tgrpo.config}  # the paper's values pass
    tgrpo.check_knobs(cfg)
    with pytest.raises(ValueError, match=re.escape(message)):
        tgrpo.check_knobs({**cfg, knob: value})
    tgrpo.check_knobs({**cfg, "temporal": False, "G_shuffled": 0})  # plain GRPO needs none
