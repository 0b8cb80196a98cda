"""
memory.py: how much memory each shipped Qwen2.5-VL-7B configuration needs per GPU, predicted from
the CPU measurements of bench_memory.py plus exact parameter, gradient and optimizer arithmetic.

    python bench_memory.py     # the measurements (out/bench_memory.json), about 45 min on one core
    python memory.py           # the fit, its 4-layer check and the table (markdown)

A prediction, not a GPU measurement: gpu_check.py measures the same update on a GPU.
Per GPU = static (weights, gradients, AdamW state, the bf16 reference: `static_bytes`, exact for
each strategy) + activations (`activation_bytes`: the CPU fit, float32 throughout, so an upper bound
for bf16 autocast; CPU attention also materialises scores that flash-attention never holds).
"""
import json
import os
import re

import torch

bench_json = "out/bench_memory.json"
gpus = 8
T = 768                    # completion tokens per row (paper)
G = 8                      # completions per micro-batch (tgrpo.py: micro_batch_size = 8)
train_prompt = 1100        # tokens of a 16-frame training prompt at 128*28*28 (1024 visual + text)
sft_target = 1024          # SFT: one row, prompt + a CoT target of this many tokens
eval_prompt = 8300         # a 64-frame eval prompt at 256*28*28 (8192 visual tokens + text)
eval_batch = 8             # eval.py's batch_size: prompts per generate call
eval_new_tokens = 1024     # eval.py's max_new_tokens
chunk = 1024               # model.LOGPROB_CHUNK
lora_rank = 64
GiB = 2 ** 30
CARDS = (80, 40, 24)       # GB per card, as sold (1e9 bytes)


def qwen25_vl_7b(layers=28, vision_depth=32):
    """The Qwen2.5-VL-7B config (widths of the released checkpoint)."""
    from transformers import Qwen2_5_VLConfig
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                         num_hidden_layers=layers, num_attention_heads=28, num_key_value_heads=4,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6,
                                              mrope_section=[16, 24, 24])),
        vision_config=dict(depth=vision_depth, hidden_size=1280, intermediate_size=3420,
                           num_heads=16,
                           out_hidden_size=3584, fullatt_block_indexes=[7, 15, 23, 31]),
        tie_word_embeddings=False)


def param_counts(config):
    """Exact parameter counts, from the model built on the meta device (no memory):
    total, root (what FSDP's root unit holds: all but decoder layers and vision blocks), lora."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    from families import QWEN2_5_VL
    with torch.device("meta"):
        hf = Qwen2_5_VLForConditionalGeneration(config)
    total = sum(p.numel() for p in hf.parameters())
    wrapped = sum(p.numel() for k, p in hf.named_parameters()
                  if re.search(r"\.(layers|blocks)\.", k))
    lora = sum(lora_rank * (m.in_features + m.out_features) for k, m in hf.named_modules()
               if re.fullmatch(QWEN2_5_VL.lora_targets["language"], k))
    return {"total": total, "root": total - wrapped, "lora": lora}


def static_bytes(strategy, P, n=8, A=0, root=0, reference=True, phase="update"):
    """Per-GPU bytes of weights, gradients and AdamW state (two fp32 moments) for P parameters on
    n GPUs, as our scripts hold them under accelerate's bf16 mixed precision:
    ddp:   fp32 weights 4P, fp32 grads 4P, DDP's bucket copy of them 4P (n > 1), Adam 8P, and
           autocast's bf16 copies of the fp32 weights 2P while it computes.
    zero2: DeepSpeed holds bf16 weights 2P; shards of the bf16 grads, the fp32 master weights,
           Adam and the fp32 grads of the step: (2 + 4 + 8 + 4) P / n.
    zero3: all of those sharded, 20P / n (the layer being computed is gathered: small); the
           rollout gathers the full bf16 weights, 2P.
    fsdp:  fp32 shards of weights, grads and Adam 16P / n; the root unit (embeddings, head,
           merger) gathered in bf16 for the whole pass, 2 root; the rollout summons the full fp32
           weights 4P (views into the flat parameter, which autocast casts per use, not caches).
    lora:  (DDP) a bf16 base 2P; fp32 adapters A with grads, buckets (n > 1), Adam and bf16 copies.
    reference: + a bf16 reference 2P (full fine-tuning's T-GRPO; LoRA's is the base, adapters off).
    phase "rollout": no gradients (zeroed with set_to_none after each step).
    >>> static_bytes("zero2", P=8, n=8) / 8   # (2 + 18/8) + 2 reference bytes per parameter
    6.25
    """
    grads = phase == "update"
    if strategy == "ddp":
        b = 4 * P + 8 * P + 2 * P + (4 * P + 4 * P * (n > 1)) * grads
    elif strategy == "zero2":
        b = 2 * P + (4 + 8) * P / n + (2 + 4) * P / n * grads
    elif strategy == "zero3":
        b = (2 + 4 + 8) * P / n + (2 + 4) * P / n * grads + 2 * P * (phase == "rollout")
    elif strategy == "fsdp":
        b = (4 + 8) * P / n + 4 * P / n * grads + (2 * root if grads else 4 * P)
    elif strategy == "lora":
        b = 2 * P + 4 * A + 8 * A + 2 * A + (4 * A + 4 * A * (n > 1)) * grads
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    return b + 2 * P * (reference and strategy != "lora")


# bench_memory.py's runs (part:layers:chunk[:T]): the update at 1 and 2 layers, the head alone at
# two chunk sizes (the same 6 chunks a micro-batch as the paper's 1024 at 768 tokens)
FIT_RUNS = ("update:1:128", "update:2:128")
HEAD_RUNS = ("head:0:128", "head:0:256:192")
CHECK_RUN = "update:4:128"


def fit(results, V=152064, D=3584):
    """The parts of an update's memory over its weights and gradients (float32, CPU):
    spike     the peak over weights and every gradient in the 1-layer update (the 2-layer one
              agrees): one [V, D] gradient buffer in flight at the end of the backward
    per_token each layer's bytes a token: its checkpointed input and the prompt's keys/values
              (the 2-layer update's net minus the 1-layer's, minus one layer's gradients, over n)
    head      the head's backward over its own weight gradient (the larger of two head-alone
              runs, chunks of 128 and 256 tokens: they agree, both ~2 more [V, D] buffers, the
              chunk's weight gradient and the sum it goes into)
    net       (a, b): the update's peak over its weights, a + b * layers (from 1 and 2 layers)"""
    info = {r["run"]: r for r in results}
    r1, r2 = (info[k] for k in FIT_RUNS)
    n = r1["prompt_len"] + r1["G"] * r1["T"]
    net1, net2 = r1["peak"] - r1["base"], r2["peak"] - r2["base"]
    per_token = (net2 - net1 - (r2["grads_bytes"] - r1["grads_bytes"])) / n
    h1, h2 = (info[k] for k in HEAD_RUNS)
    over = lambda h: h["peak"] - h["base"] - V * D * 4 - h["G"] * h["T"] * D * 4  # minus the grads
    return dict(spike=r1["peak"] - r1["end_rss"], per_token=per_token, head=max(over(h1), over(h2)),
                net=(2 * net1 - net2, net2 - net1))


def activation_bytes(f, layers, n, N, c=chunk, checkpointing=True, D=3584, I=18944, V=152064):
    """What an update adds to static_bytes, counted as if all at one moment (an upper bound): the
    gradient spike, the head's measured part plus three float32 [min(c, N), V] tensors of its
    chunk (logits, probabilities, their gradient: too small to show at the measured chunks),
    every layer's checkpointed input over n tokens. Without checkpointing each layer also keeps
    (6 D + 4 I) bf16 values a token (norm, q/k/v, attention out, gate, up, act, product)."""
    b = f["spike"] + f["head"] + 3 * min(c, N) * V * 4 + layers * f["per_token"] * n
    return b + (0 if checkpointing else layers * n * (6 * D + 4 * I) * 2)


def rollout_bytes(layers=28, prompt=train_prompt, rows=12, new=T, D=3584, I=18944, V=152064,
                  kv=4 * 128):
    """A T-GRPO rollout's additions to the weights, arithmetic: the float32 KV cache of G + G~ rows
    preallocated for prompt + new tokens, the prefill's largest transient (one layer over the two
    prompts: hidden states and MLP) and the rows' float32 logits."""
    cache = rows * (prompt + new) * layers * 2 * kv * 4
    return cache + 2 * prompt * (2 * D + 3 * I) * 4 + rows * V * 4


def eval_bytes(P, layers=28, D=3584, I=18944, kv=4 * 128, Dv=1280, Iv=3420):
    """eval.py at 64 frames, arithmetic only: bf16 weights, the KV cache of eval_batch rows of
    prompt + new tokens, and the larger of two transients: the prefill's (one layer's hidden
    states and MLP over every token) and the vision tower's (one block over 4 patches a token)."""
    tokens = eval_batch * eval_prompt
    cache = eval_batch * (eval_prompt + eval_new_tokens) * layers * 2 * kv * 2
    return 2 * P + cache + max(tokens * (2 * D + 3 * I), 4 * tokens * (4 * Dv + 3 * Iv)) * 2


def rows(results):
    """(setup, strategy, GPUs, checkpointing, update bytes, rollout bytes), shipped configs."""
    f = fit(results)
    config = qwen25_vl_7b()
    counts = param_counts(config)
    P, A, root = counts["total"], counts["lora"], counts["root"]
    text = config.text_config
    L, V, D = text.num_hidden_layers, text.vocab_size, text.hidden_size
    rollout_act = rollout_bytes(L)
    out = []
    for setup, tokens, heads, ref, strategies in [
            ("T-GRPO", train_prompt + G * T, G * T, True, [("ddp", 8), ("zero2", 8), ("zero3", 8),
                                                           ("fsdp", 8), ("lora", 8), ("lora", 1)]),
            ("SFT", train_prompt + sft_target, sft_target, False,
             [("ddp", 8), ("zero2", 8), ("zero3", 8), ("fsdp", 8), ("lora", 8), ("lora", 1)])]:
        for strategy, n in strategies:
            for ckpt in (True, False):
                act = activation_bytes(f, L, tokens, heads, checkpointing=ckpt)
                kw = dict(P=P, n=n, A=A, root=root, reference=ref)
                update = static_bytes(strategy, phase="update", **kw) + act
                rollout = static_bytes(strategy, phase="rollout", **kw) + rollout_act if ref else 0
                out.append((setup, strategy, n, ckpt, update, rollout))
    out.append(("eval 64 frames", "bf16, no grad", 8, None, eval_bytes(P), 0))
    return f, counts, out


def check(results):
    """The fit from layers 1 and 2 against the 4-layer run left out, when it was measured (net and
    peak): {name: (predicted, measured)}."""
    info = {r["run"]: r for r in results}
    if CHECK_RUN not in info:
        return {}
    (a, b), r1, r2, r4 = fit(results)["net"], info[FIT_RUNS[0]], info[FIT_RUNS[1]], info[CHECK_RUN]
    return {"net": (a + 4 * b, r4["peak"] - r4["base"]),
            "peak": (r1["peak"] + 3 * (r2["peak"] - r1["peak"]), r4["peak"])}


def limits(results):
    """Distance to this CPU's limits, one line each: the update's matmul FLOP/s over the core's
    matmul peak (the largest run), decoding's bytes read per second over the copy bandwidth."""
    lines = []
    up = [r for r in results if "flops" in r]
    if up:
        r = max(up, key=lambda r: r["flops"])
        rate = r["flops"] / r["seconds"]
        lines.append(f"update ({r['run']}): {rate / 1e9:.1f} GFLOP/s, "
                     f"{rate / r['matmul_peak']:.0%} "
                     f"of this core's float32 matmul peak {r['matmul_peak'] / 1e9:.1f} GFLOP/s")
    dec = [r for r in results if "decode_bytes_per_s" in r]
    if dec:
        r = max(dec, key=lambda r: r["layers"])
        lines.append(f"decoding ({r['run']}): {r['decode_bytes_per_s'] / 1e9:.2f} GB/s of weights "
                     "read, "
                     f"{r['decode_bytes_per_s'] / r['copy_bytes_per_s']:.0%} of this core's copy "
                     f"bandwidth {r['copy_bytes_per_s'] / 1e9:.2f} GB/s")
    return lines


def markdown(table):
    lines = ["| run | strategy | GPUs | grad. ckpt | update GB | rollout GB | "
             + " | ".join(f"{c} GB" for c in CARDS) + " |", "|" + "---|" * (6 + len(CARDS))]
    for setup, strategy, n, ckpt, update, rollout in table:
        need = max(update, rollout)
        fits = " | ".join("yes" if need <= c * 1e9 else "no" for c in CARDS)
        ck = "-" if ckpt is None else "on" if ckpt else "off"
        roll = f"{rollout / 1e9:.1f}" if rollout else "-"
        lines.append(f"| {setup} | {strategy} | {n} | {ck} | {update / 1e9:.1f} | {roll} | "
                     f"{fits} |")
    return "\n".join(lines)


if __name__ == "__main__":
    from configurator import configure
    configure(globals())
    results = [json.loads(line) for line in open(bench_json)]
    f, counts, table = rows(results)
    print(f"parameters: {counts}")
    print("fit (GiB; per_token in bytes): " + ", ".join(
        f"{k} {v / GiB:.3f}" if k not in ("per_token", "net") else f"{k} {v}"
        for k, v in f.items()))
    for name, (pred, meas) in check(results).items():
        print(f"4 layers, {name}: {meas / GiB:.2f} GiB measured, {pred / GiB:.2f} GiB from "
              "layers 1 "
              f"and 2 ({pred / meas - 1:+.1%})")
    print("\n".join(limits(results)))
    print(f"Prediction per GPU from CPU measurements (python bench_memory.py && python memory.py), "
          f"T-GRPO: G = {G} x {T} tokens after a 16-frame prompt; SFT: one {sft_target}-token "
          "target.")
    print(markdown(table))
