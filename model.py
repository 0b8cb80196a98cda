"""
model.py: everything the stage scripts need from Qwen2.5-VL, Qwen3-VL or Qwen3.5, as flat functions.

    load_model(path)                       -> (model, tokenizer); a LoRA checkpoint is merged on load
    add_lora(model, rank, alpha, ...)      -> PeftModel: LoRA adapters in place, base frozen (optional peft)
    rope_positions(ids, mask, visuals, cfg) M-RoPE position ids [3, B, L] of a left-padded batch
    generate(model, batch, n, ...)         n sampled completions per prompt; finished rows leave the batch
    token_logprobs(model, batch, ...)      [R, T] log-probs of completion tokens (policy, reference, SFT)

Two ideas run through the file:
- Once per prompt. The G completions of a prompt share its video and its text, so each distinct visual
  goes through the vision tower once per call and each prompt through the language model once: sampling
  copies the prompt's KV cache into its rows, scoring lets the rows attend to the prompt's keys/values
  (SharedPromptCache). Autograd sums the rows' gradients into that one computation, exactly as if each
  row had its own copy. Qwen3.5's linear-attention layers have no keys/values: their past is a conv
  state and a recurrent state per row, shared and copied the same way (linear_state.py).
- Explicit positions. We compute M-RoPE positions ourselves and hand them to the language model on
  every call (prefill, decode, scoring), so HF's hidden `rope_deltas` state is never read.
What differs between the families (patches, video layout, DeepStack, LoRA names) is in families.py.
"""

import contextlib
import importlib.util
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig, AutoTokenizer, DynamicCache, PreTrainedModel, StaticCache
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

import families
import linear_state
from families import continue_positions, rope_positions  # M-RoPE positions live beside the families

def load_model(path, dtype=torch.float32, device="cpu", attn_implementation=None):
    """Load a Qwen2.5-VL or Qwen3-VL checkpoint (the family from config.model_type) and its
    tokenizer (left padding, for batched prompts). Weights that do not all load into the family's
    class (missing, unexpected or mis-shaped) are an error, never a model with new random parts.

    attn_implementation=None picks flash_attention_2 when flash_attn is installed and the device is
    CUDA, else PyTorch sdpa. A LoRA checkpoint (adapter_config.json, what sft.py and tgrpo.py save
    with lora_rank set) is loaded onto the base it names, itself possibly a LoRA checkpoint, and
    merged: the result is a plain model, whatever the chain of stages that made it.
    """
    path = str(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        from peft import PeftModel
        with open(os.path.join(path, "adapter_config.json")) as f:
            base = json.load(f)["base_model_name_or_path"]
        if os.path.isabs(base) and not os.path.isdir(base):
            raise FileNotFoundError(f"{path} holds LoRA adapters of {base}, which is not there (a checkpoint "
                                    f"moved without its base?): `python model.py merge` makes one that stands alone")
        model, _ = load_model(base, dtype, device, attn_implementation)
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
        model.name_or_path = path  # adapters trained on top of this model name it as their base
    else:
        if attn_implementation is None:
            on_cuda = torch.device(device).type == "cuda"
            attn_implementation = "flash_attention_2" if on_cuda and importlib.util.find_spec("flash_attn") else "sdpa"
        family = families.of(AutoConfig.from_pretrained(path))
        model, info = family.model_class.from_pretrained(
            path, dtype=dtype, attn_implementation=attn_implementation, output_loading_info=True)
        bad = {k: sorted(v)[:5] for k, v in info.items() if v and k != "error_msgs"}
        if bad or info.get("error_msgs"):
            raise ValueError(f"{path}: the weights do not load into {family.model_class.__name__}: "
                             f"{bad} {info.get('error_msgs') or ''}")
        model = model.to(device)
    tokenizer.padding_side = "left"
    family = families.of(model.config)
    tokenizer.assistant_prefill = families.assistant_prefill(tokenizer, path, family)  # "" or "<think>\n"
    if model.generation_config.pad_token_id is None:  # generate() pads finished rows with it
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def completion_texts(tokenizer, completion_ids):
    """Decoded completions [R, T] -> R strings, each after the prompt's assistant_prefill, so that
    the format reward and the answer parsing read the whole assistant turn."""
    prefill = getattr(tokenizer, "assistant_prefill", "")
    return [prefill + t for t in tokenizer.batch_decode(completion_ids, skip_special_tokens=True)]


def add_lora(hf, rank, alpha, dropout=0.0, target=("language",)):
    """Freeze `hf` and add LoRA adapters (through PEFT) to the linear layers of the `target` parts
    (keys of the family's lora_targets, families.py); returns the PeftModel.

    PEFT swaps the target layers in place, so `hf` itself (hence VisionOnceLM, generate and
    token_logprobs, which reach into it through base_model) now computes with the adapters, and
    `with peft_model.disable_adapter():` turns them off: the starting model, T-GRPO's reference, for
    free. The B matrices start at zero: at step 0 the adapted model equals the base exactly.

    >>> peft_model = add_lora(hf, rank=64, alpha=128)   # Qwen2.5-VL-7B: 161M of 8.3B weights train
    """
    from peft import LoraConfig, get_peft_model
    targets = families.of(hf.config).lora_targets
    if not target or set(target) - set(targets):
        raise ValueError(f"lora_target must be a non-empty list of {sorted(targets)}, "
                         f"got {target!r}")
    if os.path.isdir(hf.name_or_path):  # the saved adapters name their base: absolute, to load from anywhere
        hf.name_or_path = os.path.abspath(hf.name_or_path)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules="|".join(f"(?:{targets[t]})" for t in target))
    return get_peft_model(hf, config)


def base_model(model):
    """The Hugging Face model under a PEFT wrapper (its adapters stay active), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def save_merged(path, out_dir):
    """Write a LoRA checkpoint as a plain Hugging Face one (adapters merged into the weights).
    python model.py merge out/tgrpo_7b_lora/step_001000 out/tgrpo_7b_lora_merged"""
    model, tokenizer = load_model(path)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def stop_token_ids(tokenizer):
    """Ids that end a completion: <|im_end|> (end of turn) and <|endoftext|>."""
    return [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]


def embed_prompts(hf, input_ids, visuals):
    """The language model's inputs for prompts: {"inputs_embeds": [B, L, D]}, visual features
    scattered over their pad tokens, and with DeepStack (Qwen3-VL) "visual_pos_masks" [B, L] and
    "deepstack_visual_embeds" (per level [n, D], n = visual tokens): lm(**embed_prompts(...), ...).

    Each distinct visual (same dict object) goes through the vision tower once, all of them in a
    single call (the tower keeps visuals apart with its own attention boundaries).
    """
    embeds = hf.get_input_embeddings()(input_ids)  # [B, L, D]
    distinct = {id(v): v for v in visuals if v is not None}  # keeps first-seen order
    if not distinct:
        return {"inputs_embeds": embeds}
    slot = {key: i for i, key in enumerate(distinct)}
    visual_tower = hf.model.visual
    pixel_values = torch.cat([v["pixel_values"] for v in distinct.values()])  # [N, 3*2*p*p]
    grid_thw = torch.stack([v["grid_thw"] for v in distinct.values()]).to(input_ids.device)  # [V, 3]
    out = visual_tower(pixel_values.to(input_ids.device, visual_tower.dtype), grid_thw=grid_thw)
    sizes = (grid_thw.prod(-1) // visual_tower.spatial_merge_size ** 2).tolist()

    def per_row(features):  # [N/4, D] of the distinct visuals -> [sum over rows, D] in row order
        features = features.split(sizes)  # V x [n_v, D]
        return torch.cat([features[slot[id(v)]] for v in visuals if v is not None])

    features = per_row(out.pooler_output)
    is_vis = (input_ids == hf.config.image_token_id) | (input_ids == hf.config.video_token_id)  # [B, L]
    if int(is_vis.sum()) != len(features):
        raise ValueError(f"{int(is_vis.sum())} visual pad tokens in the batch but {len(features)} "
                         f"visual features")
    # row-major, matching per_row's order
    inputs = {"inputs_embeds": embeds.masked_scatter(is_vis[..., None], features.to(embeds.dtype))}
    if families.of(hf.config).deepstack:
        inputs |= {"visual_pos_masks": is_vis,
                   "deepstack_visual_embeds": [per_row(f) for f in out.deepstack_features]}
    return inputs


class SharedPromptCache(linear_state.SharedLinearStates, DynamicCache):
    """Keys/values of prompts computed once, which completion rows attend to, inside the autograd graph.

    prompts = SharedPromptCache(config)                      # forward over P prompts: records [P, H, Lp, d]
    rows = SharedPromptCache(config, prompts, prompt_index)  # forward over R completions: each attends to
                                                             # prompts[prompt_index] ++ its own keys/values
    Indexing sums the rows' gradients into the one prompt computation, as if each row had its own copy.
    Calls are idempotent, so a gradient-checkpointed layer replayed in backward sees the same keys.
    Linear-attention layers (Qwen3.5) share their conv and recurrent states alike (linear_state.py).
    """

    def __init__(self, config, prompts=None, prompt_index=None):
        super().__init__(config=config)
        if prompts is not None:
            self.layers = prompts.layers  # shared: seq length Lp, so HF masks the R rows as [R, Lp + T]
        self.prompt_index, self.reads, self.linear_reads = prompt_index, 0, set()

    def update(self, keys, values, layer_idx, *args, **kwargs):
        layer = self.layers[layer_idx]
        if self.prompt_index is None:  # prompts: record (a checkpoint replay must not record twice)
            if not layer.is_initialized:
                layer.keys, layer.values, layer.is_initialized = keys, values, True
            return keys, values
        self.reads += 1
        return (torch.cat([layer.keys[self.prompt_index], keys], dim=2),     # [R, H, Lp+T, d]
                torch.cat([layer.values[self.prompt_index], values], dim=2))


@contextlib.contextmanager
def cache_through_checkpointing(language_model):
    """HF's gradient-checkpointed decoder layers drop any cache they are given (a replay in backward
    would write a normal cache twice); a SharedPromptCache is replay-safe, so let it through. Found by
    type, so layers wrapped one by one (FSDP) are reached too."""
    layers = [m for m in language_model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache  # back to the class default, False


# Tokens per LM-head chunk: 1024 x 152,064 words x 4 bytes = 0.62 GB of float32 logits at a time for
# Qwen2.5-VL-7B (not R x T x V = 3.7 GB, several times over); 1024 rows still fill a GPU's matmul.
LOGPROB_CHUNK = 1024


def head_logprobs(lm_head, hidden, targets, temperature=1.0, chunk=LOGPROB_CHUNK):
    """log_softmax(lm_head(hidden) / temperature) at targets, float32: [..., D], [...] -> [...].
    `chunk` tokens at a time (None: all at once), in both passes: the backward recomputes each chunk's
    logits and adds its weight gradient into ONE [V, D] buffer (ChunkedHeadLogprobs), so neither pass
    holds more than one chunk's [chunk, V]. A DeepSpeed ZeRO-3 head (its weight is gathered only
    inside the module's own call) takes the same chunks through activation checkpointing instead."""
    h, t = hidden.flatten(0, -2), targets.flatten()  # [N, D], [N]
    if chunk is None or hasattr(lm_head.weight, "ds_id"):
        def logprobs(h, t):  # [n, D], [n] -> [n]; gathered logit - logsumexp: no 2nd [n, V] tensor
            logits = lm_head(h).float() / temperature  # [n, V]
            return logits.gather(-1, t[:, None]).squeeze(-1) - logits.logsumexp(-1)
        parts = [logprobs(h, t)] if chunk is None else [checkpoint(logprobs, hc, tc, use_reentrant=False)
                                                        for hc, tc in zip(h.split(chunk), t.split(chunk))]
        return torch.cat(parts).view(targets.shape)
    dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else None
    return ChunkedHeadLogprobs.apply(h, lm_head.weight, t, temperature, chunk, dtype).view(targets.shape)


class ChunkedHeadLogprobs(torch.autograd.Function):
    """Log-probs of targets under softmax(h W^T / temperature), chunk rows at a time. d logp / d logits
    = onehot(target) - softmax; backward: grad_h = g W and grad_W += g^T h per chunk, in place, where
    autograd would keep one gradient per use of W plus their running sum. One [chunk, V] float32
    tensor at a time, worked on in place. Matmuls in `dtype` (the autocast dtype, as lm_head(h) would
    run) or W's; softmax, log-probs and grad_W's sum in float32."""

    @staticmethod
    def forward(ctx, h, weight, t, temperature, chunk, dtype):
        w = weight.to(dtype or weight.dtype)  # one cast for all chunks (autocast caches it likewise)
        out = torch.empty(len(t), dtype=torch.float32, device=h.device)
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, len(t), chunk):
                logits = ChunkedHeadLogprobs.logits(h[s:s + chunk], w, temperature)  # [n, V]
                picked = logits.gather(-1, t[s:s + chunk, None]).squeeze(-1)       # [n]
                out[s:s + chunk] = picked - ChunkedHeadLogprobs.logsumexp(logits)
        ctx.save_for_backward(h, weight, t)
        ctx.temperature, ctx.chunk, ctx.dtype = temperature, chunk, dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):  # [N] -> grads of h [N, D] and W [V, D]
        h, weight, t = ctx.saved_tensors
        w = weight.to(ctx.dtype or weight.dtype)
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, len(t), ctx.chunk):
                hc, tc, gc = h[s:s + ctx.chunk], t[s:s + ctx.chunk], grad_out[s:s + ctx.chunk]
                g = ChunkedHeadLogprobs.logits(hc, w, ctx.temperature)        # [n, V]
                g.sub_(ChunkedHeadLogprobs.logsumexp(g)[:, None]).exp_()       # softmax, in place
                g.mul_(-gc[:, None])                                          # -softmax * grad
                g[torch.arange(len(tc), device=g.device), tc] += gc           # + onehot * grad
                g.div_(ctx.temperature)                                       # d loss / d (h W^T)
                if grad_h is not None:
                    grad_h[s:s + ctx.chunk] = (g.to(w.dtype) @ w).to(h.dtype)
                if grad_w is not None:
                    grad_w.addmm_(g.T, hc.float())
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None

    @staticmethod
    def logsumexp(x, rows=16):  # [n, V] -> [n], a few rows at a time: no second [n, V] tensor
        return torch.cat([x[i:i + rows].logsumexp(-1) for i in range(0, len(x), rows)])

    @staticmethod
    def logits(h, w, temperature):  # [n, D] -> float32 [n, V] / temperature
        logits = h.to(w.dtype) @ w.T
        return (logits if logits.dtype == torch.float32 else logits.float()).div_(temperature)


class VisionOnceLM(nn.Module):
    """Log-probs of completion tokens in ONE forward, each distinct visual and each prompt computed once.

    One forward call matters under DDP/FSDP/DeepSpeed: wrap this module (accelerator.prepare), not the
    HF model, so gradient sync and parameter sharding see the whole computation. The HF model is `.hf`
    (with LoRA, the PeftModel around it: checkpoints then save the adapters).

    The vision tower encodes each distinct visual; the language model runs over the P left-padded
    prompts, recording their keys/values (SharedPromptCache), then over the R right-padded completions,
    row r attending to prompt prompt_index[r]: G completions of a prompt cost one prompt plus G
    completions, not G of both. Token t is predicted by the hidden state before it (the prompt's last
    one for t = 0); LM head at those positions only, float32 log-softmax, in chunks (head_logprobs).

    Shapes: input_ids, attention_mask [P, Lp]; visuals list of P; prompt_index, lengths [R];
    completion_ids [R, T] -> log-probs [R, T] float32, 0 past each row's length.
    """

    def __init__(self, hf, logprob_chunk=LOGPROB_CHUNK):
        super().__init__()
        self.hf = hf
        self.logprob_chunk = logprob_chunk  # tokens per chunk of the LM head (head_logprobs)

    def forward(self, input_ids, attention_mask, visuals, prompt_index, completion_ids, lengths, temperature=1.0):
        hf = base_model(self.hf)
        device = hf.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        prompt_index, completion_ids, lengths = prompt_index.to(device), completion_ids.to(device), lengths.to(device)
        T = completion_ids.shape[1]
        lm = hf.model.language_model
        positions = rope_positions(input_ids, attention_mask, visuals, hf.config)  # [3, P, Lp]
        completion_mask = torch.arange(T, device=device) < lengths[:, None]  # [R, T]
        prompts = SharedPromptCache(hf.config)  # use_cache=False below: HF would only add a cache of its own
        with cache_through_checkpointing(lm):
            prompt_hidden = lm(**embed_prompts(hf, input_ids, visuals),
                               attention_mask=attention_mask, position_ids=positions,
                               past_key_values=prompts,
                               use_cache=False).last_hidden_state  # [P, Lp, D]
            rows = SharedPromptCache(hf.config, prompts, prompt_index)
            hidden = lm(inputs_embeds=hf.get_input_embeddings()(completion_ids),
                        attention_mask=torch.cat([attention_mask[prompt_index], completion_mask.long()], dim=1),
                        position_ids=continue_positions(positions, T)[:, prompt_index],  # [3, R, T]
                        past_key_values=rows, use_cache=False).last_hidden_state  # [R, T, D]
        if rows.reads != len(lm.layers):  # never score completions that did not see their prompt
            raise RuntimeError(f"{rows.reads} of {len(lm.layers)} layers read the prompt cache")
        hidden = torch.cat([prompt_hidden[prompt_index, -1:], hidden[:, :-1]], dim=1)  # [R, T, D] before tokens 0..T-1
        logp = head_logprobs(hf.lm_head, hidden, completion_ids, temperature, self.logprob_chunk)  # [R, T]
        return logp.masked_fill(~completion_mask, 0.0)


def micro_batches(prompt_index, micro_batch_size):
    """Split rows 0..R-1 into consecutive chunks of at most micro_batch_size rows, cutting between
    prompt groups where possible (a chunk then encodes fewer distinct visuals).

    >>> micro_batches(torch.tensor([0, 0, 0, 1, 1, 2]), 4)
    [tensor([0, 1, 2]), tensor([3, 4, 5])]
    """
    index = prompt_index.tolist()
    R = len(index)
    if micro_batch_size is None or micro_batch_size >= R:
        return [torch.arange(R)]
    starts = [0] + [r for r in range(1, R) if index[r] != index[r - 1]] + [R]  # group bounds
    chunks, begin, end = [], 0, 0
    for group_end in starts[1:]:
        if group_end - begin > micro_batch_size:  # this group does not fit: close the chunk
            if end > begin:
                chunks.append(torch.arange(begin, end))
                begin = end
            while group_end - begin > micro_batch_size:  # a group larger than a micro-batch is cut
                chunks.append(torch.arange(begin, begin + micro_batch_size))
                begin += micro_batch_size
        end = group_end
    chunks.append(torch.arange(begin, end))
    return chunks


def token_logprobs(model, batch, prompt_index, completion_ids, lengths, temperature=1.0, micro_batch_size=None):
    """Log-probs [R, T] (float32) of each row's completion tokens; 0 past the row's length.

    model: an HF model or PeftModel (wrapped in VisionOnceLM on the fly) or a VisionOnceLM, possibly wrapped by
    accelerate (DDP/FSDP/DeepSpeed). batch: collate() output of the P prompts; prompt_index [R] says
    which prompt each row continues. Logits are divided by `temperature` (the sampling temperature,
    so that log-probs are those of the sampling policy). Gradients flow when grad is enabled; under a
    distributed wrapper call it once per micro-batch and backward before the next call.

    Micro-batches (see micro_batches) bound memory; each encodes only the visuals of its own prompts
    and trims the left padding and completion length it does not need.

    SFT is the same computation: the target (+ <|im_end|>) is the "completion", and
    loss = -(token_logprobs(model, batch, arange(P), target_ids, target_lengths).sum() / target_lengths.sum())
    is next-token cross-entropy over the assistant tokens only.

    >>> out = generate(hf, batch, n=8, max_new_tokens=64)
    >>> logp = token_logprobs(hf, batch, out["prompt_index"], out["completion_ids"], out["lengths"])  # [R, T]
    """
    policy = VisionOnceLM(model) if isinstance(base_model(model), PreTrainedModel) else model
    T = completion_ids.shape[1]
    outs = []
    for rows in micro_batches(prompt_index, micro_batch_size):
        used, local_index = torch.unique(prompt_index.cpu()[rows], return_inverse=True)  # prompts of this chunk
        mask = batch["attention_mask"][used]  # [p, Lp]
        first = int(mask.any(0).long().argmax())  # leading columns that are padding in every prompt
        Tc = max(1, int(lengths[rows].max()))
        logp = policy(batch["input_ids"][used][:, first:], mask[:, first:], [batch["visuals"][p] for p in used],
                      local_index, completion_ids[rows, :Tc], lengths[rows], temperature)  # [r, Tc]
        outs.append(F.pad(logp, (0, T - Tc)))
    return torch.cat(outs)  # [R, T]; chunks are consecutive rows in order


def sample_next(logits, temperature, top_p, generator, rows=None, num_rows=None):
    """Next token per row from logits [r, V]: argmax when temperature == 0, else a sample from
    softmax(logits / temperature) restricted to the smallest set of top tokens whose mass >= top_p.

    The sample is torch.multinomial(probs, 1)'s own method written out: q ~ Exp(1) per token, token =
    argmax(probs / q), the same tokens from the same generator. When these r rows are `rows` of a
    batch of num_rows, q is drawn for all num_rows rows and `rows` kept: a row gets the random numbers
    it would get if no row had left the batch.
    """
    if temperature == 0:
        return logits.argmax(-1)  # [r]
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # [r, V]
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)  # [r, V]
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # mass before it already reaches top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    q = torch.empty(len(probs) if rows is None else num_rows, probs.shape[1], dtype=probs.dtype,
                    device=probs.device).exponential_(generator=generator)  # [num_rows, V]
    return (probs / (q if rows is None else q[rows])).argmax(-1)  # [r]


class RolloutCache(StaticCache):
    """A StaticCache that stores new keys and values in the dtype of its buffers. Under autocast (fp32 weights,
    bf16 compute: the policy during T-GRPO rollouts) k_proj and v_proj give bf16 but RoPE's float32 cos/sin
    turn the keys back into float32, so a decoding step brings float32 keys and bf16 values, which a plain
    StaticCache (buffers of one dtype, float32 from the prefill) refuses to copy."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        layer = self.layers[layer_idx]
        if layer.is_initialized:
            key_states, value_states = key_states.to(layer.keys.dtype), value_states.to(layer.values.dtype)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


def generate(model, batch, n, max_new_tokens, temperature=1.0, top_p=1.0, generator=None, stop_ids=None):
    """Sample n completions for each of P prompts with a KV cache, prompts prefilled once.

    The P prompts are prefilled together as one left-padded batch (vision once); each prompt's cache
    is copied into its n rows; all R = sum(n) rows then decode together. A row is finished once it
    emits a stop id (pad tokens after it). No idle rows: once finished rows make up a quarter of the
    batch they are dropped from it and from the cache (a copy each time the batch shrinks by a quarter
    or more), so rows that stopped stop costing compute. The random numbers are still drawn for all R rows
    (sample_next), so the samples are the same as without compaction.

    model: HF model (or a PeftModel: its adapters are used). batch: collate() output. n: int or list
    of P ints. temperature 0 = greedy.
    stop_ids: default generation_config.eos_token_id; [] = never stop. generator: torch.Generator on
    the model's device, for reproducible samples. The model is put in eval mode (which also switches
    HF gradient checkpointing off, it only runs in training mode) and restored afterwards.

    Returns {"prompt_index": [R], "completion_ids": [R, T] (pad id after the end),
             "lengths": [R] (tokens incl. the stop token), "truncated": [R] bool (no stop token)}.

    >>> out = generate(hf, batch, n=[2, 1], max_new_tokens=5)  # 2 prompts -> 3 rows
    >>> out["prompt_index"], out["lengths"], out["truncated"]
    (tensor([0, 0, 1]), tensor([5, 3, 5]), tensor([True, False, True]))
    """
    model = base_model(model)
    device = model.device
    P = batch["input_ids"].shape[0]
    counts = torch.tensor([n] * P if isinstance(n, int) else list(n))  # [P]
    prompt_index = torch.repeat_interleave(torch.arange(P), counts).to(device)  # [R]
    if stop_ids is None:
        stop_ids = model.generation_config.eos_token_id
    stop_ids = torch.tensor([stop_ids] if isinstance(stop_ids, int) else list(stop_ids), dtype=torch.long,
                            device=device)
    pad_id = model.generation_config.pad_token_id
    lm, embed = model.model.language_model, model.get_input_embeddings()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)  # [P, L]
            positions = rope_positions(input_ids, mask, batch["visuals"], model.config)  # [3, P, L]
            out = lm(**embed_prompts(model, input_ids, batch["visuals"]), attention_mask=mask,
                     position_ids=positions, use_cache=True)
            L = input_ids.shape[1]
            # each prompt's cache copied into its n rows, in a cache preallocated for the whole rollout
            # (a growing cache would copy all keys and values at every step)
            cache = RolloutCache(config=model.config, max_cache_len=L + max_new_tokens)
            for layer, prefilled in zip(cache.layers, out.past_key_values.layers):
                if linear_state.is_linear(layer):  # Qwen3.5: conv and recurrent states, no keys
                    linear_state.copy_rows(layer, prefilled, prompt_index)
                else:  # [R, H, L, d]
                    layer.update(prefilled.keys[prompt_index], prefilled.values[prompt_index])
            logits = model.lm_head(out.last_hidden_state[prompt_index, -1])  # [R, V]
            mask = F.pad(mask[prompt_index], (0, max_new_tokens), value=1)  # [R, L+max_new_tokens]
            next_pos = continue_positions(positions, max_new_tokens)[:, prompt_index]  # [3, R, max_new_tokens]
            R = len(prompt_index)
            live = torch.arange(R, device=device)  # [r] the rows still in the batch
            finished = torch.zeros(R, dtype=torch.bool, device=device)  # [R]
            lengths = torch.full((R,), max_new_tokens, dtype=torch.long, device=device)  # [R]
            completion_ids = torch.full((R, max_new_tokens), pad_id, dtype=torch.long, device=device)  # [R, T]
            for step in range(max_new_tokens):
                done = finished[live]  # [r]
                token = sample_next(logits, temperature, top_p, generator, live, R).masked_fill(done, pad_id)  # [r]
                completion_ids[live, step] = token
                stopped = live[~done & torch.isin(token, stop_ids)]  # rows that stop here
                lengths[stopped] = step + 1
                finished[stopped] = True
                if finished.all() or step == max_new_tokens - 1:
                    break
                done = finished[live]
                if 4 * int(done.sum()) >= len(live):  # a quarter of the batch is idle: drop those rows
                    keep = (~done).nonzero().squeeze(1)  # [r']
                    live, token, mask, next_pos = live[keep], token[keep], mask[keep], next_pos[:, keep]
                    for layer in cache.layers:
                        if linear_state.is_linear(layer):
                            linear_state.keep_rows(layer, keep)
                        else:  # [r', H, L+max_new, d]
                            layer.keys, layer.values = layer.keys[keep], layer.values[keep]
                # the mask covers the tokens so far; HF pads it with zeros over the cache's empty slots
                out = lm(inputs_embeds=embed(token[:, None]), attention_mask=mask[:, :L + step + 1],
                         position_ids=next_pos[:, :, step:step + 1], past_key_values=cache, use_cache=True)
                logits = model.lm_head(out.last_hidden_state[:, -1])  # [r, V]
    finally:
        model.train(was_training)
    return {"prompt_index": prompt_index, "completion_ids": completion_ids[:, :step + 1],  # [R, T]
            "lengths": lengths, "truncated": ~finished}


if __name__ == "__main__":
    import sys
    if len(sys.argv) != 4 or sys.argv[1] != "merge":
        sys.exit("usage: python model.py merge <LoRA checkpoint> <out_dir>   (writes the merged Hugging Face model)")
    save_merged(sys.argv[2], sys.argv[3])
