"""
SFT cold start (Video-R1 stage 1): next-token cross-entropy on chain-of-thought answers, so the
model starts RL already writing <think>...</think><answer>...</answer>.

CPU demo (tiny random checkpoint on the synthetic demo world, a few minutes):
    python sft.py
Paper run, Qwen2.5-VL-7B-Instruct on Video-R1-COT-165k, 8 GPUs:
    accelerate launch --config_file config/accelerate_zero2.yaml sft.py config/sft_7b.py
LoRA (peft) instead of full fine-tuning, 1 to 8 GPUs:
    accelerate launch --config_file config/accelerate_ddp.yaml sft.py config/sft_7b.py config/sft_7b_lora.py

Labels are the assistant answer only (process + "\\n" + solution + <|im_end|>): the system text,
the question and every vision pad token are masked. The loss is the mean over all target tokens
of the step. Each sample's video is encoded once. Rows are batched by length so that padding does
not dominate, and the batch order is a pure function of (seed, step): an exact resume.
"""
import contextlib
import math
import os
import time

import torch

# model and data
model_path = "demo/tiny-qwen2.5-vl-warm" # the demo's warmed-up tiny VLM; Qwen/Qwen2.5-VL-7B-Instruct for the paper run
data_dir = "demo/world"
train_file = "cot.json"                 # Video-R1-COT-165k.json
train_rows = None                       # use only the first N rows of train_file that data_types keeps (None: all)
data_types = None                       # ["video"] to train on videos only
out_dir = "out/sft_demo"
val_rows = 32                           # held out from the train file for the validation loss
# vision (SPEC 1.3; the demo world uses tiny frames)
max_frames = 8                          # 16 in the paper
fps = 2.0
video_min_pixels = 112 * 112            # demo: 112x112 frames, 64 tokens a video; paper 128*28*28
video_max_pixels = 112 * 112
image_min_pixels = 112 * 112            # demo: 16 tokens an image; paper 4*28*28 .. 256*28*28
image_max_pixels = 112 * 112            # paper: 256*28*28
question_template = "train"             # "plain": the question alone (the demo's perception warm-up)
target_format = "cot"                   # "cot": process + "\n" + solution (SPEC 4); "answer": the answer text alone
max_length = 4096                       # longer samples are skipped, counted and replaced, never truncated
max_bad_media_share = 0.01              # rows whose media fail to load are replaced; stop past this share of them
train_prompt_tokens = False             # True: also train the question text (the release, roughly)
# LoRA through peft (imported only when on): None trains every weight (the paper)
lora_rank = None                        # e.g. 64: low-rank adapters on lora_target, every other weight frozen
lora_alpha = 128                        # the adapters' output is scaled by lora_alpha / lora_rank
lora_dropout = 0.05                     # on the adapters' input
lora_target = ["language"]              # "language": LM attention + MLP projections; + "vision": the vision tower
# optimisation
num_epochs = 12                         # paper: 1 (165k rows); config/sft_demo.py: 80 over 96 rows
max_steps = None                        # stop after this many steps (None: all num_epochs)
batch_size = 8                          # samples per rank per step
micro_batch_size = 8                    # samples per forward/backward
lr = 3e-3                               # paper: 1e-6; a tiny model needs much more
weight_decay = 0.01
adam_betas = (0.9, 0.999)
adam_eps = 1e-8
warmup_steps = 20
grad_clip = 5.0
gradient_checkpointing = False          # recompute activations in the backward pass (paper: True; slower)
seed = 42
# logging and checkpoints
log_with = None
eval_every = 60                         # validation loss every N steps (and at the end)
n_samples = 8                           # greedy answers on held-out rows at the end
sample_tokens = 256
save_every = 500
keep_last = 2
resume = ""                             # "latest": newest checkpoint in out_dir; or a checkpoint path

from configurator import configure

config = configure(globals(), None if __name__ == "__main__" else [])  # tests import the defaults

from accelerate import Accelerator

import data
import model as engine
from checkpoint import (BadMediaLog, MetricsLog, encode_or_replace, load_checkpoint, resolve_model_path,
                        resolve_resume, save_checkpoint)
from demo import ensure_demo_assets
from rewards import accuracy_reward, extract_answer, format_reward


def split_rows(rows):
    """(train, val): a seeded random `val_rows` of the file are held out."""
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    return [rows[i] for i in order[val_rows:]], [rows[i] for i in order[:val_rows]]


def length_batches(lengths, batch, epoch):
    """Global batches of row indices for one epoch: shuffle, sort by length inside windows of 16
    batches (so neighbours have similar lengths), cut into batches, shuffle the batch order.
    The last incomplete batch is dropped so every rank always has the same number of rows.
    E.g. lengths [5, 1, 9, 3] in batches of 2 give [[1, 3], [0, 2]] or [[0, 2], [1, 3]] (as indices).
    """
    gen = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    window = 16 * batch
    order = [i for w in range(0, len(order), window)
             for i in sorted(order[w:w + window], key=lambda i: lengths[i])]
    batches = [order[i:i + batch] for i in range(0, len(order) - batch + 1, batch)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def encode_row(row, tokenizer):
    """One sample -> (prompt text, visual, target ids), or None when longer than max_length; raises
    data.MediaError when its media cannot be loaded. With train_prompt_tokens the question text after the
    vision block moves into the target."""
    frames, spt = data.load_frames(row, max_frames, fps, video_min_pixels, video_max_pixels,
                                   image_min_pixels, image_max_pixels)
    visual = data.make_visual(frames, spt)
    answer = data.sft_target(row) if target_format == "cot" else extract_answer(row["solution"])
    prompt, target = data.prompt_text(row, template=question_template), answer + "<|im_end|>"
    if train_prompt_tokens:
        head, sep, tail = prompt.partition("<|vision_end|>")
        prompt, target = head + sep, tail + target
    target_ids = tokenizer(target, add_special_tokens=False).input_ids
    n = len(tokenizer(prompt).input_ids) - 1 + int(visual["grid_thw"].prod()) // data.MERGE_SIZE ** 2
    return None if n + len(target_ids) > max_length else (prompt, visual, target_ids)


def collate_targets(samples, tokenizer, device):
    """Encoded samples -> (prompt batch, target ids [B, T], target lengths [B]) for token_logprobs."""
    batch = data.collate([s[0] for s in samples], [s[1] for s in samples], tokenizer)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    T = max(len(s[2]) for s in samples)
    ids = torch.full((len(samples), T), tokenizer.pad_token_id, dtype=torch.long)  # [B, T]
    for i, s in enumerate(samples):
        ids[i, :len(s[2])] = torch.tensor(s[2])
    lengths = torch.tensor([len(s[2]) for s in samples])                        # [B]
    return batch, ids.to(device), lengths.to(device)


def target_nll(policy, encoded):
    """Summed negative log-likelihood of the targets of one collated micro-batch."""
    batch, ids, lengths = encoded
    prompt_index = torch.arange(ids.shape[0], device=ids.device)
    return -engine.token_logprobs(policy, batch, prompt_index, ids, lengths).sum()  # 0 past each length


def main():
    accelerator = Accelerator(log_with=log_with, step_scheduler_with_optimizer=False)
    rank, world, master, device = (accelerator.process_index, accelerator.num_processes,
                                   accelerator.is_main_process, accelerator.device)
    torch.manual_seed(seed + rank)
    if master:
        print("config:", config)
        ensure_demo_assets(data_dir, model_path)
    accelerator.wait_for_everyone()

    # LoRA's frozen base needs no fp32 master weights: it is held in the compute dtype
    bf16 = accelerator.mixed_precision == "bf16"
    hf, tokenizer = engine.load_model(resolve_model_path(model_path), device=device,
                                      dtype=torch.bfloat16 if lora_rank and bf16 else torch.float32)
    if gradient_checkpointing:
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if lora_rank:
        hf = engine.add_lora(hf, lora_rank, lora_alpha, lora_dropout, lora_target)
    rows = data.load_rows(os.path.join(data_dir, train_file), data_types=data_types, limit=train_rows,
                          require_process=target_format == "cot")
    train, val = split_rows(rows)
    # length-aware batching by a cheap proxy: modality first, then characters of question + answer
    lengths = [(r["data_type"], len(r["problem"]) + len(r.get("process", ""))) for r in train]
    skipped = 0
    steps_per_epoch = len(train) // (batch_size * world)
    total_steps = num_epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    if total_steps == 0:
        raise ValueError(f"{len(train)} training rows are fewer than one global batch of {batch_size * world}")
    if eval_every and val_rows % (world * micro_batch_size):
        # every rank must run the same number of validation forwards (DDP forwards are collective)
        raise ValueError(f"val_rows={val_rows} must be a multiple of processes x micro_batch_size = "
                         f"{world * micro_batch_size}")

    policy = engine.VisionOnceLM(hf)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, betas=adam_betas,
                                  eps=adam_eps, weight_decay=weight_decay)
    warm = lambda u: (u + 1) / warmup_steps if u < warmup_steps else \
        0.5 * (1 + math.cos(math.pi * min(1.0, (u - warmup_steps) / max(1, total_steps - warmup_steps))))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warm)
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)

    start_step, skipped_updates, bad_media_state = 0, 0, None
    resume_path = resolve_resume(resume, out_dir)
    if resume_path:
        state = load_checkpoint(accelerator, policy, resume_path)
        start_step, skipped_updates, skipped = state["step"], state["skipped_updates"], state["skipped_samples"]
        bad_media_state = state.get("bad_media_state")
    if log_with:
        accelerator.init_trackers("sft", config=config)
    metrics_log = MetricsLog(accelerator, out_dir, resume_step=start_step)
    bad_media = BadMediaLog(accelerator, out_dir, max_bad_media_share, resume_step=start_step, state=bad_media_state)
    encode = lambda row: encode_row(row, tokenizer)
    if master:
        print(f"{len(train)} train rows, {len(val)} held out, "
              f"{total_steps} steps of {batch_size} x {world} samples")

    def validate():
        """(mean NLL over the held-out targets, bad media, rows read); unusable held-out rows are replaced by
        other held-out rows, the same ones at every validation."""
        policy.eval()
        nll, count = torch.zeros((), device=device), torch.zeros((), device=device)
        gen, bad, n_read = torch.Generator().manual_seed(seed + rank), [], 0

        def encode_chunk(i):  # on the prefetch thread, chunk after chunk: `gen` draws in the same order
            samples, chunk_bad, chunk_read = [], [], 0
            for row in val[i:i + micro_batch_size]:
                _, e, too_long, row_bad = encode_or_replace(row, val, encode, gen)
                samples.append(e)
                chunk_bad, chunk_read = chunk_bad + row_bad, chunk_read + 1 + too_long + len(row_bad)
            return samples, chunk_bad, chunk_read

        with torch.no_grad():
            chunks = range(rank * micro_batch_size, len(val), world * micro_batch_size)
            for samples, chunk_bad, chunk_read in data.prefetch(encode_chunk, chunks):
                bad, n_read = bad + chunk_bad, n_read + chunk_read
                encoded = collate_targets(samples, tokenizer, device)
                nll, count = nll + target_nll(policy, encoded), count + encoded[2].sum()
        policy.train()
        return (accelerator.reduce(nll, "sum") / accelerator.reduce(count, "sum").clamp(min=1)).item(), bad, n_read

    def step_samples(step):
        """The step's encoded samples: a sample longer than max_length or whose media fail to load is skipped,
        counted, and replaced by a seeded random one. A pure function of (seed, step, rank): resume stays exact,
        and a background thread prepares step s+1 while the model works on step s.
        Returns (samples, samples too long, [(bad media path, reason)], rows read)."""
        epoch, j = divmod(step, steps_per_epoch)
        gen = torch.Generator().manual_seed(seed + 1_000_003 * step + 7_919 * rank)
        samples, too_long, bad, n_read = [], 0, [], 0
        for i in length_batches(lengths, batch_size * world, epoch)[j][rank::world]:
            _, e, row_too_long, row_bad = encode_or_replace(train[i], train, encode, gen)
            samples.append(e)
            too_long += row_too_long
            bad += row_bad
            n_read += 1 + row_too_long + len(row_bad)
        return samples, too_long, bad, n_read

    inputs = data.prefetch(step_samples, range(start_step, total_steps))
    for step in range(start_step, total_steps):
        t0 = time.time()
        epoch = step // steps_per_epoch
        samples, too_long, bad, n_read = next(inputs)
        t_media = time.time() - t0  # waiting for this step's media: ~0 while decoding keeps up with the model
        skipped += too_long
        chunks = [collate_targets(samples[i:i + micro_batch_size], tokenizer, device)
                  for i in range(0, len(samples), micro_batch_size)]
        # the loss is the mean over the target tokens of all ranks: DDP averages gradients over
        # ranks, so each rank scales its summed NLL by world / global token count
        n_local = sum(c[2].sum().item() for c in chunks)
        n_tokens = accelerator.reduce(torch.tensor(n_local, device=device), "sum").item()
        total_nll = 0.0
        for k, encoded in enumerate(chunks):
            sync = contextlib.nullcontext() if k == len(chunks) - 1 else accelerator.no_sync(policy)
            with sync, accelerator.autocast():
                nll = target_nll(policy, encoded)
                accelerator.backward(nll * world / n_tokens)
            total_nll += nll.item()
        grad_norm = float(accelerator.clip_grad_norm_(policy.parameters(), grad_clip))
        if math.isfinite(grad_norm):
            optimizer.step()
        else:
            skipped_updates += 1  # a non-finite loss or gradient skips the update
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        loss = accelerator.reduce(torch.tensor(total_nll, device=device), "sum").item() / n_tokens
        metrics = {"step": step + 1, "epoch": epoch, "loss": loss, "lr": scheduler.get_last_lr()[0],
                   "grad_norm": grad_norm, "tokens": n_tokens, "skipped_samples": skipped,
                   "skipped_updates": skipped_updates, "t_media": t_media,
                   "t_step": time.time() - t0}
        if eval_every and ((step + 1) % eval_every == 0 or step + 1 == total_steps):
            metrics["val_loss"], val_bad, val_read = validate()
            bad, n_read = bad + val_bad, n_read + val_read
        bad_media.update(step + 1, bad, n_read)  # stops the run past max_bad_media_share
        metrics["bad_media"] = bad_media.bad
        metrics_log.log(metrics)
        if master:
            val_text = f" | val {metrics['val_loss']:.4f}" if "val_loss" in metrics else ""
            print(f"step {step + 1:5d}/{total_steps} | loss {loss:.4f}{val_text} | lr {metrics['lr']:.2e} "
                  f"| grad {grad_norm:.2f} | bad media {bad_media.bad} | {metrics['t_step']:.2f}s")
        if (step + 1) % save_every == 0 or step + 1 == total_steps:
            save_checkpoint(accelerator, policy, tokenizer, out_dir, step + 1,
                            {"skipped_updates": skipped_updates, "skipped_samples": skipped,
                             "bad_media_state": bad_media.state(), "config": config}, keep_last=keep_last)

    if master and n_samples:
        show_samples(accelerator.unwrap_model(policy).hf, tokenizer, val[:n_samples], device, metrics_log)
    accelerator.end_training()


def show_samples(hf, tokenizer, rows, device, metrics_log):
    """Greedy answers on held-out rows with their format and accuracy rewards (rows whose media fail are left out)."""
    loaded = []
    for r in rows:
        try:
            frames, spt = data.load_frames(r, max_frames, fps, video_min_pixels, video_max_pixels,
                                           image_min_pixels, image_max_pixels)  # [T, 3, H, W]
        except data.MediaError:
            continue
        loaded.append((r, data.make_visual(frames, spt)))
    rows, visuals = [r for r, _ in loaded], [v for _, v in loaded]
    prompts = [data.prompt_text(r, question_template) for r in rows]
    batch = data.collate(prompts, visuals, tokenizer)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    out = engine.generate(hf, batch, 1, sample_tokens, temperature=0.0,
                          stop_ids=engine.stop_token_ids(tokenizer))
    texts = tokenizer.batch_decode(out["completion_ids"], skip_special_tokens=True)
    fmt = [format_reward(t) for t in texts]
    answers = texts if target_format == "cot" else [f"<answer>{t}</answer>" for t in texts]  # bare answers
    acc = [accuracy_reward(a, r["solution"], r["problem_type"]) for a, r in zip(answers, rows)]
    with open(os.path.join(out_dir, "samples.txt"), "w") as f:
        for r, t, a, m in zip(rows, texts, acc, fmt):
            f.write(f"=== {r['problem']} | truth {r['solution']} | format {m} accuracy {a:.2f}\n{t}\n")
    print(f"held-out greedy samples: format {sum(fmt) / len(fmt):.2f}, accuracy {sum(acc) / len(acc):.2f} "
          f"(see {out_dir}/samples.txt)\n--- example ---\n{texts[0]}")
    metrics_log.log({"heldout_format": sum(fmt) / len(fmt), "heldout_accuracy": sum(acc) / len(acc)})


if __name__ == "__main__":
    main()
