"""families.py: what differs between the model families the project trains, one block per family.

    family = families.of(hf.config)      # from config.model_type; an unknown type is an error
    family.patch_size, family.image_mean, family.lora_targets, ...

Both families cut frames into 2-frame temporal patches and merge 2x2 patches into one LLM token, and
place a visual's tokens on the M-RoPE axes (temporal, height, width) the same way. They differ in:
- Qwen2.5-VL: 14-pixel patches (sides multiples of 28), CLIP normalisation, a video is ONE run of
  pad tokens whose temporal position ids grow with time (second_per_grid_t * tokens_per_second).
- Qwen3-VL: 16-pixel patches (sides multiples of 32), mean = std = 0.5, a video is one run per
  temporal patch, each preceded by a text timestamp "<1.2 seconds>" and placed like an image (time
  is in the text, not in the position ids); DeepStack: features of three vision levels are added
  to the hidden states of the first language layers at the visual positions.
- Qwen3.5: Qwen3-VL's vision input without DeepStack; a hybrid language model (three of four
  layers Gated DeltaNet, linear attention with conv and recurrent states: linear_state.py) and a
  chat template that opens "<think>\\n" in the prompt (assistant_prefill).
A reader of one family can skip the other's block. The M-RoPE positions of a batch (rope_positions,
used through model.py) are here too: one rule for both families, visual_runs being the difference.
"""
from dataclasses import dataclass, replace

import torch
from transformers import (Qwen2_5_VLForConditionalGeneration, Qwen3_5ForConditionalGeneration,
                          Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration)

TEMPORAL_PATCH_SIZE = 2   # frames per temporal patch (both families)
MERGE_SIZE = 2            # 2x2 patches -> one LLM token (both families)


@dataclass(frozen=True)
class Family:
    name: str                # config.model_type
    model_class: type        # the Hugging Face class a checkpoint loads into
    patch_size: int          # ViT patch side in pixels; frame sides are multiples of patch_size * 2
    image_mean: tuple        # per-channel normalisation the ViT was trained with
    image_std: tuple
    timestamps: bool         # video time as text "<t seconds>" before each temporal patch
    deepstack: bool          # vision levels added to the first language layers' hidden states
    system_prompt: str       # the system turn the chat template adds when none is given ("": none)
    thinking: bool           # chat template may open "<think>\\n" in the prompt (assistant_prefill)
    lora_targets: dict       # LoRA part -> PEFT full-match regex over the module names

    @property
    def factor(self):
        """Frame sides are multiples of this many pixels (one merged token's side)."""
        return self.patch_size * MERGE_SIZE


LANGUAGE_LORA = (r"model\.language_model\.layers\.\d+\."
                 r"(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)")

# Qwen2.5-VL: CLIP statistics; the vision MLP is gated like the language one.
QWEN2_5_VL = Family(
    name="qwen2_5_vl", model_class=Qwen2_5_VLForConditionalGeneration, patch_size=14,
    image_mean=(0.48145466, 0.4578275, 0.40821073), image_std=(0.26862954, 0.26130258, 0.27577711),
    timestamps=False, deepstack=False, system_prompt="You are a helpful assistant.",
    thinking=False,
    lora_targets={"language": LANGUAGE_LORA,
                  "vision": r"model\.visual\.(blocks\.\d+\.(attn\.(qkv|proj)"
                            r"|mlp\.(gate|up|down)_proj)|merger\.mlp\.[02])"})

# Qwen3-VL: SigLIP-2 statistics (mean = std = 0.5); plain 2-layer vision MLPs, and one merger per
# DeepStack level beside the final one; the chat template adds no system turn.
QWEN3_VL = Family(
    name="qwen3_vl", model_class=Qwen3VLForConditionalGeneration, patch_size=16,
    image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
    timestamps=True, deepstack=True, system_prompt="", thinking=False,
    lora_targets={"language": LANGUAGE_LORA,
                  "vision": r"model\.visual\.(blocks\.\d+\.(attn\.(qkv|proj)|mlp\.linear_fc[12])"
                            r"|(merger|deepstack_merger_list\.\d+)\.linear_fc[12])"})

# Qwen3-VL-MoE (30B-A3B, 235B-A22B): Qwen3-VL with mixture-of-experts MLPs. The experts are fused
# tensors, not Linear layers, so "language" LoRA adapts the attention projections (and any dense MLP
# layers), not the experts.
QWEN3_VL_MOE = replace(QWEN3_VL, name="qwen3_vl_moe",
                       model_class=Qwen3VLMoeForConditionalGeneration)

# Qwen3.5: Qwen3-VL's vision input (processor, timestamps, patch 16) without DeepStack; the language
# model is hybrid: three of four layers are Gated DeltaNet (linear attention: a convolution state
# and a recurrent state instead of keys/values, linear_state.py), the fourth full attention.
QWEN3_5 = Family(
    name="qwen3_5", model_class=Qwen3_5ForConditionalGeneration, patch_size=16,
    image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
    timestamps=True, deepstack=False, system_prompt="", thinking=True,
    lora_targets={"language": r"model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|"
                              r"linear_attn\.(in_proj_(qkv|z|a|b)|out_proj)|"
                              r"mlp\.(gate|up|down)_proj)",
                  "vision": r"model\.visual\.(blocks\.\d+\.(attn\.(qkv|proj)|mlp\.linear_fc[12])"
                            r"|merger\.linear_fc[12])"})

FAMILIES = {f.name: f for f in (QWEN2_5_VL, QWEN3_VL, QWEN3_VL_MOE, QWEN3_5)}


def of(config):
    """The Family of a Hugging Face config (or a model_type string); an unknown one is a ValueError
    naming the supported ones."""
    model_type = config if isinstance(config, str) else config.model_type
    if model_type not in FAMILIES:
        raise ValueError(f"model_type {model_type!r} is not supported; "
                         f"supported: {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def assistant_prefill(tokenizer, path, family):
    """The text the checkpoint's chat template opens the assistant turn with, which the prompt then
    ends with: "" (Instruct templates: the completion opens <think> itself) or "<think>\\n"
    (Qwen3.5, which thinks by default: the completion starts inside the think block; data.collate
    appends it to every prompt, model.completion_texts puts it back before the rewards read a
    completion, data.after_prefill drops it from the SFT targets). For a family not marked
    `thinking` (Qwen3-VL, whose Instruct checkpoints are the ones trained) such a template is
    refused with the reason."""
    if tokenizer.chat_template is None:
        return ""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "?"}], tokenize=False,
                                           add_generation_prompt=True)
    if not prompt.endswith("<think>\n"):
        return ""
    if not family.thinking:
        raise ValueError(f"{path} is a Thinking checkpoint (its prompt ends with '<think>\\n'); this "
                         f"project trains Instruct checkpoints, whose completions open <think> themselves")
    return "<think>\n"


def patch_timestamps(frame_seconds):
    """Qwen3-VL: one timestamp per temporal patch, the mean of its first and last frame's time (the
    processor's rule; an odd count repeats the last frame, as patchify does).

    >>> patch_timestamps([0.0, 0.5, 1.0, 1.5])
    [0.25, 1.25]
    """
    s = list(frame_seconds)
    s += s[-1:] * (len(s) % TEMPORAL_PATCH_SIZE)
    k = TEMPORAL_PATCH_SIZE
    return [(s[i] + s[i + k - 1]) / 2 for i in range(0, len(s), k)]


def video_text(family, visual, pad_token, start="<|vision_start|>", end="<|vision_end|>"):
    """The text that replaces a video prompt's "<|vision_start|><|video_pad|><|vision_end|>".

    Qwen2.5-VL: the pad repeated once per merged token, inside the one start/end pair.
    Qwen3-VL (the format of the released checkpoints, transformers 4.57's processor): per temporal
    patch "<t seconds>" + start + pads + end, with NO outer pair; the 5.10+ processor keeps the
    template's outer pair around it all (vLLM #46817), a format the checkpoints were not trained on.
    >>> video_text(QWEN3_VL, {"grid_thw": tensor([2, 2, 2]), "timestamps": [0.25, 1.25]}, "<p>")
    '<0.2 seconds><|vision_start|><p><|vision_end|><1.2 seconds><|vision_start|><p><|vision_end|>'
    """
    t, h, w = visual["grid_thw"].tolist()
    per_patch = h * w // MERGE_SIZE ** 2
    if not family.timestamps:
        return start + pad_token * (t * per_patch) + end
    if len(visual["timestamps"]) != t:
        raise ValueError(f"{len(visual['timestamps'])} timestamps for {t} temporal patches")
    return "".join(f"<{s:.1f} seconds>{start}{pad_token * per_patch}{end}"
                   for s in visual["timestamps"])


def visual_runs(family, visual, tokens_per_second=None):
    """The runs of pad tokens a visual occupies in the prompt, in order, as (temporal ids [t], rows,
    cols) in merged-token units; each run is placed on the M-RoPE axes from its first token on.

    Qwen2.5-VL: one run; a video's temporal ids grow with time: int(i * tokens_per_second * spg).
    Qwen3-VL: a video is one run per temporal patch, each placed like an image (temporal id 0).
    """
    t, h, w = visual["grid_thw"].tolist()
    h, w = h // MERGE_SIZE, w // MERGE_SIZE
    if visual["kind"] == "image":
        return [(torch.zeros(t, dtype=torch.long), h, w)]
    if family.timestamps:
        return [(torch.zeros(1, dtype=torch.long), h, w)] * t
    # float32 as in HF, so the truncation agrees bit for bit
    interval = tokens_per_second * torch.tensor(visual["second_per_grid_t"])
    return [((torch.arange(t) * interval).long(), h, w)]  # e.g. [0, 2, 4, 6]


def rope_positions(input_ids, attention_mask, visuals, config):
    """M-RoPE position ids [3, B, L] (temporal, height, width axes) of a left-padded batch.

    Text tokens count up by one on all three axes. A visual is one or more runs of pad tokens
    (visual_runs: Qwen3-VL puts each temporal patch of a video in a run of its own); a run
    starting at position s gets, per merged token at (temporal patch i, row y, column x): temporal
    s + t_ids[i] (0 for images and Qwen3-VL; Qwen2.5-VL videos int(i * tokens_per_second * spg)),
    height s + y, width s + x. The text after a run resumes at the largest position so far + 1
    (Qwen2.5-VL's rule; transformers 5.23's Qwen2.5-VL get_rope_index instead resumes at
    s + max(rows, cols), which differs for videos whose temporal ids outrun their height/width; for
    Qwen3-VL the two rules agree). Pads get 0 (they are masked). visuals[b]: row b's visual or None.

    Example: image with grid_thw (1, 4, 6), i.e. 2x3 merged tokens I, one left pad:
        tokens    pad  sys <vs>  I  I  I  I  I  I <ve> txt
        temporal   0    0    1   2  2  2  2  2  2   5   6
        height     0    0    1   2  2  2  3  3  3   5   6
        width      0    0    1   2  3  4  2  3  4   5   6
    """
    family = of(config)
    tokens_per_second = getattr(config.vision_config, "tokens_per_second", None)
    positions = torch.zeros(3, *input_ids.shape, dtype=torch.long)  # [3, B, L]
    rows = zip(input_ids.cpu(), attention_mask.cpu().bool(), visuals)
    for b, (ids, mask, visual) in enumerate(rows):
        ids = ids[mask]  # [n] the row without its left padding
        is_vis = (ids == config.image_token_id) | (ids == config.video_token_id)  # [n]
        runs = []
        if visual is not None:
            if visual["family"] != family.name:
                raise ValueError(f"row {b}: a {visual['family']} visual for a {family.name} model")
            runs = visual_runs(family, visual, tokens_per_second)
        elif is_vis.any():
            raise ValueError(f"row {b}: visual pad tokens but no visual")
        pieces, pos, cursor = [], 0, 0  # cursor: next token of the row; pos: its position
        for t_ids, h, w in runs:
            start = cursor + int(is_vis[cursor:].long().argmax())  # first pad of this run
            n = len(t_ids) * h * w
            run = ids[start:start + n]
            if not is_vis[cursor:].any() or len(run) < n or (run != pad_id(config, visual)).any():
                raise ValueError(f"row {b}: expected {len(runs)} run(s) of {n} {visual['kind']} "
                                 f"pad tokens, found {int(is_vis.sum())} pads")
            pieces.append(torch.arange(start - cursor).expand(3, -1) + pos)  # text before the run
            grid = torch.meshgrid(t_ids, torch.arange(h), torch.arange(w), indexing="ij")
            vis = torch.stack(grid).reshape(3, -1) + pos + start - cursor  # [3, n]
            pieces.append(vis)
            pos, cursor = int(vis.max()) + 1, start + n
        if is_vis[cursor:].any():
            raise ValueError(f"row {b}: {int(is_vis.sum())} visual pad tokens, more than its "
                             f"visual has")
        pieces.append(torch.arange(len(ids) - cursor).expand(3, -1) + pos)  # text after
        positions[:, b, mask] = torch.cat(pieces, dim=1)
    return positions.to(input_ids.device)


def pad_id(config, visual):
    """The pad token id of a visual's kind."""
    return config.image_token_id if visual["kind"] == "image" else config.video_token_id


def continue_positions(positions, steps):
    """Positions [3, B, steps] of the tokens that follow a prompt: max prompt position + 1, + 2, ...
    on all three axes (generated text is text). positions: [3, B, L] from rope_positions."""
    start = positions.amax(dim=(0, 2)) + 1  # [B]
    steps = torch.arange(steps, device=positions.device)
    return (start[:, None] + steps).expand(3, -1, -1)  # [3, B, steps]
