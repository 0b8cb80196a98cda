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
        vision_config=dict(depth=vision_depth, hidden_size=1280, intermediate_size=3420, num_heads=16,
                           out_hidden_size=3584, fullatt_block_indexes=[7, 15, 23, 31]),
        tie_word_embeddings=False)


def param_counts(config):
    """Exact parameter counts, from the model built on the meta device (no memory):
    total, root (what FSDP's root unit holds: all but decoder layers and vision blocks), lora."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    from model import LORA_TARGETS
    with torch.device("meta"):
        hf = Qwen2_5_VLForConditionalGeneration(config)
    total = sum(p.numel() for p in hf.parameters())
    wrapped = sum(p.numel() for k, p in hf.named_parameters() if re.search(r"\.(layers|blocks)\.", k))
    lora = sum(lora_rank * (m.in_features + m.out_features) for k, m in hf.named_modules()
               if re.fullmatch(LORA_TARGETS["language"], k))
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
           weights 4P, which autocast copies to bf16 again, 2P.
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
        b = (4 + 8) * P / n + 4 * P / n * grads + (2 * root if grads else 6 * P)
    elif strategy == "lora":
        b = 2 * P + 4 * A + 8 * A + 2 * A + (4 * A + 4 * A * (n > 1)) * grads
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    return b + 2 * P * (reference and strategy != "lora")


# bench_memory.py's runs (part:layers:chunk[:T]) that make the fit, and the one that checks it
FIT_RUNS = ("update:1:128", "update:2:128", "update:1:64", "update:1:64:48")
CHECK_RUN = "update:4:128"


def fit(results, above="end_rss"):
    """The measured update's memory over a reference level, float32 on CPU, as
    m(L, n, c) = a0 + c_head * min(c, N) + a1 * n + L * b1 * n
    with L decoder layers, n = prompt + G * T tokens the language model sees, N = G * T the head's
    tokens, c the chunk. above="end_rss": the peak over the weights and every gradient (the RSS when
    the backward is done), the transient that static_bytes leaves out; "base": over the weights
    alone ("net"). From FIT_RUNS: layers 1 and 2, a smaller chunk, and that chunk at half the
    tokens; CHECK_RUN (4 layers) is left out, to check it."""
    info = {r["run"]: r for r in results}
    m = lambda run: info[run]["peak"] - info[run][above]
    n = lambda run: info[run]["prompt_len"] + info[run]["G"] * info[run]["T"]
    head = lambda run: min(info[run]["chunk"], info[run]["G"] * info[run]["T"])  # chunk's tokens
    r1, r2, small, fewer = FIT_RUNS
    b1 = (m(r2) - m(r1)) / n(r1)
    c_head = (m(r1) - m(small)) / (head(r1) - head(small))
    a1 = (m(small) - m(fewer)) / (n(small) - n(fewer)) - b1
    a0 = m(r1) - c_head * head(r1) - (a1 + b1) * n(r1)
    return dict(a0=a0, c_head=c_head, a1=a1, b1=b1)


def activation_bytes(f, layers, n, N, c=chunk, checkpointing=True, D=3584, I=18944):
    """The fit f at L layers, n tokens, N head tokens, chunk c. Without checkpointing each layer
    also keeps its internals: (6 D + 4 I) values a token (norm, q/k/v, attention out, gate, up,
    act, product), in bf16."""
    b = f["a0"] + f["c_head"] * min(c, N) + (f["a1"] + layers * f["b1"]) * n
    return b + (0 if checkpointing else layers * n * (6 * D + 4 * I) * 2)


def eval_bytes(P, layers=28, D=3584, I=18944, kv=4 * 128):
    """eval.py at 64 frames, arithmetic only: bf16 weights, the KV cache of eval_batch rows of
    prompt + new tokens, and the prefill's largest transient (one layer's MLP over every token)."""
    tokens = eval_batch * eval_prompt
    cache = eval_batch * (eval_prompt + eval_new_tokens) * layers * 2 * kv * 2
    return 2 * P + cache + tokens * (2 * D + 3 * I) * 2


def rows(results):
    """(setup, strategy, GPUs, checkpointing, update bytes, rollout bytes) for the shipped configs."""
    f = fit(results)
    config = qwen25_vl_7b()
    counts = param_counts(config)
    P, A, root = counts["total"], counts["lora"], counts["root"]
    text = config.text_config
    L, V, D = text.num_hidden_layers, text.vocab_size, text.hidden_size
    roll = {r["layers"]: r["peak"] - r["base"] for r in results if r["part"] == "rollout"}
    b_roll = roll[2] - roll[1]  # the rollout's per-layer part (the KV cache and prefill of a layer)
    rollout_act = roll[1] + (L - 1) * b_roll
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
    """Each fit (net: over the weights; transient: over weights and gradients) from layers 1 and 2,
    and the plain line through the 1- and 2-layer peaks, against the 4-layer run left out:
    {name: (predicted, measured)}."""
    info = {r["run"]: r for r in results}
    r1, r2, r4 = info[FIT_RUNS[0]], info[FIT_RUNS[1]], info[CHECK_RUN]
    n, N = r4["prompt_len"] + r4["G"] * r4["T"], r4["G"] * r4["T"]
    out = {"peak": (r1["peak"] + 3 * (r2["peak"] - r1["peak"]), r4["peak"])}
    for name, above in (("net", "base"), ("transient", "end_rss")):
        out[name] = (activation_bytes(fit(results, above), 4, n, N, c=r4["chunk"]),
                     r4["peak"] - r4[above])
    return out


def markdown(table):
    lines = ["| run | strategy | GPUs | grad. ckpt | update GB | rollout GB | "
             + " | ".join(f"{c} GB" for c in CARDS) + " |", "|" + "---|" * (6 + len(CARDS))]
    for setup, strategy, n, ckpt, update, rollout in table:
        need = max(update, rollout)
        fits = " | ".join("yes" if need <= c * 1e9 else "no" for c in CARDS)
        ck = "-" if ckpt is None else "on" if ckpt else "off"
        lines.append(f"| {setup} | {strategy} | {n} | {ck} | {update / 1e9:.1f} | "
                     f"{rollout / 1e9:.1f} | {fits} |")
    return "\n".join(lines)


if __name__ == "__main__":
    from configurator import configure
    configure(globals())
    results = [json.loads(line) for line in open(bench_json)]
    f, counts, table = rows(results)
    print(f"parameters: {counts}")
    print("fit (bytes): " + ", ".join(f"{k} {v:.4g}" for k, v in f.items()))
    for name, (pred, meas) in check(results).items():
        print(f"4 layers, {name}: {meas / GiB:.2f} GiB measured, {pred / GiB:.2f} GiB from layers 1 "
              f"and 2 ({pred / meas - 1:+.1%})")
    print(f"Prediction per GPU from CPU measurements (python bench_memory.py && python memory.py), "
          f"T-GRPO: G = {G} x {T} tokens after a 16-frame prompt; SFT: one {sft_target}-token target.")
    print(markdown(table))
