"""
What sft.py and tgrpo.py share: set-up, the optimizer step, rows that cannot be used, checkpoints.

    accelerator = setup(seed, log_with)             # accelerate + a seed per rank
    hf, tokenizer = load_policy(accelerator, path, ...)   # fp32 weights (LoRA: a bf16 base)
    optimizer, scheduler = make_optimizer(params, lr, ..., total_updates, warmup)
    grad_norm = optimizer_step(accelerator, policy, optimizer, scheduler, grad_clip)

A checkpoint is a folder `out_dir/step_000100/` holding
  - the model and tokenizer in the Hugging Face layout, or with LoRA the adapters in PEFT's layout
    (adapter_config.json names the base; model.load_model merges them on load),
  - state/: what resuming needs (weights, optimizer, scheduler) as `accelerate` saves it, so the
    same code is right for DDP, FSDP and DeepSpeed; with LoRA the frozen base is left out,
  - trainer.json: step, counters, the resolved run config.
It is written into `step_000100.tmp/` and renamed once complete: a crash mid-write never leaves a
half checkpoint that resume would pick up. Every random draw of a step comes from a generator
seeded by step_seed(seed, step, rank), so no random-number state needs saving for an exact resume.
"""
import contextlib
import json
import math
import os
import re
import shutil
import time

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object
from safetensors import safe_open

import model as engine
from data import MediaError

STEP_DIR = re.compile(r"^step_(\d+)$")
DEMO_HINT = "for the CPU demo, `python demo.py assets` builds demo/ first"


def setup(seed, log_with=None):
    """The accelerator, with torch seeded per rank. The schedule counts optimizer updates, not the
    batches accelerate would otherwise count per process."""
    accelerator = Accelerator(log_with=log_with, step_scheduler_with_optimizer=False)
    torch.manual_seed(seed + accelerator.process_index)
    return accelerator


def step_seed(seed, step, rank):
    """The seed of every random draw of one step on one rank (replacement rows, shuffles, samples).
    >>> step_seed(42, 0, 0), step_seed(42, 1, 0), step_seed(42, 0, 1)
    (42, 1000045, 7961)"""
    return seed + 1_000_003 * step + 7_919 * rank


def compute_dtype(accelerator):
    return torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32


def load_policy(accelerator, path, gradient_checkpointing=False, lora_rank=None, lora_alpha=128,
                lora_dropout=0.0, lora_target=("language",)):
    """The model to train and its tokenizer. Its weights are float32 (bf16 autocast computes in
    bf16; lr 1e-6 updates would vanish in bf16 weights); with LoRA the frozen base is held in the
    compute dtype and only the adapters are float32. Gradient checkpointing is non-reentrant and
    acts in the updates only (generate runs the model in eval mode)."""
    dtype = compute_dtype(accelerator) if lora_rank else torch.float32
    hf, tokenizer = engine.load_model(path, dtype=dtype, device=accelerator.device)
    if gradient_checkpointing:
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if lora_rank:
        hf = engine.add_lora(hf, lora_rank, lora_alpha, lora_dropout, lora_target)
    return hf, tokenizer


def cosine_with_warmup(update, total, warmup):
    """lr factor of update `update` (0-based): linear warm-up, then cosine decay to 0 at `total`.
    >>> [round(cosine_with_warmup(u, 10, 2), 3) for u in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]"""
    if update < warmup:
        return (update + 1) / warmup
    progress = (update - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model, lr, betas, eps, weight_decay, total_updates, warmup):
    """AdamW over the trainable parameters, and its warm-up + cosine schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    schedule = lambda u: cosine_with_warmup(u, total_updates, warmup)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def sync_if_last(accelerator, model, i, n):
    """Accumulation over n micro-batches: DDP all-reduces once, in the backward of the last."""
    return contextlib.nullcontext() if i == n - 1 else accelerator.no_sync(model)


def optimizer_step(accelerator, model, optimizer, scheduler, grad_clip):
    """Clip, step, advance the schedule, clear the gradients; returns the norm before clipping.

    A non-finite norm skips the update (the caller counts it). So does an exactly zero one: nothing
    to learn (every group without spread and no KL gradient), and AdamW would still move the weights
    by its weight decay and the momentum of earlier steps."""
    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), grad_clip))
    if math.isfinite(grad_norm) and grad_norm > 0:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


@contextlib.contextmanager
def full_weights(accelerator, model):
    """Gather sharded weights once per rollout, so sampling is not a collective per token."""
    if (accelerator.distributed_type == DistributedType.DEEPSPEED
            and accelerator.state.deepspeed_plugin.zero_stage == 3):
        import deepspeed
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield
    elif accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        with FSDP.summon_full_params(model, writeback=False, recurse=True):
            yield
    else:
        yield


@contextlib.contextmanager
def timer(times, key):
    """Adds the seconds spent inside the block to times[key]."""
    start = time.time()
    yield
    times[key] = times.get(key, 0.0) + time.time() - start


def to_device(batch, device):
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


# ---------------------------------------------------------------------------- unusable rows
def encode_or_replace(row, rows, encode, generator, tries=100):
    """encode(row), or, when the row cannot be used, encode(r) for seeded random rows r of `rows`
    until one works: the row's media failed to load (data.MediaError), or encode returned None (a
    prompt over the length limit). A bad row costs one sample, not the run; every rank keeps the
    same amount of work; and the replacements are a pure function of `generator`, so a resumed run
    replaces the same rows.

    Returns (row, encoded, rejected, bad): the row used, its encoding, how many rows encode returned
    None for, and [(media path, reason)] of the rows whose media failed.
    """
    rejected, bad = 0, []
    for _ in range(tries):
        try:
            encoded = encode(row)
        except MediaError as e:
            bad.append((row["media"], str(e)))
        else:
            if encoded is not None:
                return row, encoded, rejected, bad
            rejected += 1
        row = rows[torch.randint(len(rows), (1,), generator=generator).item()]
    last = f"; the last bad media: {bad[-1][1]}" if bad else ""
    raise ValueError(f"{tries} rows in a row could not be used: {rejected} rejected (too long), "
                     f"{len(bad)} with bad media{last}")


def encode_rows(rows, pool, encode, generator):
    """encode_or_replace over `rows` in order, replacements drawn from `pool` with one generator.

    Returns (rows used, their encodings, counts) with counts = {"too_long": rows rejected,
    "bad": [(path, reason)] of rows with bad media, "read": every row tried, used or not}.
    """
    used, encoded, counts = [], [], {"too_long": 0, "bad": [], "read": 0}
    for row in rows:
        row, e, too_long, bad = encode_or_replace(row, pool, encode, generator)
        used.append(row), encoded.append(e)
        counts["too_long"] += too_long
        counts["bad"] += bad
        counts["read"] += 1 + too_long + len(bad)
    return used, encoded, counts


MIN_BAD_MEDIA = 10  # the share is judged from this many on: 1 bad of a first step's 8 is not 12%


class BadMediaLog:
    """Rows replaced because their media failed to load. Counted over all ranks (and across a
    resume), each bad file written once to out_dir/bad_media.txt as "step<TAB>path<TAB>reason", and
    the run stopped with a clear error once more than `max_share` of the rows read so far had bad
    media (from MIN_BAD_MEDIA on)."""

    def __init__(self, accelerator, out_dir, max_share, resume_step=0, state=None):
        self.accelerator, self.max_share = accelerator, max_share
        self.path = os.path.join(out_dir, "bad_media.txt")
        self.bad, self.read = (state or {}).get("bad_media", 0), (state or {}).get("rows_read", 0)
        self.written = set()
        if accelerator.is_main_process:
            os.makedirs(out_dir, exist_ok=True)
            kept = _keep_until(self.path, resume_step, lambda line: int(line.split("\t", 1)[0]))
            self.written = {line.split("\t")[1] for line in kept}

    def update(self, step, bad, n_read):
        """Every rank calls this once per step: `bad` = [(path, reason)] of its replaced rows,
        n_read = rows it read (used or not). Collective: counts summed over ranks, paths gathered to
        the main process."""
        counts = torch.tensor([len(bad), n_read], device=self.accelerator.device)
        n_bad, n = (int(x) for x in self.accelerator.reduce(counts, "sum").tolist())
        self.bad, self.read = self.bad + n_bad, self.read + n
        if n_bad:
            entries = gather_object(list(bad))
            if self.accelerator.is_main_process:
                with open(self.path, "a") as f:
                    for path, reason in entries:
                        if path not in self.written:
                            self.written.add(path)
                            f.write(f"{step}\t{path}\t{' '.join(reason.split())}\n")
        if self.bad > max(MIN_BAD_MEDIA, self.max_share * self.read):
            raise RuntimeError(
                f"{self.bad} of the {self.read} rows read so far had media that failed to load, "
                f"more than max_bad_media_share={self.max_share}: see {self.path}. Fix or drop "
                f"those rows (python check_data.py FILE --clean=...) or raise max_bad_media_share, "
                f"then resume.")

    def state(self):
        return {"bad_media": self.bad, "rows_read": self.read}


# ---------------------------------------------------------------------------- checkpoints and logs
def save_checkpoint(accelerator, model, tokenizer, out_dir, step, trainer_state, keep_last=2):
    """Write checkpoint `out_dir/step_{step:06d}` atomically; keep the newest `keep_last`."""
    final = os.path.join(out_dir, f"step_{step:06d}")
    tmp = final + ".tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    frozen = frozen_names(model)

    def drop_frozen(models, weights, output_dir):  # LoRA's base: reloaded from model_path on resume
        weights[:] = [{k: v for k, v in w.items() if k not in frozen} for w in weights]

    hook = accelerator.register_save_state_pre_hook(drop_frozen)
    accelerator.save_state(os.path.join(tmp, "state"))
    hook.remove()
    full_state = accelerator.get_state_dict(model)  # gathers shards under FSDP / ZeRO-3
    unwrapped = accelerator.unwrap_model(model)
    hf = getattr(unwrapped, "hf", unwrapped)  # VisionOnceLM keeps the Hugging Face model as .hf
    if accelerator.is_main_process:
        full_state = {k.removeprefix("hf."): v for k, v in full_state.items()}
        hf.save_pretrained(tmp, state_dict=full_state)  # a PeftModel (LoRA) saves the adapters only
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "trainer.json"), "w") as f:
            json.dump({"step": step, "time": time.time(), **trainer_state}, f, indent=1)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(out_dir):
    """Complete checkpoints in `out_dir`, oldest first (`.tmp` folders are ignored)."""
    if not os.path.isdir(out_dir):
        return []
    steps = sorted(int(m.group(1)) for d in os.listdir(out_dir) if (m := STEP_DIR.match(d)))
    return [os.path.join(out_dir, f"step_{s:06d}") for s in steps]


def frozen_names(model):
    """State-dict names of the parameters that do not train (LoRA's base weights; none otherwise).
    """
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def load_checkpoint(accelerator, model, path):
    """Restore weights, optimizer and scheduler from `path` into the prepared objects and return
    trainer.json. With LoRA the saved weights must be exactly the trainable ones (the frozen base
    comes from model_path), else the LoRA settings changed."""
    state = os.path.join(path, "state")
    frozen = frozen_names(model)
    weights = os.path.join(state, "model.safetensors")  # DeepSpeed, FSDP: saved their own way
    if frozen and os.path.isfile(weights):
        with safe_open(weights, "pt") as f:
            saved = set(f.keys())
        expected = set(model.state_dict()) - frozen
        if saved != expected:
            raise ValueError(f"resume: {path} holds other trainable weights than this model (LoRA "
                             f"settings changed?): {len(saved - expected)} unexpected, "
                             f"{len(expected - saved)} missing, "
                             f"e.g. {sorted(saved ^ expected)[:2]}")
        accelerator.load_state(state, strict=False)  # the frozen base is not in it, as checked
    else:
        accelerator.load_state(state)
    with open(os.path.join(path, "trainer.json")) as f:
        return json.load(f)


def resume_state(accelerator, model, resume, out_dir):
    """trainer.json of the checkpoint `resume` names, restored into the prepared objects; {"step":
    0} for a fresh run. `resume` is "" (fresh), "latest" (newest in out_dir, fresh if none) or a
    path."""
    if resume == "latest":
        found = list_checkpoints(out_dir)
        resume = found[-1] if found else ""
    if not resume:
        return {"step": 0}
    if not os.path.isfile(os.path.join(resume, "trainer.json")):
        raise FileNotFoundError(f"resume: {resume} is not a complete checkpoint (no trainer.json)")
    state = load_checkpoint(accelerator, model, resume)
    if accelerator.is_main_process:
        print(f"resumed from {resume} at step {state['step']}")
    return state


def resolve_model_path(path):
    """A Hugging Face model folder, a LoRA checkpoint, or a training out_dir whose newest complete
    step_* is taken."""
    if any(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "adapter_config.json")):
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    if not os.path.exists(path):
        raise FileNotFoundError(f"model_path {path} does not exist ({DEMO_HINT})")
    raise FileNotFoundError(f"model_path {path}: neither a Hugging Face model folder "
                            f"(config.json), a LoRA checkpoint (adapter_config.json) nor a "
                            f"training output with step_* checkpoints")


def _keep_until(path, resume_step, step_of):
    """Rewrite a per-step log keeping the lines of steps <= resume_step (later steps will run
    again); a fresh run (resume_step 0) starts it empty."""
    lines = []
    if resume_step and os.path.exists(path):
        with open(path) as f:
            lines = [l for l in f if l.strip() and step_of(l) <= resume_step]
    with open(path, "w") as f:
        f.writelines(lines)
    return lines


class MetricsLog:
    """One JSON line per step in out_dir/metrics.jsonl, plus the accelerate trackers when enabled.
    """

    def __init__(self, accelerator, out_dir, resume_step=0):
        self.accelerator = accelerator
        self.path = os.path.join(out_dir, "metrics.jsonl")
        if accelerator.is_main_process:
            os.makedirs(out_dir, exist_ok=True)
            _keep_until(self.path, resume_step, lambda line: json.loads(line).get("step", 0))

    def log(self, metrics):
        if self.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        self.accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                             step=metrics.get("step"))


def open_logs(accelerator, name, config, out_dir, max_bad_media_share, state):
    """The trackers (when config asks), metrics.jsonl and the bad-media log, continued after a
    resume."""
    if config.get("log_with"):
        accelerator.init_trackers(name, config=config)
    metrics_log = MetricsLog(accelerator, out_dir, resume_step=state["step"])
    bad_media = BadMediaLog(accelerator, out_dir, max_bad_media_share, resume_step=state["step"],
                            state=state.get("bad_media_state"))
    return metrics_log, bad_media
