"""
bench_memory.py: peak memory of one T-GRPO update and of a rollout at Qwen2.5-VL-7B's real widths
(hidden 3584, MLP 18944, 28/4 heads, vocabulary 152,064, vision width 1280), random weights, on CPU,
with a few decoder layers; the fit fixed + per-layer part that memory.py turns into per-GPU numbers.

    python bench_memory.py                   # the sweep below: ~20 min CPU, 4 layers need ~18 GiB
    python bench_memory.py --runs=update:1:128   # one run: part:layers:chunk[:completion tokens]
    python memory.py                             # the fit, its check and the table (reads the json)

Each run is its own process (the peak of one process is one number: VmHWM, reset before each phase
through /proc/self/clear_refs), appended to `out_json`, so the sweep resumes where it stopped.
Large allocations go straight to mmap (MALLOC_MMAP_THRESHOLD_), so freed tensors leave the RSS.
Update: 1 video prompt (16 frames, 128*28*28 pixels each: 1024 visual tokens) and G = 8 completions
of `T` tokens; the reference/old log-probs (no grad) then the policy forward + backward under
non-reentrant gradient checkpointing, as tgrpo.py. Reported above the weights ("net"): what the
update adds, gradients included. Simplifications, said: float32 (the GPU run computes in bf16 under
autocast), the vision tower one block deep (its 31 other blocks' weights are exact arithmetic in
memory.py; under checkpointing each adds only its 4096 x 1280 input), CPU attention (sdpa's math
path materialises [R, heads, T, Lp + T] scores that flash-attention never holds).
Rollout: prefill of the ordered and the shuffled prompt, the KV cache for G + G~ = 8 + 4 rows
preallocated for L + max_new_tokens (RolloutCache), then every row stops at its first token: the
preallocated cache is the peak's size whatever the number of decoded tokens.
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

import data
from configurator import configure
from demo import make_tiny_checkpoint
from model import VisionOnceLM, generate, head_logprobs, load_model, token_logprobs

# part:layers:chunk[:T]. Chunk 128 at T = 96 is chunk 1024 at the paper's 768: 6 chunks a batch
runs = ("update:1:128,update:2:128,update:4:128,update:1:none,update:1:64,update:1:64:48,"
        "rollout:1:128,rollout:2:128")
T = 96                     # completion tokens per row (the paper's 768 is 8x the CPU time)
G = 8                      # completions of the ordered prompt (paper)
G_shuffled = 4             # rollout rows of the shuffled prompt (paper)
frames = 16                # 16 frames of 224x448 = 128*28*28 pixels: 8 x 128 = 1024 visual tokens
max_new_tokens = 768       # rollout: the cache is preallocated for this many new tokens
vision_depth = 1           # vision blocks built (Qwen2.5-VL-7B has 32, see the docstring)
out_json = "out/bench_memory.json"
child = ""                 # set by the sweep: the one run this process makes
device = "cpu"             # "cuda": gpu_check.py's runs (allocator peaks, bf16 autocast, wall time)
config = configure(globals(), None if __name__ == "__main__" else [])  # gpu_check imports it

QWEN25_VL_7B = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                    num_key_value_heads=4, vocab_size=152064, rope_theta=1e6,
                    vision=dict(hidden_size=1280, intermediate_size=3420, num_heads=16,
                                out_hidden_size=3584, fullatt_block_indexes=[7, 15, 23, 31]))


def rss(field):
    """VmRSS or VmHWM (peak) of this process in bytes; on a GPU the allocator's (peak) bytes."""
    if device == "cuda":
        peak = field == "VmHWM"
        return torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def reset_peak():
    if device == "cuda":
        return torch.cuda.reset_peak_memory_stats()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux >= 4.0: VmHWM := VmRSS


def clock():
    """CPU time of this process (steady on a shared machine); on a GPU wall time after a sync."""
    if device == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def autocast():
    """bf16 autocast on a GPU, as tgrpo.py under accelerate's bf16; float32 on CPU."""
    return torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")


def matmul_peak():
    """FLOP/s of one big float32 matmul on this core: the ceiling the update's matmuls meet."""
    a, b = torch.randn(1024, 3584), torch.randn(3584, 4096)
    a @ b
    t0 = clock()
    for _ in range(3):
        a @ b
    return 3 * 2 * 1024 * 3584 * 4096 / (clock() - t0)


def copy_bandwidth():
    """Bytes/s of copying 512 MiB (read + write): the ceiling of decoding, which reads weights."""
    src = torch.ones(2 ** 27)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t0 = clock()
    for _ in range(3):
        dst.copy_(src)
    return 3 * 2 * src.numel() * 4 / (clock() - t0)


def build(layers):
    """A random-weight Qwen2.5-VL-7B-wide model with `layers` decoder layers, and a tokenizer."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    w = QWEN25_VL_7B
    with tempfile.TemporaryDirectory() as tmp:
        make_tiny_checkpoint(tmp, [data.SYSTEM_PROMPT], vision_depth=1)
        _, tokenizer = load_model(tmp)
        cfg = type(_.config).from_pretrained(tmp)
    t = cfg.text_config
    t.hidden_size, t.intermediate_size = w["hidden_size"], w["intermediate_size"]
    t.num_attention_heads = w["num_attention_heads"]
    t.num_key_value_heads = w["num_key_value_heads"]
    t.head_dim, t.num_hidden_layers, t.vocab_size = 128, layers, w["vocab_size"]
    t.layer_types = ["full_attention"] * layers
    t.rope_parameters = dict(rope_type="default", rope_theta=w["rope_theta"],
                             mrope_section=[16, 24, 24])
    for k, v in w["vision"].items():
        setattr(cfg.vision_config, k, v)
    cfg.vision_config.depth = vision_depth
    torch.manual_seed(0)
    with torch.device(device):
        hf = Qwen2_5_VLForConditionalGeneration(cfg).float()
    hf.generation_config.pad_token_id = tokenizer.pad_token_id
    return hf, tokenizer


def prompt_batch(tokenizer, n_prompts):
    g = torch.Generator().manual_seed(0)
    video = torch.rand(frames, 3, 224, 448, generator=g)  # [16, 3, H, W] -> grid (8, 16, 32)
    row = {"problem": "What happens?", "data_type": "video", "problem_type": "multiple choice",
           "options": ["A. left", "B. right"]}
    visuals = [data.make_visual(video, 1.0), data.make_visual(data.shuffle_frames(video, g), 1.0)]
    return data.collate([data.prompt_text(row)] * n_prompts, visuals[:n_prompts], tokenizer)


def head_run(chunk, tokens):
    """The LM head and log-softmax alone (model.head_logprobs) over G x T hidden states at the real
    widths, forward + backward: what the chunking changes, without the rest of the update's peak."""
    D, V = QWEN25_VL_7B["hidden_size"], QWEN25_VL_7B["vocab_size"]
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(D, V, bias=False, device=device)
    hidden = torch.randn(G, tokens, D, device=device, requires_grad=True)  # [G, T, D]
    targets = torch.randint(0, V, (G, tokens), device=device)  # [G, T]
    out = dict(part="head", layers=0, chunk=chunk, T=tokens, G=G, base=rss("VmRSS"), prompt_len=0,
               weights_bytes=lm_head.weight.numel() * 4)
    reset_peak()
    t0 = clock()
    with autocast():
        (head_logprobs(lm_head, hidden, targets, 1.0, chunk).sum() / hidden.shape[1]).backward()
    out.update(peak=rss("VmHWM"), seconds=clock() - t0, end_rss=rss("VmRSS"),
               flops=2 * V * D * G * tokens * (3 + (chunk is not None)), matmul_peak=matmul_peak())
    return out


def one_run(part, layers, chunk, tokens):
    torch.set_num_threads(1)
    if part == "head":
        return head_run(chunk, tokens)
    hf, tokenizer = build(layers)
    hf.train()
    hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    weights = sum(p.numel() * p.element_size() for p in hf.parameters())
    out = dict(part=part, layers=layers, chunk=chunk, T=tokens, G=G, vision_depth=vision_depth,
               weights_bytes=weights, params=sum(p.numel() for p in hf.parameters()))
    if part == "rollout":
        batch = prompt_batch(tokenizer, 2)
        base = rss("VmRSS")
        reset_peak()
        t0 = clock()
        every_id = list(range(hf.config.text_config.vocab_size))  # rows stop at their first token
        with autocast():
            res = generate(hf, batch, [G, G_shuffled], max_new_tokens, stop_ids=every_id)
        out.update(base=base, peak=rss("VmHWM"), seconds=clock() - t0,
                   prompt_len=batch["input_ids"].shape[1], decoded=res["completion_ids"].shape[1])
        # decoding: 12 rows after a short text prompt, 8 steps, each reading every LM weight once
        text = data.collate([data.SYSTEM_PROMPT] * 2, [None, None], tokenizer)
        with autocast():
            generate(hf, text, [G, G_shuffled], 1, stop_ids=[])  # prefill alone, to subtract
            t0 = clock()
            generate(hf, text, [G, G_shuffled], 9, stop_ids=[])
            t1 = clock()
            generate(hf, text, [G, G_shuffled], 1, stop_ids=[])
            step = ((t1 - t0) - (clock() - t1)) / 8
        skip = [*hf.model.visual.parameters(), *hf.get_input_embeddings().parameters()]  # not read
        read = weights - sum(p.numel() * p.element_size() for p in skip)
        out.update(decode_step_seconds=step, decode_bytes_per_s=read / step,
                   copy_bytes_per_s=copy_bandwidth())
        return out
    batch = prompt_batch(tokenizer, 1)
    prompt_index = torch.zeros(G, dtype=torch.long)  # [G]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, tokenizer.vocab_size, (G, tokens), generator=g)  # [G, T]
    lengths = torch.full((G,), tokens)  # every row full length: the worst case
    policy = VisionOnceLM(hf, chunk)
    base = rss("VmRSS")
    out.update(base=base, prompt_len=batch["input_ids"].shape[1])
    if layers == 1:  # reference and old log-probs: no grad, one chunk of logits at a time
        reset_peak()
        t0 = clock()
        with torch.no_grad(), autocast():
            logp_ref = token_logprobs(policy, batch, prompt_index, ids, lengths)  # [G, T]
        out.update(ref_peak=rss("VmHWM"), ref_seconds=clock() - t0)
    reset_peak()
    t0 = clock()
    with autocast():
        logp = token_logprobs(policy, batch, prompt_index, ids, lengths)  # [G, T]
        out.update(fwd_seconds=clock() - t0, fwd_rss=rss("VmRSS"))
        advantages = torch.randn(G, generator=torch.Generator().manual_seed(2)).to(logp.device)
        (-(logp * advantages[:, None]).sum() / lengths.sum()).backward()
    out.update(peak=rss("VmHWM"), seconds=clock() - t0, end_rss=rss("VmRSS"),
               grads_bytes=sum(p.grad.numel() * 4 for p in hf.parameters() if p.grad is not None))
    # matmul FLOPs (2 a multiply-add): each layer's weights over the n tokens forward, recomputed
    # and backward (2x); the head's over the G * T completion tokens likewise (recomputed: chunked)
    D, V = hf.config.text_config.hidden_size, hf.config.text_config.vocab_size
    layer = sum(p.numel() for p in hf.model.language_model.layers[0].parameters())
    n = out["prompt_len"] + G * tokens
    flops = 2 * 4 * layers * layer * n + 2 * V * D * G * tokens * (3 + (chunk is not None))
    out.update(flops=flops, matmul_peak=matmul_peak())
    return out


def parse(run):
    part, layers, chunk, *tokens = run.split(":")
    chunk = None if chunk == "none" else int(chunk)
    return part, int(layers), chunk, int(tokens[0]) if tokens else T


if __name__ == "__main__":
    if child:
        print("RESULT " + json.dumps(one_run(*parse(child))), flush=True)
        sys.exit()
    os.makedirs(os.path.dirname(out_json), exist_ok=True)
    done = []
    if os.path.isfile(out_json):
        done = [json.loads(l)["run"] for l in open(out_json)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="1048576")
    for run in runs.split(","):
        if run in done:
            continue
        print(f"{run} ...", flush=True)
        p = subprocess.run([sys.executable, __file__, *sys.argv[1:], f"--child={run}"], env=env,
                           capture_output=True, text=True)
        lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
        if p.returncode or not lines:
            sys.exit(f"{run} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
        r = dict(json.loads(lines[0][7:]), run=run)
        gib = lambda b: f"{b / 2**30:.2f}"
        print(f"  peak {gib(r['peak'])} GiB, net {gib(r['peak'] - r['base'])} GiB, "
              f"{r['seconds']:.0f} s", flush=True)
        with open(out_json, "a") as f:
            f.write(json.dumps(r) + "\n")
