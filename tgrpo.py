"""
T-GRPO: Temporal Group Relative Policy Optimization (Video-R1, Feng et al. 2025, arXiv 2503.21776).

GRPO samples a group of answers per question and pushes up the better-than-average ones. T-GRPO adds
one question to the reward: did the model need the frame order? For each video it also samples
answers from the same frames in a shuffled order; if the ordered answers are correct at least as
often as the shuffled ones (p >= mu * p~), every correct ordered answer earns a bonus alpha.

The paper's run (the defaults below), Qwen2.5-VL-7B after the SFT cold start, 8 GPUs:
    accelerate launch --config_file config/accelerate_zero2.yaml tgrpo.py config/tgrpo_7b.py
The CPU demo (tiny model, synthetic world; `python demo.py` runs the whole pipeline):
    python tgrpo.py config/tgrpo_demo.py
Ablations: config/tgrpo_grpo.py (temporal off), config/tgrpo_zero.py (no SFT),
config/tgrpo_noimage.py (videos only), config/tgrpo_release.py (the authors' release).
LoRA: config/tgrpo_7b_lora.py.

A step, per rank (the loop in main):
  1. prompts   prompts_per_rank rows; a video also gets a shuffled copy of its frames
  2. rollout   G completions per prompt (+ G_shuffled for the shuffled video)
  3. rewards   accuracy + format, per group p and p~, the temporal and length bonuses
  4. advantages  (R - mean R) / (std R + 1e-4) within each group of G
  5. log-probs of the reference (and of the sampling policy when num_iterations > 1)
  6. update    num_iterations steps of the clipped surrogate with a k3 KL penalty
Simplifications, on purpose: rollouts come from our own KV-cache engine in model.py (no vLLM); the
reference model is a full copy on every GPU (with LoRA it is the base, adapters off).
"""
import math
import os
import time

import torch

# model and data
model_path = "out/sft_7b"               # the SFT cold start: HF folder, LoRA checkpoint or out_dir
data_dir = "data/Video-R1-data"         # dataset root: media paths in the json are relative to it
train_file = "Video-R1-260k.json"
data_types = None                       # ["video"]: the paper's "no image data" ablation
out_dir = "out/tgrpo_7b"
# vision (SPEC 1.3)
max_frames = 16
fps = 2.0
video_min_pixels = 128 * 28 * 28
video_max_pixels = 128 * 28 * 28
image_min_pixels = 4 * 28 * 28
image_max_pixels = 256 * 28 * 28
video_cap_floor_ratio = 1.05            # frame cap >= 1.05 x the floor: qwen-vl-utils (None: off)
media_timeout = 120                     # s per media file: a decode that takes longer is bad media
shuffle_level = "frame"                 # "frame" (release) or "patch" (whole 2-frame patches)
shuffle_timestamps = "keep"             # Qwen3-VL: timestamps stay in order, or "follow" frames
question_template = "train"
max_prompt_length = 16384               # longer prompts are replaced and counted, never truncated
max_bad_media_share = 0.01              # rows with bad media are replaced; stop past this share
# T-GRPO (SPEC 2, 3)
G = 8                                   # ordered completions per prompt
G_shuffled = 4                          # shuffled-frame completions per video prompt
temporal = True                         # False: plain GRPO
alpha = 0.3                             # temporal bonus
mu = 1.0                                # p >= mu * p~ (release: 0.8)
temporal_share = "correct"              # "correct": share of correct answers; "mean": release
correct_threshold = 0.1                 # accuracy above this counts as correct for the bonuses
omega = 0.2                             # length bonus
l_min = 320                             # length bonus window, in tokens incl. the stop token
l_max = 512
length_min_correct = 1                  # release: 2 correct answers needed in the group
beta = 0.04                             # KL penalty (k3) to the reference; 0 skips the reference
eps = 0.2                               # PPO clip range
num_iterations = 1                      # clipped updates per batch of rollouts (1: ratio == 1)
loss_agg = "seq-mean"                   # "seq-mean" (paper, release) or "token-mean"
advantage_norm = "group"                # "group" (paper), "none" (Dr. GRPO) or "batch"
temperature = 1.0
top_p = 0.95
max_new_tokens = 768
# LoRA through peft (imported only when on): None trains every weight (the paper)
lora_rank = None                        # e.g. 64: adapters on lora_target, all else frozen
lora_alpha = 128                        # the adapters' output is scaled by lora_alpha / lora_rank
lora_dropout = 0.0                      # 0: else logp differs from the sampling policy's
lora_target = ["language"]              # LM attention + MLP; + "vision": the vision tower
# optimisation
max_steps = 1000                        # about 1k steps on 8 GPUs
prompts_per_rank = 1                    # the release: 1 prompt per GPU per step
micro_batch_size = 8                    # completions per forward/backward
lr = 1e-6
weight_decay = 0.01
adam_betas = (0.9, 0.999)
adam_eps = 1e-8
warmup_steps = 0
grad_clip = 5.0
gradient_checkpointing = True           # recompute activations in the backward pass
logprob_chunk = 1024                    # tokens per LM-head chunk (model.head_logprobs); None: all
seed = 42
# logging and checkpoints
log_with = None                         # "wandb", "tensorboard", or a list of them
sample_every = 10                       # dump a prompt's completions to out_dir/samples.txt
save_every = 100                        # the last step is always saved
keep_last = 2
resume = ""                             # "latest": newest checkpoint in out_dir, or a path

from configurator import configure

config = configure(globals(), None if __name__ == "__main__" else [])  # tests import the defaults

from accelerate.utils import DistributedType

import common
import data
import families
import model as engine
from rewards import accuracy_reward, format_reward, group_share, length_bonus, temporal_bonus


# ---------------------------------------------------------------------------- the RL math
def zero_spread(rewards):
    """[N, G] -> [N, 1] bool: groups whose rewards are all equal, so there is nothing to learn from
    them. Decided on the rewards, not on a computed std: in float32 the mean of eight 1.3s is off by
    one unit in the last place, and (R - mean) / (std + 1e-4) would give every answer -0.0012
    instead of 0."""
    return (rewards == rewards[:, :1]).all(dim=1, keepdim=True)


def group_advantages(rewards, norm="group", batch_std=None):
    """GRPO advantages [N, G] of N groups of G rewards: each reward minus its group's mean, over
    norm="group": the group's own std + 1e-4 (unbiased, like torch.std; the paper, the release);
    norm="none":  nothing (Dr. GRPO, Liu et al. 2025);
    norm="batch": batch_std + 1e-4, the std of all rewards of the step (every rank's groups).
    A group whose rewards are all equal has nothing to learn from and gets exactly 0.

    Under "group", A is unchanged by a positive affine change of a group's rewards, so a bonus paid
    to exactly the correct answers of a 0/1-accuracy group (R = c + (1 + alpha) * acc) changes
    nothing.
    >>> group_advantages(torch.tensor([[1.0, 0.0], [2.0, 2.0]]))
    tensor([[ 0.7070, -0.7070],
            [ 0.0000,  0.0000]])
    >>> group_advantages(torch.tensor([[1.3, 0.0], [2.0, 2.0]]), "none")
    tensor([[ 0.6500, -0.6500],
            [ 0.0000,  0.0000]])
    """
    centred = rewards - rewards.mean(dim=1, keepdim=True)              # [N, G]
    if norm == "group":
        scale = rewards.std(dim=1, keepdim=True) + 1e-4                # [N, 1]
    elif norm == "none":
        scale = torch.ones_like(centred[:, :1])
    elif norm == "batch":
        scale = torch.full_like(centred[:, :1], batch_std + 1e-4)
    else:
        raise ValueError(f"advantage_norm must be 'group', 'none' or 'batch', got {norm!r}")
    return (centred / scale).masked_fill(zero_spread(rewards), 0.0)  # [N, G]


def masked_mean(x, mask, dim=None):
    """Mean of x where mask is 1."""
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def policy_loss(logp, logp_old, logp_ref, advantages, mask, eps=0.2, beta=0.04,
                loss_agg="seq-mean"):
    """The T-GRPO objective (SPEC 3) over a set of completions; returns (loss, stats).

    logp, logp_old, logp_ref, mask: [R, T]; advantages: [R]; logp_ref None when beta == 0.
    Per token: -(min(ratio*A, clip(ratio, 1-eps, 1+eps)*A) - beta*k3), k3 = e^x - x - 1 with
    x = logp_ref - logp. "seq-mean": mean over each completion's tokens, then over completions;
    "token-mean": all tokens weigh the same.
    Example: one token, logp = logp_old, A = 1, no KL: loss = -1.
    stats: "kl" and the shares of tokens where the clip binds, "clip_low" (ratio < 1 - eps, A < 0),
    "clip_high" (ratio > 1 + eps, A > 0) and their sum "clip_frac" (token means).
    """
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - logp_old)                           # [R, T]
    A = advantages[:, None]                                      # [R, 1]
    surr = torch.min(ratio * A, torch.clamp(ratio, 1 - eps, 1 + eps) * A)  # [R, T]
    if logp_ref is not None:
        x = torch.clamp(logp_ref - logp, -10, 10)
        kl = torch.exp(x) - x - 1                                # [R, T], >= 0
    else:
        kl = torch.zeros_like(logp)
    per_token = -(surr - beta * kl)                              # [R, T]
    if loss_agg == "seq-mean":
        loss = masked_mean(per_token, mask, dim=1).mean()
    elif loss_agg == "token-mean":
        loss = masked_mean(per_token, mask)
    else:
        raise ValueError(f"loss_agg must be 'seq-mean' or 'token-mean', got {loss_agg!r}")
    # where the clip binds (its gradient is 0), as TRL and verl count it: the ratio left the range
    # on the side the advantage pushes it to; a ratio outside on the other side still learns
    clip_low = ((ratio < 1 - eps) & (A < 0)).to(mask.dtype)     # [R, T]
    clip_high = ((ratio > 1 + eps) & (A > 0)).to(mask.dtype)    # [R, T]
    stats = {"kl": masked_mean(kl, mask).item(), "clip_low": masked_mean(clip_low, mask).item(),
             "clip_high": masked_mean(clip_high, mask).item()}
    stats["clip_frac"] = stats["clip_low"] + stats["clip_high"]
    return loss, stats


def score_group(completions, solution, problem_type, lengths, shuffled_completions=None):
    """Rewards of one prompt group (SPEC 2): returns per-completion parts and group statistics.

    completions: G decoded ordered answers; lengths: their token counts incl. the stop token;
    shuffled_completions: the G~ answers to the shuffled video (None: image or temporal off).
    """
    acc = [accuracy_reward(c, solution, problem_type) for c in completions]
    fmt = [format_reward(c) for c in completions]
    if shuffled_completions:
        acc_shuffled = [accuracy_reward(c, solution, problem_type) for c in shuffled_completions]
        tb = temporal_bonus(acc, acc_shuffled, alpha=alpha, mu=mu, threshold=correct_threshold,
                            share=temporal_share)
        p = group_share(acc, correct_threshold, temporal_share)
        p_shuffled = group_share(acc_shuffled, correct_threshold, temporal_share)
    else:
        tb, p, p_shuffled = [0.0] * len(acc), None, None
    lb = length_bonus(acc, lengths, omega=omega, l_min=l_min, l_max=l_max,
                      threshold=correct_threshold, min_correct=length_min_correct)
    total = [a + f + t + l for a, f, t, l in zip(acc, fmt, tb, lb)]
    return {"accuracy": acc, "format": fmt, "temporal": tb, "length": lb, "total": total,
            "p_ordered": p, "p_shuffled": p_shuffled}


def bonus_moved(scores, norm="group", batch_std=None):
    """Per group of score_group's output: did the temporal bonus change its advantages (by > 1e-3)?
    Under "group" only where the bonus breaks the affine map (continuous accuracies, format or
    length differences); under "none" and "batch" in every group it is paid to and that has a
    spread. The same batch std on both sides: the question is about each group, not the step's
    scale."""
    with_bonus = torch.tensor([s["total"] for s in scores])                          # [N, G]
    without = torch.tensor([[a + f + l for a, f, l in zip(s["accuracy"], s["format"], s["length"])]
                            for s in scores])                                         # [N, G]
    diff = (group_advantages(with_bonus, norm, batch_std)
            - group_advantages(without, norm, batch_std))                            # [N, G]
    return (diff.abs().amax(dim=1) > 1e-3).tolist()                                   # [N]


def check_knobs(cfg):
    """Refuse T-GRPO settings that cannot train as meant, naming the knob. E.g. G = 1: every
    advantage is 0 and the run would silently train on the KL term alone."""
    rules = [("G", cfg["G"] >= 2, "at least 2 completions per group: advantages compare them"),
             ("G_shuffled", not cfg["temporal"] or cfg["G_shuffled"] >= 1,
              "at least 1 when temporal=True (p~ is their share correct)"),
             ("mu", cfg["mu"] >= 0, ">= 0 (p >= mu * p~)"),
             ("alpha", cfg["alpha"] >= 0, ">= 0 (a bonus)"),
             ("omega", cfg["omega"] >= 0, ">= 0 (a bonus)"),
             ("l_max", 0 <= cfg["l_min"] <= cfg["l_max"], ">= l_min >= 0"),
             ("beta", cfg["beta"] >= 0, ">= 0 (0 skips the reference)"),
             ("eps", cfg["eps"] > 0, "> 0 (the clip range [1 - eps, 1 + eps])"),
             ("num_iterations", cfg["num_iterations"] >= 1, ">= 1"),
             ("temperature", cfg["temperature"] > 0, "> 0 (sampling; logits are divided by it)"),
             ("top_p", 0 < cfg["top_p"] <= 1, "in (0, 1]"),
             ("max_new_tokens", cfg["max_new_tokens"] >= 1, ">= 1"),
             ("prompts_per_rank", cfg["prompts_per_rank"] >= 1, ">= 1"),
             ("micro_batch_size", cfg["micro_batch_size"] >= 1, ">= 1"),
             ("correct_threshold", 0 <= cfg["correct_threshold"] < 1, "in [0, 1)"),
             ("temporal_share", cfg["temporal_share"] in ("correct", "mean"),
              "'correct' or 'mean'"),
             ("shuffle_level", cfg["shuffle_level"] in ("frame", "patch"), "'frame' or 'patch'"),
             ("loss_agg", cfg["loss_agg"] in ("seq-mean", "token-mean"),
              "'seq-mean' or 'token-mean'"),
             ("advantage_norm", cfg["advantage_norm"] in ("group", "none", "batch"),
              "'group', 'none' or 'batch'")]
    for knob, ok, want in rules:
        if not ok:
            raise ValueError(f"{knob}={cfg[knob]!r}: must be {want}")


# ---------------------------------------------------------------------------- the phases of a step
def step_rows(rows, step, world_size, rank):
    """The rows this rank trains on at `step`: a fresh seeded permutation each epoch, rank r taking
    every world_size-th prompt of the step's global batch. Pure function of step: exact resume."""
    per_step = prompts_per_rank * world_size
    out = []
    for i in range(step * per_step + rank, (step + 1) * per_step, world_size):
        epoch, pos = divmod(i, len(rows))
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed + epoch))
        out.append(rows[order[pos].item()])
    return out


def encode(row, tokenizer, media):
    """A row's prompt: (frames [T, 3, H, W], seconds per patch, prompt text, visual), or None when
    it is over max_prompt_length. Raises data.MediaError when its media cannot be loaded."""
    family = media.get("family", data.QWEN2_5_VL)
    frames, spt = data.load_frames(row, **media)                        # [T, 3, H, W]
    text = data.prompt_text(row, question_template, family)
    visual = data.make_visual(frames, spt, family)
    fits = data.prompt_length(text, visual, tokenizer) <= max_prompt_length
    return (frames, spt, text, visual) if fits else None


def step_inputs(step, rows, tokenizer, media, rank, world):
    """1. The prompts of a step: each row's, and for a video in temporal mode a second one whose
    frames are shuffled (the same text, the same number of visual tokens). A row whose media fail to
    load or whose prompt is too long is replaced by a seeded random row (common.encode_rows). A pure
    function of (seed, step, rank): resume is exact, and data.prefetch prepares step s+1 while the
    model works.

    Returns {"groups": [{"row", "ordered": prompt index, "shuffled": prompt index or None}],
             "batch": collate() of the prompts, "n": samples per prompt,
             "counts": encode_rows' counts}.
    """
    gen = torch.Generator().manual_seed(common.step_seed(seed, step, rank))
    used, encoded, counts = common.encode_rows(step_rows(rows, step, world, rank), rows,
                                               lambda row: encode(row, tokenizer, media), gen)
    prompts, visuals, n, groups = [], [], [], []
    family = media.get("family", data.QWEN2_5_VL)
    for row, (frames, spt, text, visual) in zip(used, encoded):
        groups.append({"row": row, "ordered": len(prompts), "shuffled": None})
        prompts.append(text), visuals.append(visual), n.append(G)
        if temporal and row["data_type"] == "video":
            shuffled, time = data.shuffle_video(frames, spt, gen, shuffle_level,
                                                shuffle_timestamps)  # [T, 3, H, W]
            groups[-1]["shuffled"] = len(prompts)
            prompts.append(text), visuals.append(data.make_visual(shuffled, time, family))
            n.append(G_shuffled)
    batch = data.collate(prompts, visuals, tokenizer)
    return {"groups": groups, "batch": batch, "n": n, "counts": counts}


def rollout(accelerator, policy, batch, n, generator, stop_ids):
    """2. n[p] sampled completions of prompt p from the current policy (model.generate: each prompt
    prefilled once, finished rows leave the batch), with the weights gathered once if sharded."""
    hf = accelerator.unwrap_model(policy).hf
    with common.full_weights(accelerator, policy), accelerator.autocast():
        return engine.generate(hf, batch, n, max_new_tokens, temperature=temperature, top_p=top_p,
                               generator=generator, stop_ids=stop_ids)


def score(groups, out, texts):
    """3. Rewards of every group (score_group) -> (scores, the completions to train on: the ordered
    ones, group after group, as {"prompt_index", "ids", "lengths", "mask", "truncated"})."""
    prompt_index = out["prompt_index"].tolist()
    rows_of = lambda p: [i for i, q in enumerate(prompt_index) if q == p]
    scores, train = [], []
    for g in groups:
        ordered = rows_of(g["ordered"])
        shuffled = [texts[i] for i in rows_of(g["shuffled"])] if g["shuffled"] is not None else None
        lengths = [out["lengths"][i].item() for i in ordered]
        scores.append(score_group([texts[i] for i in ordered], g["row"]["solution"],
                                  g["row"]["problem_type"], lengths, shuffled))
        train += ordered
    idx = torch.tensor(train, device=out["lengths"].device)
    ids, lengths = out["completion_ids"][idx], out["lengths"][idx]                 # [R, T], [R]
    mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]  # [R, T]
    completions = {"prompt_index": out["prompt_index"][idx], "ids": ids, "lengths": lengths,
                   "mask": mask, "truncated": out["truncated"][idx]}
    return scores, completions


def advantages_of(accelerator, scores):
    """4. Advantages [N*G] of this rank's groups (group_advantages); for advantage_norm="batch" the
    std is over the rewards of every rank's groups. Returns (advantages, that std or None)."""
    totals = torch.tensor([s["total"] for s in scores])                           # [N, G]
    batch_std = None
    if advantage_norm == "batch":  # every rank has the same number of groups: a plain [world*N, G]
        batch_std = accelerator.gather(totals.to(accelerator.device)).std().item()
    advantages = group_advantages(totals, advantage_norm, batch_std).flatten()     # [N*G]
    return advantages.to(accelerator.device), batch_std


def old_and_reference_logprobs(accelerator, policy, ref, batch, c):
    """5. [R, T] log-probs of the completions c under the sampling policy (None when num_iterations
    is 1: it is the detached current policy) and under the reference (None when beta is 0), in the
    precision of the updates. With LoRA and no `ref`, the reference is the policy with its adapters
    off."""
    args = (batch, c["prompt_index"], c["ids"], c["lengths"])
    kw = dict(temperature=temperature, micro_batch_size=micro_batch_size)
    logp_old = logp_ref = None
    with torch.no_grad(), accelerator.autocast():
        if num_iterations > 1:
            logp_old = engine.token_logprobs(policy, *args, **kw)
        if ref is not None:
            logp_ref = engine.token_logprobs(ref, *args, **kw)
        elif beta > 0:
            with accelerator.unwrap_model(policy).hf.disable_adapter():
                logp_ref = engine.token_logprobs(policy, *args, **kw)
    return logp_old, logp_ref


def update(accelerator, policy, optimizer, scheduler, batch, c, advantages, logp_old, logp_ref):
    """6. num_iterations optimizer steps on policy_loss over the completions c, in micro-batches
    whose losses are weighted so that their gradients sum to the whole batch's. "seq-mean" averages
    equal-sized per-rank means (DDP averages over ranks); "token-mean" weighs by the tokens of all
    ranks. Returns {"loss", "kl", "clip_frac", "clip_low", "clip_high" (means over the
    iterations), "grad_norm" (the last)}.
    """
    R = len(advantages)
    n_tokens = accelerator.reduce(c["mask"].sum(), "sum").item() / accelerator.num_processes
    chunks = [slice(i, i + micro_batch_size) for i in range(0, R, micro_batch_size)]
    stats = dict.fromkeys(["loss", "kl", "clip_frac", "clip_low", "clip_high"], 0.0)
    for _ in range(num_iterations):
        for j, sl in enumerate(chunks):
            with common.sync_if_last(accelerator, policy, j, len(chunks)), accelerator.autocast():
                logp = engine.token_logprobs(policy, batch, c["prompt_index"][sl], c["ids"][sl],
                                             c["lengths"][sl], temperature=temperature)  # [r, T]
                old = logp.detach() if logp_old is None else logp_old[sl]
                ref = None if logp_ref is None else logp_ref[sl]
                loss, st = policy_loss(logp, old, ref, advantages[sl], c["mask"][sl], eps=eps,
                                       beta=beta, loss_agg=loss_agg)
                if loss_agg == "token-mean":
                    weight = c["mask"][sl].sum().item() / n_tokens
                else:
                    weight = len(logp) / R
                accelerator.backward(loss * weight)
            for k, v in {**st, "loss": loss.item()}.items():
                stats[k] += v * weight / num_iterations
        stats["grad_norm"] = common.optimizer_step(accelerator, policy, optimizer, scheduler,
                                                   grad_clip)
    return stats


def step_metrics(accelerator, policy, inputs, scores, c, stats, batch_std, rollout_tokens, times):
    """The step's numbers: means over this rank's groups, then over ranks."""
    R, world = len(c["lengths"]), accelerator.num_processes
    flat = lambda key: sum(x for s in scores for x in s[key]) / R
    video = [s for s in scores if s["p_ordered"] is not None]
    moved = bonus_moved(scores, advantage_norm, batch_std)
    moved = [m for s, m in zip(scores, moved) if s["p_ordered"] is not None]
    per_video = lambda xs: sum(xs) / len(video) if video else float("nan")
    totals = torch.tensor([s["total"] for s in scores])                            # [N, G]
    local = {"reward": flat("total"), "reward_accuracy": flat("accuracy"),
             "reward_format": flat("format"), "reward_temporal": flat("temporal"),
             "reward_length": flat("length"),
             "p_ordered": per_video(s["p_ordered"] for s in video),
             "p_shuffled": per_video(s["p_shuffled"] for s in video),
             "temporal_bonus_rate": per_video(any(s["temporal"]) for s in video),
             "temporal_bonus_moved": per_video(moved),
             "zero_spread_groups": zero_spread(totals).float().mean().item(),
             "kl": stats["kl"], "clip_frac": stats["clip_frac"], "clip_low": stats["clip_low"],
             "clip_high": stats["clip_high"], "loss": stats["loss"],
             "completion_len": c["lengths"].float().mean().item(),
             "truncated": c["truncated"].float().mean().item(),
             "rollout_tok_s": rollout_tokens / times["rollout"]}
    keys = sorted(local)
    device = accelerator.device
    mean = accelerator.reduce(torch.tensor([local[k] for k in keys], device=device), "mean")
    metrics = dict(zip(keys, mean.tolist()))
    metrics["rollout_tok_s"] *= world  # throughput of all ranks together
    # which rows each rank trained on, and a weight checksum per rank (ranks must stay identical)
    ids = torch.tensor([g["row"]["problem_id"] for g in inputs["groups"]], device=device)
    metrics["problem_ids"] = accelerator.gather(ids).view(world, -1).tolist()
    if accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU,
                                        DistributedType.MULTI_CPU):  # replicated weights only
        checksum = sum(p.detach().double().sum() for p in policy.parameters())
        metrics["weight_checksums"] = accelerator.gather(checksum[None]).tolist()
    metrics["completion_len_max"] = accelerator.gather(c["lengths"].max()[None]).max().item()
    metrics["grad_norm"] = stats["grad_norm"]
    metrics.update({f"t_{k}": v for k, v in times.items()})
    return metrics


def log_line(m):
    """The step's line: reward parts, p and p~, zero-spread share, KL, the clip's binding shares
    (low/high), lengths, speed."""
    return (f"step {m['step']:4d} | R {m['reward']:.3f} acc {m['reward_accuracy']:.3f} "
            f"fmt {m['reward_format']:.3f} tb {m['reward_temporal']:.3f} "
            f"len {m['reward_length']:.3f} | p {m['p_ordered']:.2f} p~ {m['p_shuffled']:.2f} "
            f"zero-spread {m['zero_spread_groups']:.2f} | kl {m['kl']:.4f} "
            f"clip {m['clip_low']:.3f}/{m['clip_high']:.3f} | len {m['completion_len']:.0f}/"
            f"{m['completion_len_max']:.0f} trunc {m['truncated']:.2f} "
            f"bad media {m['bad_media']} | {m['rollout_tok_s']:.0f} tok/s | {m['t_step']:.1f}s "
            f"(media {m['t_media']:.1f} roll {m['t_rollout']:.1f} rew {m['t_reward']:.2f} "
            f"lp {m['t_logprob']:.1f} upd {m['t_update']:.1f})")


def write_samples(step, inputs, scores, out, texts):
    """Append the first group's question, truth and two of its answers to out_dir/samples.txt."""
    g, s = inputs["groups"][0], scores[0]
    rows = [i for i, p in enumerate(out["prompt_index"].tolist()) if p == g["ordered"]][:2]
    with open(os.path.join(out_dir, "samples.txt"), "a") as f:
        f.write(f"=== step {step} | {g['row']['problem']} | truth {g['row']['solution']}\n")
        f.writelines(f"--- reward {s['total'][k]:.2f}\n{texts[i]}\n" for k, i in enumerate(rows))


def main():
    cfg = {k: globals()[k] for k in config}  # tests set the globals directly
    check_knobs(cfg)
    accelerator = common.setup(seed, log_with)
    rank, world, master, device = (accelerator.process_index, accelerator.num_processes,
                                   accelerator.is_main_process, accelerator.device)
    if master:
        print("config:", cfg)
    path = common.resolve_model_path(model_path)  # the reference too, also on resume
    if master:
        print(f"policy and reference start from {path}")
    hf, tokenizer = common.load_policy(accelerator, path, gradient_checkpointing, lora_rank,
                                       lora_alpha, lora_dropout, lora_target)
    ref = None
    if beta > 0 and not lora_rank:  # with LoRA the reference is the policy with its adapters off
        ref, _ = engine.load_model(path, dtype=common.compute_dtype(accelerator), device=device)
        ref = engine.VisionOnceLM(ref.requires_grad_(False).eval(), logprob_chunk)
    policy = engine.VisionOnceLM(hf, logprob_chunk)
    optimizer, scheduler = common.make_optimizer(policy, lr, adam_betas, adam_eps, weight_decay,
                                                 max_steps * num_iterations, warmup_steps)
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    rows = data.load_rows(os.path.join(data_dir, train_file), data_types=data_types)
    state = common.resume_state(accelerator, policy, resume, out_dir)
    skipped = {k: state.get(k, 0) for k in ("skipped_prompts", "skipped_updates")}
    metrics_log, bad_media = common.open_logs(accelerator, "tgrpo", cfg, out_dir,
                                              max_bad_media_share, state)
    if master:
        print(f"{len(rows)} rows, {world} process(es), {prompts_per_rank} prompt(s) per rank")
    stop_ids = engine.stop_token_ids(tokenizer)
    media = data.media_settings(cfg, families.of(hf.config))

    prepared = data.prefetch(lambda s: step_inputs(s, rows, tokenizer, media, rank, world),
                             range(state["step"], max_steps))
    for step in range(state["step"], max_steps):
        t0, times = time.time(), {}
        with common.timer(times, "media"):  # ~0 while decoding keeps up with the model
            inputs = next(prepared)                                                  # 1. prompts
        counts = inputs["counts"]
        skipped["skipped_prompts"] += counts["too_long"]
        bad_media.update(step + 1, counts["bad"], counts["read"])  # stops past max_bad_media_share
        batch = common.to_device(inputs["batch"], device)
        gen = torch.Generator(device=device).manual_seed(common.step_seed(seed, step, rank))
        with common.timer(times, "rollout"):
            out = rollout(accelerator, policy, batch, inputs["n"], gen, stop_ids)  # 2. samples
        texts = engine.completion_texts(tokenizer, out["completion_ids"])  # after the prompt's prefill
        with common.timer(times, "reward"):
            scores, c = score(inputs["groups"], out, texts)                      # 3. rewards
            advantages, batch_std = advantages_of(accelerator, scores)              # 4. per group
        with common.timer(times, "logprob"):
            logp_old, logp_ref = old_and_reference_logprobs(accelerator, policy, ref,  # 5.
                                                            batch, c)
        with common.timer(times, "update"):
            stats = update(accelerator, policy, optimizer, scheduler, batch, c, advantages,  # 6.
                           logp_old, logp_ref)
        skipped["skipped_updates"] += not math.isfinite(stats["grad_norm"])

        times["step"] = time.time() - t0
        metrics = step_metrics(accelerator, policy, inputs, scores, c, stats, batch_std,
                               out["lengths"].sum().item(), times)
        metrics.update(step=step + 1, lr=scheduler.get_last_lr()[0], bad_media=bad_media.bad,
                       **skipped)
        metrics_log.log(metrics)
        if master:
            print(log_line(metrics))
            if sample_every and (step + 1) % sample_every == 0:
                write_samples(step + 1, inputs, scores, out, texts)
        if (step + 1) % save_every == 0 or step + 1 == max_steps:
            common.save_checkpoint(accelerator, policy, tokenizer, out_dir, step + 1,
                                   {**skipped, "bad_media_state": bad_media.state(), "config": cfg},
                                   keep_last=keep_last)
    accelerator.end_training()


if __name__ == "__main__":
    main()
