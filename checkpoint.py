"""
Checkpoints, metrics and the handling of unusable rows, shared by sft.py and tgrpo.py.

A checkpoint is a folder `out_dir/step_000100/` holding
  - the model and tokenizer in the Hugging Face layout (load it anywhere with from_pretrained), or
    with LoRA the adapters in PEFT's layout (adapter_config.json names the base; model.load_model
    merges them on load, `python model.py merge` writes the merged model),
  - state/: what resuming needs (weights, optimizer, scheduler) as `accelerate` saves it, so the
    same code is right for DDP, FSDP and DeepSpeed (sharded states stay sharded); with LoRA the
    frozen base weights are left out (resume reloads them from model_path),
  - trainer.json: step, data position, the resolved run config.
It is written into `step_000100.tmp/` and renamed once complete, so a crash mid-write never leaves
a half checkpoint that resume would pick up. Sampling seeds are derived from (seed, rank, step),
so no random-number state needs saving for an exact resume.
"""
import json
import os
import re
import shutil
import time

import torch
from accelerate.utils import gather_object
from safetensors import safe_open

from data import MediaError

STEP_DIR = re.compile(r"^step_(\d+)$")


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
    hf = hf_model(accelerator.unwrap_model(model))
    if accelerator.is_main_process:
        prefix = "hf."  # VisionOnceLM keeps the Hugging Face model as .hf
        full_state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in full_state.items()}
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
    """State-dict names of the parameters that do not train (LoRA's base weights; none otherwise)."""
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def load_checkpoint(accelerator, model, path):
    """Restore weights, optimizer and scheduler from `path` into the prepared objects (`model` the
    prepared model) and return trainer.json. With LoRA the saved weights must be exactly the
    trainable ones (the frozen base comes from model_path), else the LoRA settings changed."""
    state = os.path.join(path, "state")
    frozen = frozen_names(model)
    weights = os.path.join(state, "model.safetensors")  # DeepSpeed and FSDP save weights their own way
    if frozen and os.path.isfile(weights):
        with safe_open(weights, "pt") as f:
            saved = set(f.keys())
        expected = set(model.state_dict()) - frozen
        if saved != expected:
            raise ValueError(f"resume: {path} holds other trainable weights than this model (LoRA settings "
                             f"changed?): {len(saved - expected)} unexpected, {len(expected - saved)} missing, "
                             f"e.g. {sorted(saved ^ expected)[:2]}")
        accelerator.load_state(state, strict=False)  # the frozen base is not in it, as checked
    else:
        accelerator.load_state(state)
    with open(os.path.join(path, "trainer.json")) as f:
        return json.load(f)


def resolve_resume(resume, out_dir):
    """`resume` is "" (fresh run), "latest" (newest checkpoint in out_dir, fresh if none) or a path."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(out_dir)
        return found[-1] if found else None
    if not os.path.isfile(os.path.join(resume, "trainer.json")):
        raise FileNotFoundError(f"resume: {resume} is not a complete checkpoint (no trainer.json)")
    return resume


def resolve_model_path(path):
    """A Hugging Face model folder, a LoRA checkpoint, or a training out_dir whose newest complete
    step_* is taken."""
    if any(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "adapter_config.json")):
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    raise FileNotFoundError(f"model_path {path}: neither a Hugging Face model folder (config.json), a LoRA "
                            f"checkpoint (adapter_config.json) nor a training output with step_* checkpoints")


def hf_model(model):
    """The Hugging Face model inside a VisionOnceLM (or the model itself)."""
    return getattr(model, "hf", model)


def _keep_until(path, resume_step, step_of):
    """Rewrite a per-step log keeping the lines of steps <= resume_step (later steps will run again);
    a fresh run (resume_step 0) starts it empty."""
    lines = []
    if resume_step and os.path.exists(path):
        with open(path) as f:
            lines = [l for l in f if l.strip() and step_of(l) <= resume_step]
    with open(path, "w") as f:
        f.writelines(lines)
    return lines


class MetricsLog:
    """One JSON line per step in out_dir/metrics.jsonl, plus the accelerate trackers when enabled."""

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


def encode_or_replace(row, rows, encode, generator, tries=100):
    """encode(row), or, when the row cannot be used, encode(r) for seeded random rows r of `rows` until one
    works: the row's media failed to load (data.MediaError), or encode returned None (e.g. a prompt over the
    length limit). A bad row costs one sample, not the run; every rank keeps the same amount of work; and the
    replacements are a pure function of `generator`, so a resumed run replaces the same rows.

    Returns (row, encoded, rejected, bad): the row used, its encoding, how many rows encode returned None for,
    and [(media path, reason)] of the rows whose media failed.
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


MIN_BAD_MEDIA = 10  # the share is judged from this many bad rows on: 1 bad row of a first step's 8 is not 12%


class BadMediaLog:
    """Rows replaced because their media failed to load. Counted over all ranks (and across a resume), each bad
    file written once to out_dir/bad_media.txt as "step<TAB>path<TAB>reason", and the run stopped with a clear
    error once more than `max_share` of the rows read so far had bad media (from MIN_BAD_MEDIA of them on)."""

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
        """Every rank calls this once per step: `bad` = [(path, reason)] of its replaced rows, n_read = rows it
        read (used or not). Collective: counts are summed over ranks, paths gathered to the main process."""
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
            raise RuntimeError(f"{self.bad} of the {self.read} rows read so far had media that failed to load, more "
                               f"than max_bad_media_share={self.max_share}: see {self.path}. Fix or drop those rows "
                               f"(python data.py check FILE --clean=...) or raise max_bad_media_share, then resume.")

    def state(self):
        return {"bad_media": self.bad, "rows_read": self.read}
