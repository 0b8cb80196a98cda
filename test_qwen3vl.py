"""Qwen3-VL against Hugging Face's own code, on a tiny random Qwen3-VL (DeepStack included):
loading by family, vision input (the PIL image processor configured as Qwen3-VL's, the processor's
timestamp and token-expansion code), M-RoPE positions (get_rope_index), the engine (generate,
token_logprobs, prompt-once gradients) and T-GRPO's shuffle with timestamps.
Run: python -m pytest -q test_qwen3vl.py
"""

import functools
import json
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

import data
import families
from conftest import run_script
from demo import make_tiny_checkpoint
from families import QWEN3_VL
from model import (
    VisionOnceLM,
    embed_prompts,
    generate,
    load_model,
    rope_positions,
    stop_token_ids,
    token_logprobs,
)
from test_data import video_file  # noqa: F401 (a fixture)
from test_model import (
    TEXTS,
    assert_grads_equal,
    ddp_half,
    ddp_rows,
    frames,
    grads_of,
    hf_completion_logprobs,
    hf_inputs,
    random_completions,
    row,
    text_prompt,
)


@pytest.fixture(scope="module")
def ckpt3(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen3-vl")
    make_tiny_checkpoint(path, TEXTS, model_type="qwen3_vl")
    return path


@pytest.fixture(scope="module")
def loaded3(ckpt3):
    return load_model(ckpt3)


def video(T, H, W, seed, fps=2.0, indices=None, family=QWEN3_VL):
    """A Qwen3-VL video visual: T frames, frame i at indices[i] / fps seconds."""
    indices = list(range(T)) if indices is None else indices
    return data.make_visual(frames(T, H, W, seed), [i / fps for i in indices], family)


def image(H, W, seed, family=QWEN3_VL):
    return data.make_visual(frames(1, H, W, seed), None, family)


def mixed_batch3(tokenizer, family=QWEN3_VL):
    """Left-padded: video (2 temporal patches of 4x4 tokens), image (2x3 tokens), text only, video
    (3 temporal patches of 2x4 tokens, frames sampled unevenly from a 3 fps video)."""
    visuals = [
        video(4, 128, 128, 0, family=family),
        image(64, 96, 1, family=family),
        None,
        video(6, 64, 128, 2, fps=3.0, indices=[0, 3, 7, 10, 14, 17], family=family),
    ]
    prompts = [
        data.prompt_text(row("video", "Which way does it move?"), "train", family),
        data.prompt_text(row("image", "What colour?"), "train", family),
        text_prompt("How many squares are there? Please think."),
        data.prompt_text(row("video", "Why?"), "train", family),
    ]
    return data.collate(prompts, visuals, tokenizer)


def test_load_by_family_and_refuse_what_does_not_load(ckpt3, loaded3, tmp_path):
    model, tokenizer = loaded3
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert len(model.config.vision_config.deepstack_visual_indexes) == 2
    assert (
        tokenizer.convert_tokens_to_ids("</think>")
        == tokenizer.convert_tokens_to_ids("<think>") + 1
    )
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Why?"}]}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Why?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # data.prompt_text follows the family's template: no default system turn on Qwen3-VL
    r = row("video", "Why?")
    question = data.QUESTION_TEMPLATE.format(Question=data.question_text(r))
    text = question + data.TYPE_TEMPLATE[r["problem_type"]]
    user = [{"type": "video"}, {"type": "text", "text": text}]
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    assert data.prompt_text(r, "train", QWEN3_VL) == rendered
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert data.prompt_text(r) == system + rendered  # Qwen2.5-VL's default
    supported = r"supported: \['qwen2_5_vl', 'qwen3_5', 'qwen3_vl', 'qwen3_vl_moe'\]"
    with pytest.raises(ValueError, match=supported):
        families.of("llava")
    # the weights of a checkpoint must all load: one missing tensor is an error, not a random init
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / f).write_bytes((ckpt3 / f).read_bytes())
    weights = load_file(ckpt3 / "model.safetensors")
    name = "model.visual.deepstack_merger_list.1.linear_fc2.weight"
    save_file(
        {k: v for k, v in weights.items() if k != name},
        broken / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(ValueError, match="deepstack_merger_list.1.linear_fc2.weight"):
        load_model(broken)
    # the same weights under a Qwen2.5-VL config (what load_model did with any checkpoint before)
    config = json.loads((ckpt3 / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "qwen2_5_vl"}))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match="do not load into Qwen2_5_VLForConditionalGeneration.*missing_keys"
    ):
        load_model(broken)


@pytest.mark.parametrize("h, w", [(32, 32), (64, 96), (128, 64)])
def test_patchify_matches_hf_pil_processor_as_qwen3vl_on_frame_pairs(h, w):
    """Each temporal patch of a 4-frame video against the PIL image processor configured as
    Qwen3-VL's (patch 16, mean = std = 0.5), which repeats one image over the patch's two temporal
    slots: slot k of our patch equals slot k of the processor's output on frame k of the pair."""
    rng = np.random.default_rng(h * w)
    video_u8 = rng.integers(0, 256, (4, h, w, 3), dtype=np.uint8)  # [T, H, W, 3]
    x = torch.from_numpy(video_u8).permute(0, 3, 1, 2).float() / 255  # [T, 3, H, W]
    pixel_values, grid = data.patchify(x, QWEN3_VL)
    proc = Qwen2VLImageProcessorPil(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        min_pixels=32 * 32,
        max_pixels=4096 * 32 * 32,
    )
    n = h * w // 256
    assert grid.tolist() == [2, h // 16, w // 16] and pixel_values.shape == (2 * n, 3 * 2 * 16 * 16)
    ours = pixel_values.reshape(2, n, 3, 2, 16 * 16)  # [pair, patch, C, slot, p*p]
    for i in range(4):
        out = proc(images=video_u8[i], return_tensors="np")
        assert out["image_grid_thw"][0].tolist() == [1, h // 16, w // 16]
        hf = torch.from_numpy(out["pixel_values"]).reshape(n, 3, 2, 16 * 16)
        torch.testing.assert_close(ours[i // 2, :, :, i % 2], hf[:, :, i % 2], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="multiples of 32"):
        data.patchify(torch.zeros(2, 3, 56, 56), QWEN3_VL)


def hf_expansion(visual, indices, fps):
    """Qwen3VLProcessor's own replace_video_token (transformers 5.23) for one video."""
    proc = types.SimpleNamespace(
        video_processor=types.SimpleNamespace(merge_size=2, temporal_patch_size=2),
        vision_start_token="<|vision_start|>",
        vision_end_token="<|vision_end|>",
        video_token="<|video_pad|>",
        _calculate_timestamps=functools.partial(Qwen3VLProcessor._calculate_timestamps, None),
    )
    inputs = {
        "video_grid_thw": visual["grid_thw"][None],
        "video_metadata": [types.SimpleNamespace(fps=fps, frames_indices=list(indices))],
    }
    return Qwen3VLProcessor.replace_video_token(proc, inputs, 0)


def test_video_tokens_follow_the_release_processor(ckpt3, video_file):
    """Timestamps from the kept frame indices and fps, and the expanded token sequence, against the
    processor's own code. The one deliberate difference: transformers >= 5.10 replaces only the
    <|video_pad|>, so the template's outer <|vision_start|>...<|vision_end|> pair stays around the
    timestamped groups; the release-time processor (4.57, what Qwen3-VL was trained with) replaced
    the whole "<|vision_start|><|video_pad|><|vision_end|>"; we follow the release."""
    tokenizer = AutoTokenizer.from_pretrained(ckpt3)
    # a real decode: 16 frames at 4 fps, 8 kept at indices [0, 2, 4, 6, 9, 11, 13, 15]
    x, seconds = data.load_video(
        video_file, max_frames=8, min_pixels=64 * 64, max_pixels=64 * 64, family=QWEN3_VL
    )
    indices = [0, 2, 4, 6, 9, 11, 13, 15]
    assert x.shape == (8, 3, 64, 64) and seconds == [i / 4 for i in indices]
    visual = data.make_visual(x, seconds, QWEN3_VL)
    assert visual["timestamps"] == Qwen3VLProcessor._calculate_timestamps(None, indices, 4.0, 2)
    assert visual["timestamps"] == [0.25, 1.25, 2.5, 3.5]
    prompt = data.prompt_text(row("video", "Which way?"))
    replacement = hf_expansion(visual, indices, 4.0)
    release = prompt.replace("<|vision_start|><|video_pad|><|vision_end|>", replacement)
    v5 = prompt.replace("<|video_pad|>", replacement)
    assert v5 == release.replace(
        replacement, "<|vision_start|>" + replacement + "<|vision_end|>"
    )  # the line
    ids = data.collate([prompt], [visual], tokenizer)["input_ids"][0]
    assert ids.tolist() == tokenizer.encode(release, add_special_tokens=False)
    text = tokenizer.decode(ids)
    assert (
        "user\n<0.2 seconds><|vision_start|>" + "<|video_pad|>" * 4 + "<|vision_end|><1.2 seconds>"
        in text
    )
    assert (
        text.count("<|vision_start|>") == 4
        and (ids == tokenizer.convert_tokens_to_ids("<|video_pad|>")).sum() == 16
    )


def test_rope_positions_match_hf_get_rope_index(loaded3):
    model, tokenizer = loaded3
    batch = mixed_batch3(tokenizer)
    mask = batch["attention_mask"]
    assert (mask[:, 0] == 0).any() and len(
        set(mask.sum(1).tolist())
    ) == 4  # left padding, 4 lengths
    ours = rope_positions(batch["input_ids"], mask, batch["visuals"], model.config)  # [3, B, L]
    inputs = hf_inputs(batch["input_ids"], batch["visuals"], model.config)
    theirs, _ = model.model.get_rope_index(
        batch["input_ids"],
        inputs["mm_token_type_ids"],
        inputs["image_grid_thw"],
        inputs["video_grid_thw"],
        mask,
    )
    assert torch.equal(ours, theirs)
    # a video's temporal patches are placed like images: a patch's tokens share one temporal id
    vid = batch["input_ids"][0] == model.config.video_token_id
    assert ours[0, 0, vid].unique().numel() == 2
    with pytest.raises(ValueError, match="qwen2_5_vl visual for a qwen3_vl model"):
        rope_positions(
            batch["input_ids"][1:2],
            mask[1:2],
            [dict(batch["visuals"][1], family="qwen2_5_vl")],
            model.config,
        )


def test_deepstack_reaches_the_language_model(loaded3):
    """Left out, DeepStack raises no error but changes the output: the prompt's inputs carry it."""
    model, tokenizer = loaded3
    batch = mixed_batch3(tokenizer)
    inputs = embed_prompts(model, batch["input_ids"], batch["visuals"])
    n_vis = int(inputs["visual_pos_masks"].sum())
    assert [e.shape for e in inputs["deepstack_visual_embeds"]] == [(n_vis, 64)] * 2
    lm = model.model.language_model
    positions = rope_positions(
        batch["input_ids"], batch["attention_mask"], batch["visuals"], model.config
    )
    with torch.no_grad():
        full = lm(
            **inputs, attention_mask=batch["attention_mask"], position_ids=positions
        ).last_hidden_state
        bare = lm(
            inputs_embeds=inputs["inputs_embeds"],
            attention_mask=batch["attention_mask"],
            position_ids=positions,
        ).last_hidden_state
    assert (full - bare)[:, -1].abs().max() > 1e-3


def test_greedy_generate_matches_hf_generate(loaded3):
    model, tokenizer = loaded3
    batch = mixed_batch3(tokenizer)
    out = generate(model, batch, n=1, max_new_tokens=10, temperature=0)
    model.model.rope_deltas = None
    hf_out = model.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        **hf_inputs(batch["input_ids"], batch["visuals"], model.config),
        do_sample=False,
        max_new_tokens=10,
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    assert torch.equal(out["completion_ids"], hf_out[:, batch["input_ids"].shape[1] :])
    assert (out["lengths"] > 5).all() and len(
        {tuple(r) for r in out["completion_ids"].tolist()}
    ) == 4
    copies = generate(model, batch, n=[2, 1, 1, 3], max_new_tokens=10, temperature=0)
    assert torch.equal(copies["completion_ids"], out["completion_ids"][copies["prompt_index"]])


def test_token_logprobs_and_prompt_once_gradients_match_hf(loaded3):
    model, tokenizer = loaded3
    batch = mixed_batch3(tokenizer)
    prompt_index, completion_ids, lengths = random_completions(tokenizer, [3, 2, 1, 2], T=6, seed=0)
    weights = torch.randn(
        completion_ids.shape, generator=torch.Generator().manual_seed(1)
    )  # [R, T]
    logp, ours = grads_of(
        model,
        lambda: token_logprobs(
            VisionOnceLM(model), batch, prompt_index, completion_ids, lengths, temperature=0.7
        ),
        weights,
    )
    ref, theirs = grads_of(
        model,
        lambda: hf_completion_logprobs(
            model, batch, prompt_index, completion_ids, lengths, temperature=0.7
        )[0],
        weights,
    )
    torch.testing.assert_close(logp, ref, atol=1e-5, rtol=0)
    assert ours["model.visual.deepstack_merger_list.1.linear_fc2.weight"].abs().sum() > 0
    assert_grads_equal(ours, theirs)
    with torch.no_grad():
        chunked = token_logprobs(
            model, batch, prompt_index, completion_ids, lengths, temperature=0.7, micro_batch_size=3
        )
    torch.testing.assert_close(chunked, ref, atol=1e-5, rtol=0)


def test_shuffle_timestamps_keep_and_follow(ckpt3):
    """keep: the shuffled prompt's tokens equal the ordered prompt's (only the pixels differ), as on
    Qwen2.5-VL. follow: each patch's timestamp is the mean of its two frames' original times."""
    tokenizer = AutoTokenizer.from_pretrained(ckpt3)
    x, seconds = frames(8, 32, 32, 0), [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    prompt = data.prompt_text(row("video", "Which way?"))
    ordered = data.make_visual(x, seconds, QWEN3_VL)
    text = lambda v: tokenizer.decode(data.collate([prompt], [v], tokenizer)["input_ids"][0])
    stamps = lambda v: ["<" + s.rsplit("<", 1)[1] for s in text(v).split("<|vision_start|>")[:-1]]
    assert stamps(ordered) == ["<0.2 seconds>", "<1.2 seconds>", "<2.2 seconds>", "<3.2 seconds>"]
    for level in ("frame", "patch"):
        order = data.shuffle_order(8, torch.Generator().manual_seed(3), level).tolist()
        kept = data.make_visual(
            *data.shuffle_video(x, seconds, torch.Generator().manual_seed(3), level, "keep"),
            QWEN3_VL,
        )
        moved = data.make_visual(
            *data.shuffle_video(x, seconds, torch.Generator().manual_seed(3), level, "follow"),
            QWEN3_VL,
        )
        assert torch.equal(kept["pixel_values"], moved["pixel_values"])
        assert not torch.equal(kept["pixel_values"], ordered["pixel_values"])
        ids = lambda v: data.collate([prompt], [v], tokenizer)["input_ids"]
        assert torch.equal(ids(kept), ids(ordered))
        expected = [(seconds[order[2 * i]] + seconds[order[2 * i + 1]]) / 2 for i in range(4)]
        assert moved["timestamps"] == expected != ordered["timestamps"]
        assert stamps(moved) == [f"<{s:.1f} seconds>" for s in expected]
    with pytest.raises(ValueError, match="keep' or 'follow"):
        data.shuffle_video(x, seconds, torch.Generator(), "frame", "sorted")


def test_lora_targets_cover_the_qwen3vl_layers(loaded3):
    import re

    model, _ = loaded3
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for part, pattern in QWEN3_VL.lora_targets.items():
        hit = [n for n in names if re.fullmatch(pattern, n)]
        assert hit, part
    vision = [n for n in names if n.startswith("model.visual.")]
    assert all(re.fullmatch(QWEN3_VL.lora_targets["vision"], n) for n in vision)
    language = [n for n in names if n.startswith("model.language_model.")]
    assert all(re.fullmatch(QWEN3_VL.lora_targets["language"], n) for n in language)


def test_thinking_checkpoints_are_refused(ckpt3, tmp_path):
    """Qwen3-VL-Thinking's template opens the think block in the prompt: refused, with why."""
    from demo import QWEN3_CHAT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(ckpt3)
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE.replace(
        "<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\n<think>\n{% endif %}"
    )
    assert tokenizer.chat_template != QWEN3_CHAT_TEMPLATE
    thinking = tmp_path / "thinking"
    tokenizer.save_pretrained(thinking)
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        (thinking / f).write_bytes((ckpt3 / f).read_bytes())
    with pytest.raises(ValueError, match="is a Thinking checkpoint"):
        load_model(thinking)
    load_model(ckpt3)  # the Instruct template of the same checkpoint loads


@pytest.mark.slow
def test_qwen3vl_8b_widths_match_hf(ckpt3):
    """Qwen3-VL-8B-Instruct's widths (text 4096 wide, 32 query heads and 8 KV heads of 128, MLP
    12288, rope_theta 5e6, interleaved mrope_section [24, 20, 20]; vision 1152 wide, 16 heads, MLP
    4304, out 4096, 2304 position embeddings), random weights, 3 vision blocks each feeding
    DeepStack and 4 language layers (3 with DeepStack, as the real model's first 3); the tiny
    tokenizer's vocabulary. Positions = get_rope_index, log-probs = HF's forward, greedy generate =
    HF generate, as on the tiny model."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(ckpt3)
    tiny = json.loads((ckpt3 / "config.json").read_text())
    ids = {
        k: tiny[k]
        for k in (
            "image_token_id",
            "video_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
        )
    }
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=4,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            rope_parameters=dict(
                rope_type="default",
                rope_theta=5e6,
                mrope_section=[24, 20, 20],
                mrope_interleaved=True,
            ),
            rms_norm_eps=1e-6,
        ),
        vision_config=dict(
            depth=3,
            hidden_size=1152,
            intermediate_size=4304,
            num_heads=16,
            out_hidden_size=4096,
            patch_size=16,
            temporal_patch_size=2,
            spatial_merge_size=2,
            num_position_embeddings=2304,
            deepstack_visual_indexes=[0, 1, 2],
        ),
        tie_word_embeddings=False,
        **ids,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Qwen3VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # mixed_batch3's layout behind short questions (text tokens cost the most at these widths)
    chat = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    pad = {kind: f"<|vision_start|><|{kind}_pad|><|vision_end|>" for kind in ("video", "image")}
    questions = [pad["video"] + "Why?", pad["image"] + "Red?", "How many squares?", pad["video"]]
    prompts = [chat.format(q) for q in questions]
    visuals = [video(4, 128, 128, 0), image(64, 96, 1), None,
               video(6, 64, 128, 2, fps=3.0, indices=[0, 3, 7, 10, 14, 17])]
    batch = data.collate(prompts, visuals, tokenizer)
    inputs = hf_inputs(batch["input_ids"], batch["visuals"], model.config)
    theirs, _ = model.model.get_rope_index(
        batch["input_ids"],
        inputs["mm_token_type_ids"],
        inputs["image_grid_thw"],
        inputs["video_grid_thw"],
        batch["attention_mask"],
    )
    ours = rope_positions(
        batch["input_ids"], batch["attention_mask"], batch["visuals"], model.config
    )
    assert torch.equal(ours, theirs)
    prompt_index, completion_ids, lengths = random_completions(tokenizer, [2, 1, 1, 2], T=4, seed=0)
    with torch.no_grad():
        ref, _ = hf_completion_logprobs(model, batch, prompt_index, completion_ids, lengths)
        logp = token_logprobs(model, batch, prompt_index, completion_ids, lengths)
        out = generate(
            model, batch, n=1, max_new_tokens=3, temperature=0, stop_ids=stop_token_ids(tokenizer)
        )
    torch.testing.assert_close(logp, ref, atol=1e-5, rtol=0)
    model.model.rope_deltas = None
    hf_out = model.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        **inputs,
        do_sample=False,
        max_new_tokens=3,
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    assert torch.equal(out["completion_ids"], hf_out[:, batch["input_ids"].shape[1] :])


@pytest.mark.parametrize(
    "script, files",
    [
        ("sft", ["config/sft_qwen3vl_8b.py"]),
        ("sft", ["config/sft_qwen3vl_8b.py", "config/sft_qwen3vl_8b_lora.py"]),
        ("tgrpo", ["config/tgrpo_qwen3vl_8b.py"]),
        ("tgrpo", ["config/tgrpo_qwen3vl_8b.py", "config/tgrpo_qwen3vl_8b_lora.py"]),
        ("eval", ["config/eval_qwen3vl_8b.py"]),
        ("sft", ["config/warmup_demo.py", "config/warmup_demo_qwen3vl.py"]),
        ("sft", ["config/sft_demo.py", "config/sft_demo_qwen3vl.py"]),
        ("tgrpo", ["config/tgrpo_demo.py", "config/tgrpo_demo_qwen3vl.py"]),
        ("eval", ["config/eval_demo.py", "config/eval_demo_qwen3vl.py"]),
    ],
)
def test_qwen3vl_configs_are_accepted_and_fit_32_pixel_sides(script, files):
    """Each config's keys exist in its script (the configurator refuses unknown keys and types), and
    its pixel budgets are whole numbers of Qwen3-VL's 32x32-pixel tokens."""
    import importlib
    from configurator import configure

    module = importlib.import_module(script)
    cfg = configure(dict(vars(module)), files)
    for key in ("video_min_pixels", "video_max_pixels", "image_min_pixels", "image_max_pixels"):
        assert cfg[key] % (32 * 32) == 0, key
    if script != "eval" and "demo" not in files[0]:
        assert (cfg["max_frames"], cfg["fps"], cfg["video_max_pixels"]) == (16, 2.0, 128 * 32 * 32)
    if script == "eval" and "demo" not in files[0]:
        assert (cfg["max_frames"], cfg["video_max_pixels"]) == (64, 256 * 32 * 32)


def test_qwen3vl_moe_engine_matches_hf(tmp_path):
    """Qwen3-VL-MoE (4 experts, 2 per token, DeepStack): loads as its own family; positions =
    get_rope_index, greedy generate = HF generate, log-probs and prompt-once gradients = HF forward;
    "language" LoRA adapts attention, not the fused experts."""
    import re

    make_tiny_checkpoint(tmp_path, TEXTS, model_type="qwen3_vl_moe")
    model, tokenizer = load_model(tmp_path)
    assert type(model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    family = families.of(model.config)
    batch = mixed_batch3(tokenizer, family)
    inputs = hf_inputs(batch["input_ids"], batch["visuals"], model.config)
    mask = batch["attention_mask"]
    theirs, _ = model.model.get_rope_index(batch["input_ids"], inputs["mm_token_type_ids"],
                                           inputs["image_grid_thw"], inputs["video_grid_thw"], mask)
    ours = rope_positions(batch["input_ids"], mask, batch["visuals"], model.config)
    assert torch.equal(ours, theirs)
    out = generate(model, batch, n=1, max_new_tokens=8, temperature=0)
    model.model.rope_deltas = None
    hf_out = model.generate(input_ids=batch["input_ids"], attention_mask=mask, **inputs,
                            do_sample=False, max_new_tokens=8, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=stop_token_ids(tokenizer))
    assert torch.equal(out["completion_ids"], hf_out[:, batch["input_ids"].shape[1]:])
    assert (out["lengths"] > 4).all()  # non-trivial sequences were compared
    prompt_index, completion_ids, lengths = random_completions(tokenizer, [3, 2, 1, 2], T=6, seed=0)
    weights = torch.randn(completion_ids.shape, generator=torch.Generator().manual_seed(1))
    rows = (batch, prompt_index, completion_ids, lengths)
    logp, ours = grads_of(model, lambda: token_logprobs(VisionOnceLM(model), *rows), weights)
    ref, theirs = grads_of(model, lambda: hf_completion_logprobs(model, *rows)[0], weights)
    torch.testing.assert_close(logp, ref, atol=1e-5, rtol=0)
    assert_grads_equal(ours, theirs)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    adapted = [n for n in linear if re.fullmatch(family.lora_targets["language"], n)]
    assert adapted and all(".self_attn." in n for n in adapted)


@pytest.mark.slow
def test_prompt_once_under_ddp(ckpt3, loaded3, tmp_path):
    """2-process DDP on Qwen3-VL (test_model.py's test, DeepStack included): averaged gradients =
    the per-row HF reference over both ranks' rows; one DDP forward per micro-batch."""
    run_script("test_qwen3vl.py", str(ckpt3), str(tmp_path / "ddp.pt"), processes=2)
    got = torch.load(tmp_path / "ddp.pt")
    assert got["calls"] == got["chunks"] == 2
    model, tokenizer = loaded3
    batch = mixed_batch3(tokenizer)

    def reference():  # DDP averages the two ranks' gradients
        losses = []
        for rank in (0, 1):
            prompt_index, completion_ids, lengths, weights = ddp_rows(tokenizer, rank)
            logp = hf_completion_logprobs(model, batch, prompt_index, completion_ids, lengths)[0]
            losses.append((logp * weights).sum())
        return (losses[0] + losses[1]) / 2

    _, theirs = grads_of(model, reference, torch.ones(()))
    assert_grads_equal(got["grads"], theirs)


if __name__ == "__main__":
    ddp_half(sys.argv[1], sys.argv[2], mixed_batch3)


def test_prompt_length_counts_the_timestamps(ckpt3):
    """The length limits (sft max_length, tgrpo max_prompt_length) see the prompt as collate makes
    it: on Qwen3-VL the timestamps and per-patch start/end tokens count too."""
    tokenizer = AutoTokenizer.from_pretrained(ckpt3)
    prompt = data.prompt_text(row("video", "Which way?"))
    visual = video(8, 32, 32, 0)
    n = data.collate([prompt], [visual], tokenizer)["input_ids"].shape[1]
    bare = len(tokenizer(prompt).input_ids) - 1 + int(visual["grid_thw"].prod()) // 4
    assert data.prompt_length(prompt, visual, tokenizer) == n > bare + 4 * 2
