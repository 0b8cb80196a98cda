"""
model.py: everything the stage scripts need from Qwen2.5-VL, as flat functions.

    make_tiny_checkpoint(out_dir, texts)  random-weight Qwen2.5-VL + small BPE tokenizer (tests, CPU demo)
    load_model(path)                       -> (model, tokenizer)
    rope_positions(ids, mask, visuals, cfg) M-RoPE position ids [3, B, L] of a left-padded batch
    generate(model, batch, n, ...)         n sampled completions per prompt; each prompt prefilled once
    token_logprobs(model, batch, ...)      [R, T] log-probs of completion tokens (policy, reference, SFT)

Two ideas run through the file:
- Vision once. The G completions of a prompt share its video, so each distinct visual goes through the
  vision tower once per call and its features are copied into every row that uses it; autograd sums
  the rows' gradients into that one encoding, exactly as if each row had encoded its own copy.
- Explicit positions. We compute M-RoPE positions ourselves and hand them to the language model on
  every call (prefill, decode, scoring), so HF's hidden `rope_deltas` state is never read.
"""

import importlib.util
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoTokenizer, GenerationConfig, PreTrainedModel, Qwen2_5_VLConfig
from transformers import Qwen2_5_VLForConditionalGeneration

# Qwen2.5's added tokens, in their real id order (151643...). The first 14 are special tokens (skipped
# by decode(skip_special_tokens=True)); the last 8 are plain added tokens, as in the real tokenizer.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
# Qwen2's pre-tokenizer split (words, single digits, punctuation runs, newlines, spaces).
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# ChatML as Qwen2.5-VL renders it: default system turn, visuals before text inside a user turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_checkpoint(out_dir, texts, seed=0, vocab_size=2048, hidden_size=64, num_layers=2,
                         vision_hidden_size=64, vision_depth=2):
    """Write a random-weight Qwen2.5-VL and a byte-level BPE tokenizer trained on `texts` to `out_dir`.

    Real architecture, toy sizes: trains on a laptop CPU in minutes. The layout is the standard HF one
    (config.json, generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json) so
    AutoTokenizer / Qwen2_5_VLForConditionalGeneration.from_pretrained load it like a real checkpoint.
    Token ids in the config are looked up by string. Same seed and texts -> identical files.

    >>> make_tiny_checkpoint("out/tiny", ["<think>let me think</think><answer>A</answer>"])
    >>> model, tokenizer = load_model("out/tiny")
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    # 1. tokenizer: Qwen2's byte-level BPE pipeline, trained on the given texts
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS) - len(ADDED_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(list(texts), trainer)
    # appended after the BPE vocabulary, in Qwen's order, like the real tokenizer
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    tokenizer = Qwen2Tokenizer(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               unk_token=None, model_max_length=32768, clean_up_tokenization_spaces=False)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})  # known as special
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)  # ids exactly as a loader will see them
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    # 2. model: Qwen2.5-VL with toy sizes; head_dim 16, so mrope_section sums to 16 / 2 = 8
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=32768, rms_norm_eps=1e-6,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 3, 3]),
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
                           num_heads=4, out_hidden_size=hidden_size, patch_size=14, temporal_patch_size=2,
                           spatial_merge_size=2, window_size=112, fullatt_block_indexes=[vision_depth - 1],
                           tokens_per_second=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)
    with torch.random.fork_rng():  # seeded init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]])
    model.save_pretrained(out_dir)


def load_model(path, dtype=torch.float32, device="cpu", attn_implementation=None):
    """Load a Qwen2.5-VL checkpoint and its tokenizer (left padding, for batched prompts).

    attn_implementation=None picks flash_attention_2 when flash_attn is installed and the device is
    CUDA, else PyTorch sdpa.
    """
    if attn_implementation is None:
        on_cuda = torch.device(device).type == "cuda"
        attn_implementation = "flash_attention_2" if on_cuda and importlib.util.find_spec("flash_attn") else "sdpa"
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation).to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if model.generation_config.pad_token_id is None:  # generate() pads finished rows with it
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def stop_token_ids(tokenizer):
    """Ids that end a completion: <|im_end|> (end of turn) and <|endoftext|>."""
    return [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
