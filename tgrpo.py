"""
T-GRPO: Temporal Group Relative Policy Optimization (Video-R1, Feng et al. 2025, arXiv 2503.21776).

GRPO samples a group of answers per question and pushes up the better-than-average ones. T-GRPO adds
one question to the reward: did the model need the frame order? For each video it also samples
answers from the same frames in a shuffled order; if the ordered answers are correct at least as
often as the shuffled ones (p >= mu * p~), every correct ordered answer earns a bonus alpha.

CPU demo (tiny model on the synthetic demo world; run `python sft.py` first):
    python tgrpo.py
Paper run, Qwen2.5-VL-7B after the SFT cold start, 8 GPUs:
    accelerate launch --config_file config/accelerate_zero2.yaml tgrpo.py config/tgrpo_7b.py
Ablations: config/tgrpo_grpo.py (temporal off), config/tgrpo_zero.py (no SFT),
config/tgrpo_noimage.py (video rows only), config/tgrpo_release.py (the authors' release).
LoRA (peft) instead of full fine-tuning, 1 to 8 GPUs; the reference is then the same weights with
the adapters off, no second model:
    accelerate launch --config_file config/accelerate_ddp.yaml tgrpo.py config/tgrpo_7b.py config/tgrpo_7b_lora.py

Per step and rank: take `prompts_per_rank` rows; sample G ordered completions (+ G_shuffled
shuffled ones for videos); score them; per prompt group compute p, p~, the temporal and length
bonuses and the advantages; then num_iterations updates of the clipped surrogate with a k3 KL
penalty to the frozen starting model. Simplifications, on purpose: rollouts come from our own
KV-cache engine in model.py (no vLLM); the reference model is a full copy on every GPU (unless LoRA).
"""
import contextlib
import math
import os
import time

import torch

# model and data
model_path = "out/sft_demo"            # HF checkpoint, or a training out_dir (its newest step_*)
data_dir = "demo/world"                 # dataset root: media paths in the json are relative to it
train_file = "rl.json"                  # Video-R1-260k.json for the paper run
data_types = None                       # ["video"]: the paper's "no image data" ablation
out_dir = "out/tgrpo_demo"
# vision (SPEC 1.3; the demo world uses tiny frames)
max_frames = 8                          # 16 in the paper
fps = 2.0
video_min_pixels = 112 * 112            # demo: 112x112 frames, 64 tokens a video; paper 128*28*28
video_max_pixels = 112 * 112
image_min_pixels = 112 * 112            # demo: 16 tokens an image; paper 4*28*28 .. 256*28*28
image_max_pixels = 112 * 112            # paper: 256*28*28
shuffle_level = "frame"                 # "frame" (release) or "patch" (whole 2-frame patches)
question_template = "train"
max_prompt_length = 4096                # longer prompts are skipped, counted and replaced, never truncated
max_bad_media_share = 0.01              # rows whose media fail to load are replaced; stop past this share of them
# T-GRPO (SPEC 2, 3)
G = 8                                   # ordered completions per prompt
G_shuffled = 4                          # shuffled-frame completions per video prompt
temporal = True                         # False: plain GRPO
alpha = 0.3                             # temporal bonus
mu = 1.0                                # p >= mu * p~ (release: 0.8)
temporal_share = "correct"              # "correct": share of correct answers; "mean": release's mean accuracy
correct_threshold = 0.1                 # accuracy above this counts as correct for the bonuses
omega = 0.2                             # length bonus
l_min = 320                             # length bonus window, in tokens incl. the stop token
l_max = 512
length_min_correct = 1                  # release: 2 correct answers needed in the group
beta = 0.04                             # KL penalty (k3) to the reference model; 0 skips the reference
eps = 0.2                               # PPO clip range
num_iterations = 4                      # clipped updates per batch of rollouts (paper, release: 1, ratio == 1)
loss_agg = "seq-mean"                   # "seq-mean" (paper, release) or "token-mean"
advantage_norm = "group"                # "group" (paper, release), "none" (Dr. GRPO) or "batch" (see group_advantages)
temperature = 1.0
top_p = 0.95
max_new_tokens = 64                     # paper: 768; demo answers are ~30 tokens
# LoRA through peft (imported only when on): None trains every weight (the paper)
lora_rank = None                        # e.g. 64: low-rank adapters on lora_target, every other weight frozen
lora_alpha = 128                        # the adapters' output is scaled by lora_alpha / lora_rank
lora_dropout = 0.0                      # 0: dropout would make logp differ from the sampling policy's
lora_target = ["language"]              # "language": LM attention + MLP projections; + "vision": the vision tower
# optimisation
max_steps = 300                         # paper: ~1k steps on 8 GPUs
prompts_per_rank = 8                    # the release: exactly 1; the demo uses 8 for less noise
micro_batch_size = 8                    # completions per forward/backward
lr = 3e-4                               # paper: 1e-6; a tiny model needs far more
weight_decay = 0.01
adam_betas = (0.9, 0.999)
adam_eps = 1e-8
warmup_steps = 10
grad_clip = 5.0
gradient_checkpointing = False          # recompute activations in the backward pass (paper: True; slower)
seed = 42
# logging and checkpoints
log_with = None                         # "wandb", "tensorboard", or a list of them
sample_every = 25                       # dump prompts and completions to out_dir/samples.txt
save_every = 1000                       # the last step is always saved
keep_last = 2
resume = ""                             # "latest": newest checkpoint in out_dir; or a checkpoint path

from configurator import configure

config = configure(globals(), None if __name__ == "__main__" else [])  # tests import the defaults

from accelerate import Accelerator
from accelerate.utils import DistributedType

import data
import model as engine
from demo import ensure_demo_assets
from checkpoint import (BadMediaLog, MetricsLog, encode_or_replace, load_checkpoint, resolve_model_path,
                        resolve_resume, save_checkpoint)
from rewards import accuracy_reward, format_reward, group_share, length_bonus, temporal_bonus


def zero_spread(rewards):
    """[N, G] -> [N, 1] bool: groups whose rewards are all equal, so there is nothing to learn from them.
    Decided on the rewards, not on a computed std: in float32 the mean of eight 1.3s is off by one unit in
    the last place, and (R - mean) / (std + 1e-4) would give every answer -0.0012 instead of 0."""
    return (rewards == rewards[:, :1]).all(dim=1, keepdim=True)


def group_advantages(rewards, norm="group", batch_std=None):
    """GRPO advantages [N, G] of N groups of G rewards: each reward minus its group's mean, divided by
    norm="group": the group's own std + 1e-4 (unbiased, like torch.std; the paper and the release);
    norm="none":  nothing (Dr. GRPO, Liu et al. 2025);
    norm="batch": batch_std + 1e-4, the std of all rewards of the step (every rank's groups).
    A group whose rewards are all equal has nothing to learn from and gets exactly 0.

    Under "group", A is unchanged by a positive affine change of a group's rewards, so a bonus paid
    to exactly the correct answers of a 0/1-accuracy group (R = c + (1 + alpha) * acc) changes nothing.
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


def policy_loss(logp, logp_old, logp_ref, advantages, mask, eps=0.2, beta=0.04, loss_agg="seq-mean"):
    """The T-GRPO objective (SPEC 3) over a set of completions; returns (loss, stats).

    logp, logp_old, logp_ref, mask: [R, T]; advantages: [R]; logp_ref None when beta == 0.
    Per token: -(min(ratio*A, clip(ratio, 1-eps, 1+eps)*A) - beta*k3), k3 = e^x - x - 1 with
    x = logp_ref - logp. "seq-mean": mean over each completion's tokens, then over completions;
    "token-mean": all tokens weigh the same.
    Example: one token, logp = logp_old, A = 1, no KL: loss = -1.
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
    clipped = ((ratio - 1).abs() > eps).to(mask.dtype)
    stats = {"kl": masked_mean(kl, mask).item(), "clip_frac": masked_mean(clipped, mask).item()}
    return loss, stats


def bonus_moved(scores, norm="group", batch_std=None):
    """Per group of score_group's output: did the temporal bonus change its advantages (by more than 1e-3)?
    Under "group" only where the bonus breaks the affine map (continuous accuracies, format or length
    differences); under "none" and "batch" in every group it is paid to and that has a spread. The same
    batch std on both sides: the question is about each group, not the step's scale."""
    with_bonus = torch.tensor([s["total"] for s in scores])                                        # [N, G]
    without = torch.tensor([[a + f + l for a, f, l in zip(s["accuracy"], s["format"], s["length"])] for s in scores])
    diff = group_advantages(with_bonus, norm, batch_std) - group_advantages(without, norm, batch_std)
    return (diff.abs().amax(dim=1) > 1e-3).tolist()                                                # [N]


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


@contextlib.contextmanager
def full_weights(accelerator, policy):
    """Gather sharded weights once for the whole rollout, so sampling is not a collective per token."""
    if (accelerator.distributed_type == DistributedType.DEEPSPEED
            and accelerator.state.deepspeed_plugin.zero_stage == 3):
        import deepspeed
        with deepspeed.zero.GatheredParameters(list(policy.parameters())):
            yield
    elif accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        with FSDP.summon_full_params(policy, writeback=False, recurse=True):
            yield
    else:
        yield


def lr_lambda(update):
    """Linear warmup, then cosine decay to 0 over all optimizer updates."""
    total = max_steps * num_iterations
    if update < warmup_steps:
        return (update + 1) / warmup_steps
    progress = (update - warmup_steps) / max(1, total - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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


def main():
    # the schedule counts optimizer updates, not per-process batches
    accelerator = Accelerator(log_with=log_with, step_scheduler_with_optimizer=False)
    rank, world = accelerator.process_index, accelerator.num_processes
    master = accelerator.is_main_process
    device = accelerator.device
    torch.manual_seed(seed + rank)
    if master:
        print("config:", config)
        ensure_demo_assets(data_dir, model_path)
    accelerator.wait_for_everyone()

    # load: policy in fp32 (accelerate's bf16 autocast / DeepSpeed keep fp32 master weights, which
    # lr 1e-6 needs), reference in the compute dtype, frozen. With LoRA the frozen base is in the
    # compute dtype too, and it is the reference: the adapters switched off, no second copy
    path = resolve_model_path(model_path)  # also the reference model, on resume too
    if master:
        print(f"policy and reference start from {path}")
    compute_dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
    hf, tokenizer = engine.load_model(path, dtype=compute_dtype if lora_rank else torch.float32, device=device)
    if gradient_checkpointing:  # active in the updates only: generate() runs the model in eval mode
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    ref = None
    if beta > 0 and not lora_rank:  # with LoRA the reference is the same model with its adapters disabled
        ref, _ = engine.load_model(path, dtype=compute_dtype, device=device)
        ref.requires_grad_(False).eval()
    if lora_rank:
        hf = engine.add_lora(hf, lora_rank, lora_alpha, lora_dropout, lora_target)
    policy = engine.VisionOnceLM(hf)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, betas=adam_betas,
                                  eps=adam_eps, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)

    rows = data.load_rows(os.path.join(data_dir, train_file), data_types=data_types)
    stop_ids = engine.stop_token_ids(tokenizer)
    start_step, skipped_prompts, skipped_updates, bad_media_state = 0, 0, 0, None
    resume_path = resolve_resume(resume, out_dir)
    if resume_path:
        state = load_checkpoint(accelerator, policy, resume_path)
        start_step, skipped_prompts = state["step"], state["skipped_prompts"]
        skipped_updates = state["skipped_updates"]
        bad_media_state = state.get("bad_media_state")
        if master:
            print(f"resumed from {resume_path} at step {start_step}")
    if log_with:
        accelerator.init_trackers("tgrpo", config=config)
    metrics_log = MetricsLog(accelerator, out_dir, resume_step=start_step)
    bad_media = BadMediaLog(accelerator, out_dir, max_bad_media_share, resume_step=start_step, state=bad_media_state)
    if master:
        print(f"{len(rows)} rows, {world} process(es), {prompts_per_rank} prompt(s) per rank per step")

    def encode(row):
        """A row's model input: (frames, seconds per patch, prompt text, visual), or None when the prompt is over
        max_prompt_length. Raises data.MediaError when its media cannot be loaded."""
        frames, spt = data.load_frames(row, max_frames, fps, video_min_pixels, video_max_pixels,
                                       image_min_pixels, image_max_pixels)  # [T, 3, H, W]
        text = data.prompt_text(row, template=question_template)
        visual = data.make_visual(frames, spt)
        n_visual = int(visual["grid_thw"].prod()) // data.MERGE_SIZE ** 2
        fits = len(tokenizer(text).input_ids) - 1 + n_visual <= max_prompt_length
        return (frames, spt, text, visual) if fits else None

    def step_inputs(step):
        """1. inputs: one ordered prompt per row, plus a shuffled one per video in temporal mode. A row whose
        media fail to load or whose prompt is over max_prompt_length is skipped, counted and replaced by a
        seeded random row, so every rank keeps the same amount of work. A pure function of (seed, step, rank):
        resume stays exact, and a background thread prepares step s+1 while the model works on step s.
        Returns (groups, batch on the CPU, samples per prompt, rows too long, [(bad media path, reason)], rows read)."""
        data_gen = torch.Generator().manual_seed(seed + 1_000_003 * step + 7_919 * rank)
        prompts, visuals, n, groups, too_long, bad, n_read = [], [], [], [], 0, [], 0
        for row in step_rows(rows, step, world, rank):
            row, (frames, spt, text, visual), row_too_long, row_bad = encode_or_replace(row, rows, encode, data_gen)
            too_long += row_too_long
            bad += row_bad
            n_read += 1 + row_too_long + len(row_bad)
            group = {"row": row, "ordered": len(prompts), "shuffled": None}
            prompts.append(text), visuals.append(visual), n.append(G)
            if temporal and row["data_type"] == "video":
                shuffled = data.shuffle_frames(frames, data_gen, level=shuffle_level)
                group["shuffled"] = len(prompts)
                prompts.append(text), visuals.append(data.make_visual(shuffled, spt)), n.append(G_shuffled)
            groups.append(group)
        return groups, data.collate(prompts, visuals, tokenizer), n, too_long, bad, n_read

    inputs = data.prefetch(step_inputs, range(start_step, max_steps))
    for step in range(start_step, max_steps):
        t0 = time.time()
        groups, batch, n, too_long, bad, n_read = next(inputs)
        t_media = time.time() - t0  # waiting for this step's media: ~0 while decoding keeps up with the model
        sample_gen = torch.Generator(device=device).manual_seed(seed + 1_000_003 * step + 7_919 * rank)
        skipped_prompts += too_long
        bad_media.update(step + 1, bad, n_read)  # stops the run past max_bad_media_share
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

        # 2. rollouts: each distinct prompt (and video) is prefilled once and sampled n times
        t_roll = time.time()
        with full_weights(accelerator, policy), accelerator.autocast():
            out = engine.generate(accelerator.unwrap_model(policy).hf, batch, n, max_new_tokens,
                                  temperature=temperature, top_p=top_p, generator=sample_gen,
                                  stop_ids=stop_ids)
        t_roll = time.time() - t_roll
        completion_ids, lengths = out["completion_ids"], out["lengths"]  # [R, T], [R]
        texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)

        # 3. rewards and advantages, per prompt group
        t_rew = time.time()
        prompt_index = out["prompt_index"].tolist()
        rows_of = lambda p: [i for i, q in enumerate(prompt_index) if q == p]
        train_rows, scores = [], []
        for g in groups:
            ordered = rows_of(g["ordered"])
            shuffled = rows_of(g["shuffled"]) if g["shuffled"] is not None else None
            s = score_group([texts[i] for i in ordered], g["row"]["solution"], g["row"]["problem_type"],
                            [lengths[i].item() for i in ordered],
                            [texts[i] for i in shuffled] if shuffled else None)
            scores.append(s)
            train_rows += ordered
        totals = torch.tensor([s["total"] for s in scores])           # [N, G]
        # every rank has the same number of groups, so the gather is a plain [world*N, G]
        batch_std = accelerator.gather(totals.to(device)).std().item() if advantage_norm == "batch" else None
        advantages = group_advantages(totals, advantage_norm, batch_std).flatten().to(device)  # [N*G]
        t_rew = time.time() - t_rew

        # 4. log-probs of the sampling policy (only when it differs from the updated one) and the reference
        t_lp = time.time()
        idx = torch.tensor(train_rows, device=device)
        c_ids, c_len, c_prompt = completion_ids[idx], lengths[idx], out["prompt_index"][idx]
        mask = torch.arange(c_ids.shape[1], device=device)[None, :] < c_len[:, None]  # [R, T]
        lp_args = dict(temperature=temperature, micro_batch_size=micro_batch_size)
        with torch.no_grad(), accelerator.autocast():  # the same precision as the updates below
            logp_old = None
            if num_iterations > 1:
                logp_old = engine.token_logprobs(policy, batch, c_prompt, c_ids, c_len, **lp_args)
            logp_ref = None
            if ref is not None:
                logp_ref = engine.token_logprobs(ref, batch, c_prompt, c_ids, c_len, **lp_args)
            elif beta > 0:  # LoRA: the reference is the policy with its adapters switched off
                with accelerator.unwrap_model(policy).hf.disable_adapter():
                    logp_ref = engine.token_logprobs(policy, batch, c_prompt, c_ids, c_len, **lp_args)
        t_lp = time.time() - t_lp

        # 5. updates: micro-batches with gradient accumulation; each micro-batch's loss is scaled so
        # that the sum over micro-batches equals the loss over the whole batch
        t_upd = time.time()
        R = len(train_rows)
        # token-mean is over the tokens of all ranks (DDP averages gradients, hence the world factor);
        # seq-mean is a mean of equal-sized per-rank means already
        n_tokens = accelerator.reduce(mask.sum(), "sum").item() / world
        stats_sum, grad_norm = {"kl": 0.0, "clip_frac": 0.0, "loss": 0.0}, float("nan")
        for it in range(num_iterations):
            chunks = list(range(0, R, micro_batch_size))
            for j, start in enumerate(chunks):
                sl = slice(start, start + micro_batch_size)
                sync = contextlib.nullcontext() if j == len(chunks) - 1 else accelerator.no_sync(policy)
                with sync, accelerator.autocast():
                    logp = engine.token_logprobs(policy, batch, c_prompt[sl], c_ids[sl], c_len[sl],
                                                 temperature=temperature)
                    old = logp.detach() if logp_old is None else logp_old[sl]
                    loss, st = policy_loss(logp, old, None if logp_ref is None else logp_ref[sl],
                                           advantages[sl], mask[sl], eps=eps, beta=beta, loss_agg=loss_agg)
                    weight = (mask[sl].sum().item() / n_tokens) if loss_agg == "token-mean" else (logp.shape[0] / R)
                    accelerator.backward(loss * weight)
                for k in ("kl", "clip_frac"):
                    stats_sum[k] += st[k] * weight / num_iterations
                stats_sum["loss"] += loss.item() * weight / num_iterations
            grad_norm = float(accelerator.clip_grad_norm_(policy.parameters(), grad_clip))
            if not math.isfinite(grad_norm):
                skipped_updates += 1  # a non-finite loss or gradient: skip the update, keep going
            elif grad_norm > 0:  # 0: nothing to learn (every group had zero spread, no KL gradient), and AdamW
                optimizer.step()  # would still move the weights (weight decay, momentum of earlier steps)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        t_upd = time.time() - t_upd

        # 6. metrics: means over this rank's groups, then over ranks
        flat = lambda key: [x for s in scores for x in s[key]]
        video = [s for s in scores if s["p_ordered"] is not None]
        gen_tokens = lengths.sum().item()
        local = {
            "reward": sum(flat("total")) / R, "reward_accuracy": sum(flat("accuracy")) / R,
            "reward_format": sum(flat("format")) / R, "reward_temporal": sum(flat("temporal")) / R,
            "reward_length": sum(flat("length")) / R,
            "p_ordered": sum(s["p_ordered"] for s in video) / len(video) if video else float("nan"),
            "p_shuffled": sum(s["p_shuffled"] for s in video) / len(video) if video else float("nan"),
            "temporal_bonus_rate": sum(any(s["temporal"]) for s in video) / len(video) if video else float("nan"),
            "temporal_bonus_moved": sum(moved for s, moved in zip(scores, bonus_moved(scores, advantage_norm, batch_std))
                                        if s["p_ordered"] is not None) / len(video) if video else float("nan"),
            "zero_spread_groups": zero_spread(totals).float().mean().item(),
            "kl": stats_sum["kl"], "clip_frac": stats_sum["clip_frac"], "loss": stats_sum["loss"],
            "completion_len": c_len.float().mean().item(),
            "truncated": out["truncated"][idx].float().mean().item(),
            "rollout_tok_s": gen_tokens / t_roll,
        }
        keys = sorted(local)
        mean = accelerator.reduce(torch.tensor([local[k] for k in keys], device=device), "mean")
        metrics = {k: v for k, v in zip(keys, mean.tolist())}
        metrics["rollout_tok_s"] *= world  # throughput of all ranks together
        # which rows each rank trained on, and a weight checksum per rank (ranks must stay identical)
        ids = torch.tensor([g["row"]["problem_id"] for g in groups], device=device)
        metrics["problem_ids"] = accelerator.gather(ids).view(world, -1).tolist()
        if accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU,
                                            DistributedType.MULTI_CPU):  # replicated weights only
            checksum = sum(p.detach().double().sum() for p in policy.parameters())
            metrics["weight_checksums"] = accelerator.gather(checksum[None]).tolist()
        metrics.update(step=step + 1, lr=scheduler.get_last_lr()[0], grad_norm=grad_norm,
                       completion_len_max=accelerator.gather(c_len.max()[None]).max().item(),
                       skipped_prompts=skipped_prompts, skipped_updates=skipped_updates, bad_media=bad_media.bad,
                       t_media=t_media, t_rollout=t_roll, t_reward=t_rew, t_logprob=t_lp, t_update=t_upd,
                       t_step=time.time() - t0)
        metrics_log.log(metrics)
        if master:
            m = metrics
            print(f"step {m['step']:4d} | R {m['reward']:.3f} acc {m['reward_accuracy']:.3f} "
                  f"fmt {m['reward_format']:.3f} tb {m['reward_temporal']:.3f} len {m['reward_length']:.3f} "
                  f"| p {m['p_ordered']:.2f} p~ {m['p_shuffled']:.2f} zero-spread {m['zero_spread_groups']:.2f} "
                  f"| kl {m['kl']:.4f} clip {m['clip_frac']:.3f} | len {m['completion_len']:.0f}/"
                  f"{m['completion_len_max']:.0f} trunc {m['truncated']:.2f} bad media {m['bad_media']} "
                  f"| {m['rollout_tok_s']:.0f} tok/s "
                  f"| {m['t_step']:.1f}s (media {t_media:.1f} roll {t_roll:.1f} rew {t_rew:.2f} lp {t_lp:.1f} "
                  f"upd {t_upd:.1f})")
            if sample_every and (step + 1) % sample_every == 0:
                with open(os.path.join(out_dir, "samples.txt"), "a") as f:
                    g, s = groups[0], scores[0]
                    f.write(f"=== step {step + 1} | {g['row']['problem']} | truth {g['row']['solution']}\n")
                    for k, i in enumerate(rows_of(g["ordered"])[:2]):
                        f.write(f"--- reward {s['total'][k]:.2f}\n{texts[i]}\n")
        if (step + 1) % save_every == 0 or step + 1 == max_steps:
            save_checkpoint(accelerator, policy, tokenizer, out_dir, step + 1,
                            {"skipped_prompts": skipped_prompts, "skipped_updates": skipped_updates,
                             "bad_media_state": bad_media.state(), "config": config}, keep_last=keep_last)
    accelerator.end_training()


if __name__ == "__main__":
    main()
