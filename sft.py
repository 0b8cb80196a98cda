"""
SFT cold start (Video-R1 stage 1): next-token cross-entropy on chain-of-thought answers, so the
model starts RL already writing <think>...</think><answer>...</answer>.

The paper's run (the defaults below), Qwen2.5-VL-7B-Instruct on Video-R1-COT-165k, 8 GPUs:
    accelerate launch --config_file config/accelerate_zero2.yaml sft.py config/sft_7b.py
The CPU demo (tiny model, synthetic world; `python demo.py` runs the whole pipeline):
    python sft.py config/sft_demo.py
LoRA (peft) instead of full fine-tuning, 1 to 8 GPUs: add config/sft_7b_lora.py.

Labels are the assistant answer only (process + "\\n" + solution + <|im_end|>): the system text,
the question and every vision pad token are masked. The loss is the mean over all target tokens
of the step. Each sample's video is encoded once. Rows are batched by length so that padding does
not dominate, and the batch order is a pure function of (seed, step): an exact resume.
"""
import math
import os
import time

import torch

# model and data
model_path = "models/Qwen2.5-VL-7B-Instruct"  # a local download of the Hugging Face checkpoint
data_dir = "data/Video-R1-data"
train_file = "Video-R1-COT-165k.json"
train_rows = None                       # only the first N rows of train_file that data_types keeps
data_types = None                       # ["video"] to train on videos only
out_dir = "out/sft_7b"
val_rows = 512                          # held out from the train file for the validation loss
# vision (SPEC 1.3)
max_frames = 16
fps = 2.0
video_min_pixels = 128 * 28 * 28
video_max_pixels = 128 * 28 * 28
image_min_pixels = 4 * 28 * 28
image_max_pixels = 256 * 28 * 28
video_cap_floor_ratio = 1.05            # frame cap >= 1.05 x the floor: qwen-vl-utils (None: off)
media_timeout = 120                     # s per media file: a decode that takes longer is bad media
question_template = "train"             # "plain": the question alone (the demo's warm-up)
target_format = "cot"                   # "cot": process + "\n" + solution (SPEC 4); "answer"
max_length = 16384                      # longer samples are replaced and counted, never cut
max_bad_media_share = 0.01              # rows with bad media are replaced; stop past this share
train_prompt_tokens = False             # True: also train the question text (the release, roughly)
# LoRA through peft (imported only when on): None trains every weight (the paper)
lora_rank = None                        # e.g. 64: adapters on lora_target, all else frozen
lora_alpha = 128                        # the adapters' output is scaled by lora_alpha / lora_rank
lora_dropout = 0.05                     # on the adapters' input
lora_target = ["language"]              # LM attention + MLP; + "vision": the vision tower
# optimisation
num_epochs = 1
max_steps = None                        # stop after this many steps (None: all num_epochs)
batch_size = 1                          # samples per rank per step, as the release
micro_batch_size = 1                    # samples per forward/backward
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
eval_every = 1000                       # validation loss every N steps (and at the end)
n_samples = 16                          # greedy answers on held-out rows at the end
sample_tokens = 1024
save_every = 2000
keep_last = 2
resume = ""                             # "latest": newest checkpoint in out_dir, or a path

from configurator import configure

config = configure(globals(), None if __name__ == "__main__" else [])  # tests import the defaults

import common
import data
import families
import model as engine
from rewards import accuracy_reward, extract_answer, format_reward


def split_rows(rows):
    """(train, val): a seeded random `val_rows` of the file are held out."""
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    return [rows[i] for i in order[val_rows:]], [rows[i] for i in order[:val_rows]]


def length_batches(lengths, batch, epoch):
    """Global batches of row indices for one epoch: shuffle, sort by length inside windows of 16
    batches (so neighbours have similar lengths), cut into batches, shuffle the batch order.
    The last incomplete batch is dropped so every rank always has the same number of rows.
    E.g. lengths [5, 1, 9, 3] in batches of 2: [[1, 3], [0, 2]] or [[0, 2], [1, 3]] (indices).
    """
    gen = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    window = 16 * batch
    order = [i for w in range(0, len(order), window)
             for i in sorted(order[w:w + window], key=lambda i: lengths[i])]
    batches = [order[i:i + batch] for i in range(0, len(order) - batch + 1, batch)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def encode_row(row, tokenizer, media):
    """One sample -> (prompt text, visual, target ids), or None when longer than max_length; raises
    data.MediaError when its media cannot be loaded. With train_prompt_tokens the question text
    after the vision block moves into the target."""
    family = media.get("family", data.QWEN2_5_VL)
    frames, spt = data.load_frames(row, **media)                        # [T, 3, H, W]
    visual = data.make_visual(frames, spt, family)
    answer = data.sft_target(row) if target_format == "cot" else extract_answer(row["solution"])
    prefill = getattr(tokenizer, "assistant_prefill", "")  # "<think>\n": Qwen3.5's prompt opens it
    answer = data.after_prefill(answer, prefill)
    prompt, target = data.prompt_text(row, question_template, family), answer + "<|im_end|>"
    if train_prompt_tokens:
        if prefill:  # data.collate puts the prefill after the prompt, which would then be the head
            raise ValueError("train_prompt_tokens=True needs a template without an assistant prefill")
        head, sep, tail = prompt.partition("<|vision_end|>")
        prompt, target = head + sep, tail + target
    target_ids = tokenizer(target, add_special_tokens=False).input_ids
    n = data.prompt_length(prompt, visual, tokenizer)
    return None if n + len(target_ids) > max_length else (prompt, visual, target_ids)


def collate_targets(samples, tokenizer, device):
    """Encoded samples -> (prompt batch, target ids [B, T], target lengths [B])."""
    batch = data.collate([s[0] for s in samples], [s[1] for s in samples], tokenizer)
    T = max(len(s[2]) for s in samples)
    ids = torch.full((len(samples), T), tokenizer.pad_token_id, dtype=torch.long)  # [B, T]
    for i, s in enumerate(samples):
        ids[i, :len(s[2])] = torch.tensor(s[2])
    lengths = torch.tensor([len(s[2]) for s in samples])                        # [B]
    return common.to_device(batch, device), ids.to(device), lengths.to(device)


def target_nll(policy, encoded):
    """Summed negative log-likelihood of the targets of one collated micro-batch."""
    batch, ids, lengths = encoded
    prompt_index = torch.arange(ids.shape[0], device=ids.device)
    logp = engine.token_logprobs(policy, batch, prompt_index, ids, lengths)  # [B, T], 0 past ends
    return -logp.sum()


def step_samples(step, train, lengths, steps_per_epoch, encode, rank, world):
    """The encoded samples of a step on this rank: its share of the step's length batch, a sample
    too long or whose media fail to load replaced by a seeded random one (common.encode_rows). A
    pure function of (seed, step, rank): resume is exact, and data.prefetch prepares step s+1 in the
    background. Returns (samples, encode_rows' counts)."""
    epoch, j = divmod(step, steps_per_epoch)
    gen = torch.Generator().manual_seed(common.step_seed(seed, step, rank))
    rows = [train[i] for i in length_batches(lengths, batch_size * world, epoch)[j][rank::world]]
    _, samples, counts = common.encode_rows(rows, train, encode, gen)
    return samples, counts


def train_step(accelerator, policy, optimizer, scheduler, samples, tokenizer):
    """One optimizer step on the mean NLL over the target tokens of all ranks: DDP averages
    gradients over ranks, so each rank scales its summed NLL by world / global token count. Returns
    (loss, gradient norm, global target tokens)."""
    device, world = accelerator.device, accelerator.num_processes
    chunks = [collate_targets(samples[i:i + micro_batch_size], tokenizer, device)
              for i in range(0, len(samples), micro_batch_size)]
    n_local = sum(c[2].sum().item() for c in chunks)
    n_tokens = accelerator.reduce(torch.tensor(n_local, device=device), "sum").item()
    total_nll = 0.0
    for k, encoded in enumerate(chunks):
        with common.sync_if_last(accelerator, policy, k, len(chunks)), accelerator.autocast():
            nll = target_nll(policy, encoded)
            accelerator.backward(nll * world / n_tokens)
        total_nll += nll.item()
    grad_norm = common.optimizer_step(accelerator, policy, optimizer, scheduler, grad_clip)
    loss = accelerator.reduce(torch.tensor(total_nll, device=device), "sum").item() / n_tokens
    return loss, grad_norm, n_tokens


def validate(accelerator, policy, val, encode, tokenizer):
    """Mean NLL over the held-out targets of all ranks -> (loss, counts of encode_rows). Unusable
    held-out rows are replaced by other held-out rows, the same ones at every validation."""
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    gen = torch.Generator().manual_seed(seed + rank)
    nll, count = torch.zeros((), device=device), torch.zeros((), device=device)
    counts = {"bad": [], "read": 0}
    encode_chunk = lambda i: common.encode_rows(val[i:i + micro_batch_size], val, encode, gen)[1:]
    policy.eval()
    with torch.no_grad():  # on the prefetch thread chunk after chunk: `gen` draws in the same order
        chunks = range(rank * micro_batch_size, len(val), world * micro_batch_size)
        for samples, chunk_counts in data.prefetch(encode_chunk, chunks):
            counts["bad"] += chunk_counts["bad"]
            counts["read"] += chunk_counts["read"]
            encoded = collate_targets(samples, tokenizer, device)
            nll, count = nll + target_nll(policy, encoded), count + encoded[2].sum()
    policy.train()
    loss = accelerator.reduce(nll, "sum") / accelerator.reduce(count, "sum").clamp(min=1)
    return loss.item(), counts


def show_samples(hf, tokenizer, rows, media, metrics_log):
    """Greedy answers on held-out rows with their format and accuracy rewards (rows whose media fail
    are left out), written to out_dir/samples.txt."""
    loaded, family = [], media.get("family", data.QWEN2_5_VL)
    for r in rows:
        try:
            frames, spt = data.load_frames(r, **media)
            loaded.append((r, data.make_visual(frames, spt, family)))
        except data.MediaError:
            continue
    rows, visuals = [r for r, _ in loaded], [v for _, v in loaded]
    prompts = [data.prompt_text(r, question_template, family) for r in rows]
    batch = common.to_device(data.collate(prompts, visuals, tokenizer), hf.device)
    out = engine.generate(hf, batch, 1, sample_tokens, temperature=0.0,
                          stop_ids=engine.stop_token_ids(tokenizer))
    texts = engine.completion_texts(tokenizer, out["completion_ids"])  # after the prompt's prefill
    fmt = [format_reward(t) for t in texts]
    bare = target_format == "answer"  # the warm-up's answers have no tags
    if bare and getattr(tokenizer, "assistant_prefill", ""):  # Qwen3.5: after an empty think block
        texts = [t.rpartition("</think>")[2].lstrip("\n") for t in texts]
    answers = [f"<answer>{t}</answer>" if bare else t for t in texts]
    acc = [accuracy_reward(a, r["solution"], r["problem_type"]) for a, r in zip(answers, rows)]
    with open(os.path.join(out_dir, "samples.txt"), "w") as f:
        for r, t, a, m in zip(rows, texts, acc, fmt):
            f.write(f"=== {r['problem']} | truth {r['solution']} | format {m} "
                    f"accuracy {a:.2f}\n{t}\n")
    heldout = {"heldout_format": sum(fmt) / len(fmt), "heldout_accuracy": sum(acc) / len(acc)}
    print(f"held-out greedy samples: format {heldout['heldout_format']:.2f}, accuracy "
          f"{heldout['heldout_accuracy']:.2f} (see {out_dir}/samples.txt)\n"
          f"--- example ---\n{texts[0]}")
    metrics_log.log(heldout)


def main():
    cfg = {k: globals()[k] for k in config}  # tests set the globals directly
    accelerator = common.setup(seed, log_with)
    rank, world = accelerator.process_index, accelerator.num_processes
    master = accelerator.is_main_process
    if master:
        print("config:", cfg)
    hf, tokenizer = common.load_policy(accelerator, common.resolve_model_path(model_path),
                                       gradient_checkpointing, lora_rank, lora_alpha, lora_dropout,
                                       lora_target)
    rows = data.load_rows(os.path.join(data_dir, train_file), data_types=data_types,
                          limit=train_rows, require_process=target_format == "cot")
    train, val = split_rows(rows)
    steps_per_epoch = len(train) // (batch_size * world)
    total_steps = min(num_epochs * steps_per_epoch, max_steps or math.inf)
    if total_steps == 0:
        raise ValueError(f"{len(train)} training rows are fewer than one global batch of "
                         f"{batch_size * world}")
    if eval_every and val_rows % (world * micro_batch_size):  # every rank runs as many forwards
        raise ValueError(f"val_rows={val_rows} must be a multiple of processes x "
                         f"micro_batch_size = "
                         f"{world * micro_batch_size}")
    policy = engine.VisionOnceLM(hf, logprob_chunk)
    optimizer, scheduler = common.make_optimizer(policy, lr, adam_betas, adam_eps, weight_decay,
                                                 total_steps, warmup_steps)
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    state = common.resume_state(accelerator, policy, resume, out_dir)
    skipped = {k: state.get(k, 0) for k in ("skipped_samples", "skipped_updates")}
    metrics_log, bad_media = common.open_logs(accelerator, "sft", cfg, out_dir, max_bad_media_share,
                                              state)
    if master:
        print(f"{len(train)} train rows, {len(val)} held out, {total_steps} steps of "
              f"{batch_size} x {world} samples")
    media = data.media_settings(cfg, families.of(hf.config))
    encode = lambda row: encode_row(row, tokenizer, media)
    # length-aware batching by a cheap proxy: modality first, then characters of question + answer
    lengths = [(r["data_type"], len(r["problem"]) + len(r.get("process", ""))) for r in train]

    prepared = data.prefetch(
        lambda s: step_samples(s, train, lengths, steps_per_epoch, encode, rank, world),
        range(state["step"], total_steps))
    for step in range(state["step"], total_steps):
        t0 = time.time()
        samples, counts = next(prepared)
        t_media = time.time() - t0  # waiting for this step's media: ~0 while decoding keeps up
        skipped["skipped_samples"] += counts["too_long"]
        loss, grad_norm, n_tokens = train_step(accelerator, policy, optimizer, scheduler, samples,
                                               tokenizer)
        skipped["skipped_updates"] += not math.isfinite(grad_norm)
        metrics = {"step": step + 1, "epoch": step // steps_per_epoch, "loss": loss,
                   "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, "tokens": n_tokens,
                   **skipped, "t_media": t_media, "t_step": time.time() - t0}
        bad, n_read = counts["bad"], counts["read"]
        if eval_every and ((step + 1) % eval_every == 0 or step + 1 == total_steps):
            metrics["val_loss"], val_counts = validate(accelerator, policy, val, encode, tokenizer)
            bad, n_read = bad + val_counts["bad"], n_read + val_counts["read"]
        bad_media.update(step + 1, bad, n_read)  # stops the run past max_bad_media_share
        metrics["bad_media"] = bad_media.bad
        metrics_log.log(metrics)
        if master:
            val_text = f" | val {metrics['val_loss']:.4f}" if "val_loss" in metrics else ""
            print(f"step {step + 1:5d}/{total_steps} | loss {loss:.4f}{val_text} "
                  f"| lr {metrics['lr']:.2e} | grad {grad_norm:.2f} | bad media {bad_media.bad} "
                  f"| {metrics['t_step']:.2f}s")
        if (step + 1) % save_every == 0 or step + 1 == total_steps:
            common.save_checkpoint(accelerator, policy, tokenizer, out_dir, step + 1,
                                   {**skipped, "bad_media_state": bad_media.state(), "config": cfg},
                                   keep_last=keep_last)
    if master and n_samples:
        hf = accelerator.unwrap_model(policy).hf
        show_samples(hf, tokenizer, val[:n_samples], media, metrics_log)
    accelerator.end_training()


if __name__ == "__main__":
    main()
