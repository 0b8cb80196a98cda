"""
The whole pipeline on a laptop CPU, from nothing, in about 15 minutes: build the demo world and a tiny
random Qwen2.5-VL, warm it up into a tiny VLM that sees, SFT cold start, T-GRPO, then evaluation with
ordered and shuffled frames, before and after RL.

    python demo.py

Each stage is an ordinary script with its demo config, so any of them can be re-run alone:
    python demo.py assets                           # only the world, the tiny model and its warm-up
    python demo.py --family=qwen3_vl                # the same on a tiny Qwen3-VL (config/*_qwen3vl.py)
    python demo.py --family=qwen3_5                 # on a tiny hybrid Qwen3.5 (config/*_qwen3_5.py)
    python sft.py config/sft_demo.py
    python tgrpo.py config/tgrpo_demo.py            # + config/tgrpo_grpo.py: plain GRPO
    python eval.py config/eval_demo.py --model_path=out/tgrpo_demo --shuffle=True
The demo starts fresh each time (it deletes its own out/ folders; the world and the warmed-up model in
demo/ are kept). Seeds are fixed. GRPO vs T-GRPO over several seeds: experiment.py.
"""
import json
import os
import shutil
import subprocess
import sys

import demo_world
import families

DEMO_WORLD = "demo/world"                  # synthetic videos, images and the dataset files
DEMO_MODEL = "demo/tiny-qwen2.5-vl"        # random-weight Qwen2.5-VL with a small tokenizer
DEMO_PRETRAINED = "demo/tiny-qwen2.5-vl-warm"  # DEMO_MODEL after the perception warm-up: the demo's "Instruct"
SFT_DEMO = "out/sft_demo"                  # where sft.py's demo writes; tgrpo.py's demo starts here
TGRPO_DEMO = "out/tgrpo_demo"
# The same demo on a tiny Qwen3-VL: its own checkpoints and outputs, each stage's demo config
# followed by the overlay config/<stage>_demo_qwen3vl.py (128x128 frames, the paths below).
QWEN3_DEMO = {"model": "demo/tiny-qwen3-vl", "warm": "demo/tiny-qwen3-vl-warm",
              "sft": "out/sft_demo_qwen3vl", "tgrpo": "out/tgrpo_demo_qwen3vl",
              "eval": "out/eval_{}_demo_qwen3vl"}
QWEN3_5_DEMO = {"model": "demo/tiny-qwen3.5", "warm": "demo/tiny-qwen3.5-warm",
                "sft": "out/sft_demo_qwen3_5", "tgrpo": "out/tgrpo_demo_qwen3_5",
                "eval": "out/eval_{}_demo_qwen3_5"}  # config/*_qwen3_5.py
QWEN25_DEMO = {"model": DEMO_MODEL, "warm": DEMO_PRETRAINED, "sft": SFT_DEMO, "tgrpo": TGRPO_DEMO,
               "eval": "out/eval_{}_demo"}


# Qwen2.5's added tokens, in their real id order (151643...). The first 14 are special tokens (skipped
# by decode(skip_special_tokens=True)); the last 8 are plain added tokens, as in the real tokenizer.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
QWEN3_ADDED_TOKENS = ["<tool_response>", "</tool_response>", "<think>", "</think>"]  # Qwen3's
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
QWEN3_CHAT_TEMPLATE = CHAT_TEMPLATE.replace(  # Qwen3-VL-Instruct renders no default system turn
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}", "")
# Qwen3.5 thinks by default: the assistant turn opens the think block (enable_thinking=False closes an
# empty one instead, which Video-R1's <think>...</think><answer>...</answer> has no use for).
QWEN3_5_CHAT_TEMPLATE = QWEN3_CHAT_TEMPLATE.replace(
    "<|im_start|>assistant\n{% endif %}",
    "<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}{% endif %}")


def make_tiny_checkpoint(out_dir, texts, seed=0, vocab_size=2048, hidden_size=64, num_layers=2,
                         vision_hidden_size=64, vision_depth=2, rope_theta=10.0,
                         model_type="qwen2_5_vl"):
    """Write a random-weight Qwen2.5-VL (model_type="qwen3_vl": Qwen3-VL, DeepStack included;
    "qwen3_5": Qwen3.5, Gated DeltaNet + full attention, thinking chat template) and a
    byte-level BPE tokenizer with the family's special tokens, trained on `texts`, to `out_dir`.

    Real architecture, toy sizes: trains on a laptop CPU in minutes. The layout is the standard HF one
    (config.json, generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json) so
    AutoTokenizer / Qwen2_5_VLForConditionalGeneration.from_pretrained load it like a real checkpoint.
    Token ids in the config are looked up by string. Same seed and texts -> identical files.

    >>> make_tiny_checkpoint("out/tiny", ["<think>let me think</think><answer>A</answer>"])
    >>> model, tokenizer = model.load_model("out/tiny")
    """
    import torch
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer, GenerationConfig, Qwen2_5_VLConfig
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer
    qwen3 = model_type in ("qwen3_vl", "qwen3_vl_moe", "qwen3_5")
    added = ADDED_TOKENS + QWEN3_ADDED_TOKENS * qwen3

    # 1. tokenizer: Qwen2's byte-level BPE pipeline, trained on the given texts
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS) - len(added),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(list(texts), trainer)
    # appended after the BPE vocabulary, in Qwen's order, like the real tokenizer
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    tokenizer = Qwen2Tokenizer(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               unk_token=None, model_max_length=32768, clean_up_tokenization_spaces=False)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})  # known as special
    tokenizer.chat_template = {"qwen3_vl": QWEN3_CHAT_TEMPLATE, "qwen3_vl_moe": QWEN3_CHAT_TEMPLATE,
                               "qwen3_5": QWEN3_5_CHAT_TEMPLATE}.get(model_type, CHAT_TEMPLATE)
    tokenizer.save_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)  # ids exactly as a loader will see them
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    # 2. model: Qwen2.5-VL with toy sizes. 4 heads; M-RoPE splits head_dim / 2 frequencies over
    # (temporal, height, width) in Qwen's 1 : 1.5 : 1.5 ratio ([16, 24, 24] at head_dim 128, [2, 3, 3] at 16).
    # The axes take consecutive frequency bands, fastest first, so with Qwen's rope_theta 1e6 and only 8
    # frequencies the width axis turns by < 2e-4 rad per position: the tiny model could not tell left
    # from right. rope_theta 10 gives every axis rotations of 0.13-1 rad per position.
    half = hidden_size // 4 // 2
    mrope_section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    if model_type == "qwen3_5":
        config = tiny_qwen3_5_config(ids, len(tokenizer), hidden_size, num_layers, vision_hidden_size,
                                     vision_depth, rope_theta)
    elif qwen3:
        config = tiny_qwen3_vl_config(ids, len(tokenizer), hidden_size, num_layers,
                                      vision_hidden_size, vision_depth, rope_theta,
                                      moe=model_type == "qwen3_vl_moe")
    else:
        config = Qwen2_5_VLConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                             num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=32768, rms_norm_eps=1e-6,
                             rope_parameters=dict(rope_type="default", rope_theta=rope_theta, mrope_section=mrope_section),
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
        model = families.of(config).model_class(config)
    if model_type == "qwen3_5":
        spread_linear_memory(model)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]])
    model.save_pretrained(out_dir)


def tiny_qwen3_vl_config(ids, vocab_size, hidden_size, num_layers, vision_hidden_size, vision_depth,
                         rope_theta, moe=False):
    """Qwen3-VL at toy sizes: head_dim 16, interleaved M-RoPE with Qwen3-VL's [24, 20, 20] split
    scaled to 8 frequencies ([4, 2, 2]), DeepStack from every vision block into the first language
    layers (one more language layer than levels, so a layer without DeepStack runs too).
    moe: Qwen3-VL-MoE, 4 experts of which 2 per token in every language layer."""
    from transformers import Qwen3VLConfig, Qwen3VLMoeConfig
    half = 16 // 2
    spatial = half * 20 // 64
    experts = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden_size,
                   decoder_sparse_step=1) if moe else {}
    return (Qwen3VLMoeConfig if moe else Qwen3VLConfig)(
        text_config=dict(**experts, vocab_size=vocab_size, hidden_size=hidden_size,
                         intermediate_size=2 * hidden_size, num_hidden_layers=num_layers + 1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=32768, rms_norm_eps=1e-6,
                         rope_parameters=dict(rope_type="default", rope_theta=rope_theta,
                                              mrope_section=[half - 2 * spatial, spatial, spatial],
                                              mrope_interleaved=True),
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=vision_depth, hidden_size=vision_hidden_size,
                           intermediate_size=2 * vision_hidden_size, num_heads=4,
                           out_hidden_size=hidden_size, patch_size=16, temporal_patch_size=2,
                           spatial_merge_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=list(range(vision_depth))),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)


def tiny_qwen3_5_config(ids, vocab_size, hidden_size, num_layers, vision_hidden_size, vision_depth,
                        rope_theta):
    """Qwen3.5 at toy sizes, the real hybrid layout: 2 * num_layers layers, every fourth full attention
    (num_layers=2: linear, linear, linear, full), Gated DeltaNet with 2 key heads serving 4 value
    heads (the real ratio is 1:2 too) and a kernel-4 convolution; full attention with head_dim 32,
    its rotary quarter (8 dims, 4 frequencies) split [2, 1, 1] over (temporal, height, width),
    interleaved like the real [11, 11, 10] of 64 dims. No DeepStack. No pad_token_id in the text
    config: it would zero the pad token's embedding, and a zero input hides whether the linear
    layers mask left padding (a trained <|endoftext|> embedding is not zero)."""
    from transformers import Qwen3_5Config
    return Qwen3_5Config(
        text_config=dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2 * num_layers, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, max_position_embeddings=32768, rms_norm_eps=1e-6,
                         linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16,
                         linear_num_key_heads=2, linear_num_value_heads=4, full_attention_interval=4,
                         rope_parameters=dict(rope_type="default", rope_theta=rope_theta,
                                              partial_rotary_factor=0.25, mrope_section=[2, 1, 1],
                                              mrope_interleaved=True),
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"]),
        vision_config=dict(depth=vision_depth, hidden_size=vision_hidden_size,
                           intermediate_size=2 * vision_hidden_size, num_heads=4, out_hidden_size=hidden_size,
                           patch_size=16, temporal_patch_size=2, spatial_merge_size=2,
                           num_position_embeddings=64),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)


def spread_linear_memory(model):
    """Give each Gated DeltaNet layer's heads memories from thousands of tokens down to one, as in the
    delta rule's own initialisation (A in [1, 16], time step dt in [0.001, 0.1], dt_bias = softplus^-1
    of it; decay per token exp(-A * dt)). transformers' init (dt_bias = 1) makes every head forget
    within a few tokens, so a tiny model could not show a state that carries across a long prompt."""
    import torch
    for layer in model.model.language_model.layers:
        if layer.block_type == "linear_attention":
            net = layer.linear_attn
            dt = torch.logspace(-3, -1, net.num_v_heads)  # [H] head 0 remembers longest
            with torch.no_grad():
                net.dt_bias.copy_(torch.log(torch.expm1(dt)))
                net.A_log.copy_(torch.linspace(1, 16, net.num_v_heads).log())


def ensure_demo_assets(warm=True, model_type="qwen2_5_vl"):
    """Build what is missing of the demo's assets: the world, the family's tiny checkpoint and
    (warm) its perception warm-up. The stage scripts never build anything: pointed at a missing
    folder they say to run this."""
    paths, overlay = demo_paths(model_type)
    if not os.path.isfile(os.path.join(DEMO_WORLD, "rl.json")):
        _atomic_build(DEMO_WORLD, lambda tmp: demo_world.make_demo_world(tmp))
    if not os.path.isfile(os.path.join(paths["model"], "config.json")):
        texts = demo_world.demo_texts(DEMO_WORLD)
        _atomic_build(paths["model"],
                      lambda tmp: make_tiny_checkpoint(tmp, texts, model_type=model_type))
    if warm and not os.path.isdir(paths["warm"]):
        print(f"building {paths['warm']}: the perception warm-up of {paths['model']}, "
              f"a few minutes", flush=True)
        _atomic_build(paths["warm"], lambda tmp: run("sft.py", "config/warmup_demo.py",
                                                     *overlay("warmup"), f"--out_dir={tmp}"))


def demo_paths(model_type):
    """(the family's demo paths, stage -> overlay config files to put after its demo config)."""
    if model_type == "qwen3_vl":
        return QWEN3_DEMO, lambda stage: [f"config/{stage}_demo_qwen3vl.py"]
    if model_type == "qwen3_5":
        return QWEN3_5_DEMO, lambda stage: [f"config/{stage}_demo_qwen3_5.py"]
    families.of(model_type)  # an unknown family fails here
    return QWEN25_DEMO, lambda stage: []


def _atomic_build(path, build):
    """Build into path.tmp and rename, so an interrupted build never looks complete."""
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    os.replace(tmp, path)


def run(*cmd):
    print("\n$ python", " ".join(cmd), flush=True)
    # one thread per process: the tiny model's matrices are too small to gain from more, and on a
    # shared CPU spinning threads make each step several times slower
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run([sys.executable, *cmd], check=True, env=env)


def family(row):
    return row["data_source"].split("/")[-1]


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def score_records(records):
    """eval.py's answers of the demo -> {"all", "video ordered", "video shuffled", "gap", "order gap",
    "format", "length", <family>: {"ordered", "shuffled", "gap"}}; scores in [0, 1], gaps ordered - shuffled
    over the videos answered both ways, "order gap" over the order-dependent families."""
    from rewards import format_reward
    ok = [r for r in records if r["status"] == "ok"]
    ordered = [r for r in ok if not r["shuffled"]]
    shuffled = {r["problem_id"]: r["score"] for r in ok if r["shuffled"]}
    pairs = lambda rows: [(r["score"], shuffled[r["problem_id"]]) for r in rows if r["problem_id"] in shuffled]
    out = {"all": mean(r["score"] for r in ordered), "format": mean(format_reward(r["output"]) for r in ordered),
           "length": mean(r["gen_tokens"] for r in ordered)}
    video, dep = pairs(ordered), pairs(r for r in ordered if family(r) in demo_world.ORDER_DEPENDENT)
    out["video ordered"], out["video shuffled"] = mean(o for o, _ in video), mean(s for _, s in video)
    out["gap"], out["order gap"] = mean(o - s for o, s in video), mean(o - s for o, s in dep)
    for fam in sorted({family(r) for r in ordered}):
        rows = [r for r in ordered if family(r) == fam]
        p = pairs(rows)
        out[fam] = {"ordered": mean(r["score"] for r in rows), "format": mean(format_reward(r["output"]) for r in rows),
                    "length": mean(r["gen_tokens"] for r in rows)}
        if p:
            out[fam].update(shuffled=mean(s for _, s in p), gap=mean(o - s for o, s in p))
    return out


def read_answers(eval_dir, benchmark="demo"):
    with open(os.path.join(eval_dir, f"{benchmark}.jsonl")) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def chance_records(world=DEMO_WORLD, pool=64):
    """What guessing scores: every held-out question answered with the answers of up to `pool` training
    questions of its family (a blind model that knows the answer format and the answer distribution),
    as eval records, so score_records reads them like a model's. Shuffled frames change nothing."""
    import data
    from rewards import eval_score
    train = data.load_rows(os.path.join(world, "rl.json"))
    answers = {}
    for r in train:
        answers.setdefault(family(r), []).append(r["solution"])
    records = []
    for r in data.load_rows(os.path.join(world, "eval_demo.json")):
        guesses = answers[family(r)][:pool]
        score = mean(eval_score(g, r["solution"], r["problem_type"]) for g in guesses)
        for shuffled in ([False, True] if r["data_type"] == "video" else [False]):
            records.append({"problem_id": r["problem_id"], "data_source": r["data_source"], "shuffled": shuffled,
                            "status": "ok", "score": score, "output": guesses[0], "gen_tokens": 0})
    return records


TRAIN_FILES = ("warmup.json", "cot.json", "rl.json")  # every file of the world the demo trains on


def media_digest(path, data_type):
    """sha1 of a media file's decoded pixels (every frame as stored): two files with the same
    picture are the same item to the model, whatever their bytes."""
    import hashlib
    import decord
    import numpy as np
    from PIL import Image
    if data_type == "video":
        vr = decord.VideoReader(path)
        pixels = vr.get_batch(list(range(len(vr)))).asnumpy()
    else:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
    return hashlib.sha1(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()


def novel_ids(world=DEMO_WORLD):
    """Which eval_demo.json rows are new: -> (problem_ids of the rows whose question (with its
    options), answer and media pixels are those of no row of any training file, {family: (copies,
    rows)}). The demo's content space is small (a few colours,
    positions, letters), so many held-out rows repeat a training row exactly; accuracy on the
    novel ones is the evidence about generalisation."""
    import data
    from rewards import extract_answer
    digests = {}
    key = lambda r: (data.question_text(r), extract_answer(r["solution"]),
                     digests.get(r["media"]) or digests.setdefault(
                         r["media"], media_digest(r["media"], r["data_type"])))
    seen = {key(r) for name in TRAIN_FILES if os.path.isfile(os.path.join(world, name))
            for r in data.load_rows(os.path.join(world, name))}
    novel, repeats = set(), {}
    for r in data.load_rows(os.path.join(world, "eval_demo.json")):
        copy = key(r) in seen
        repeats.setdefault(family(r), []).append(copy)
        if not copy:
            novel.add(r["problem_id"])
    return novel, {f: (sum(xs), len(xs)) for f, xs in sorted(repeats.items())}


def repeat_line(repeats):
    """How much of the held-out set repeats training rows ({family: (copies, rows)}), in words."""
    copies, rows = sum(c for c, _ in repeats.values()), sum(n for _, n in repeats.values())
    fams = ", ".join(f"{f} {100 * c / n:.0f}%" + (" (no novel items)" if c == n else "")
                     for f, (c, n) in repeats.items())
    return (f"Repeat rate: {copies} of {rows} held-out questions ({100 * copies / rows:.1f}%) are "
            f"exact copies (question, answer and pixels) of a row of {', '.join(TRAIN_FILES)}; "
            f"by family: {fams}.")


def results_table(scores):
    """{name: score_records(...)} -> Markdown: accuracy in %, ordered/shuffled frames, per family (o/s)."""
    pct = lambda x: "-" if x != x else f"{100 * x:.0f}"
    fams = [f for f in next(iter(scores.values())) if isinstance(next(iter(scores.values()))[f], dict)]
    fams = sorted(fams, key=lambda f: (f not in demo_world.ORDER_DEPENDENT, f))
    head = ["model", "all", "videos ordered", "videos shuffled", "gap", "order-dependent gap"]
    head += [f"{f} (o/s)" if f in demo_world.ORDER_DEPENDENT else f for f in fams]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, s in scores.items():
        cells = [name, pct(s["all"]), pct(s["video ordered"]), pct(s["video shuffled"]), pct(s["gap"]), pct(s["order gap"])]
        cells += [f"{pct(s[f]['ordered'])}/{pct(s[f]['shuffled'])}" if f in demo_world.ORDER_DEPENDENT
                  else pct(s[f]["ordered"]) for f in fams]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def text_curve(metrics_path, key="reward", bins=10):
    """A training curve in one line of text: the mean of `key` over each tenth of the run."""
    with open(metrics_path) as f:
        xs = [m[key] for m in map(json.loads, f) if key in m and m[key] == m[key]]
    n = max(1, len(xs) // bins)
    return " ".join(f"{mean(xs[i:i + n]):.2f}" for i in range(0, n * bins, n) if xs[i:i + n])


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--family=")]
    model_type = ([a[len("--family="):] for a in sys.argv[1:] if a not in args]
                  or ["qwen2_5_vl"])[-1]
    if args not in ([], ["assets"]):
        sys.exit("usage: python demo.py [assets] [--family=qwen3_vl|qwen3_5]   (assets: only build "
                 "the world and the tiny models)")
    ensure_demo_assets(model_type=model_type)
    paths, overlay = demo_paths(model_type)
    print(f"demo world in {DEMO_WORLD}, tiny checkpoint in {paths['model']}, "
          f"warmed up in {paths['warm']}")
    if args == ["assets"]:
        sys.exit(0)
    evals = {"SFT": paths["eval"].format("sft"), "SFT + T-GRPO": paths["eval"].format("tgrpo")}
    for d in (paths["sft"], paths["tgrpo"], *evals.values()):
        shutil.rmtree(d, ignore_errors=True)  # a fresh start: old checkpoints or answers would be reused
    run("sft.py", "config/sft_demo.py", *overlay("sft"))
    run("tgrpo.py", "config/tgrpo_demo.py", *overlay("tgrpo"))
    for (name, out), model in zip(evals.items(), (paths["sft"], paths["tgrpo"])):
        run("eval.py", "config/eval_demo.py", *overlay("eval"), f"--model_path={model}",
            "--shuffle=True", f"--out_dir={out}")
    scores = {"chance (blind guess)": score_records(chance_records())}
    scores.update({name: score_records(read_answers(out)) for name, out in evals.items()})
    n_eval = len(read_answers(evals["SFT"]))
    print(f"\nAccuracy in % on eval_demo.json ({n_eval} answers to held-out questions; o/s = ordered/shuffled "
          f"frames; gap = ordered - shuffled):\n")
    print(results_table(scores))
    novel, repeats = novel_ids()
    keep = lambda records: [r for r in records if r["problem_id"] in novel]
    novel_scores = {"chance (blind guess)": score_records(keep(chance_records()))}
    novel_scores.update({name: score_records(keep(read_answers(out))) for name, out in evals.items()})
    print(f"\n{repeat_line(repeats)}\nAccuracy in % on the {len(novel)} novel questions alone (in no "
          f"training file; families without any are left out):\n")
    print(results_table(novel_scores))
    metrics = os.path.join(paths["tgrpo"], "metrics.jsonl")
    print(f"\nT-GRPO training, mean per tenth of the run:\n  reward   {text_curve(metrics)}\n"
          f"  accuracy {text_curve(metrics, 'reward_accuracy')}\n"
          f"Curves as a picture: python plot.py {paths['tgrpo']} (needs matplotlib)")
