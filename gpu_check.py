"""
gpu_check.py: the one check to run the day a GPU is at hand (under 10 minutes on one H100/H200).

    python gpu_check.py                     # on the GPU machine, from the repository root
    python gpu_check.py --device=cpu --small=True --demo_steps=1   # the suite's reduced CPU run

1. A few demo steps of sft.py then tgrpo.py (config/*_demo.py) with bf16, flash-attention-2 when
   installed (model.load_model picks it on CUDA), gradient checkpointing on: they run, and how long.
2. bench_memory.py's update at Qwen2.5-VL-7B's real widths with 1, 2, 4 decoder layers on the GPU
   (allocator peak above the weights, bf16 autocast), next to what the CPU measured for the same run
   (out/bench_memory.json, when present) and what memory.py's fit predicts; then the paper's shape
   (8 x 768 tokens, chunk 1024), the unchunked head at 1 layer, and the head alone both ways.
3. Rollout tokens/s at real widths: the full 28-layer model (random weights, fp32 under bf16
   autocast as in tgrpo.py), G + G~ = 12 rows after a 16-frame prompt, `rollout_tokens` new
   tokens each.
One table at the end. --small=True shrinks the widths (the same code paths) for the CPU test.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

import bench_memory
import memory
from configurator import configure

device = "cuda"
small = False              # tiny widths and frames: the suite's CPU run of the same code
demo_steps = 3             # optimizer steps of each demo stage
rollout_tokens = 256       # new tokens per row in the tokens/s measurement
runs = ("update:1:128,update:2:128,update:4:128,update:1:1024:768,update:4:1024:768,"
        "update:1:none:768,head:0:1024:768,head:0:none:768")
bench_json = "out/bench_memory.json"  # the CPU measurements to compare with
config = configure(globals(), None if __name__ == "__main__" else [])  # the test sets them

SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=2, num_key_value_heads=1,
             vocab_size=4096, vision=dict(hidden_size=64, intermediate_size=128, num_heads=1,
                                          out_hidden_size=256, fullatt_block_indexes=[0]))


def demo_stage(script, cfg, out_dir, *flags):
    """Seconds of `demo_steps` steps of a stage script on the demo data, in its own process."""
    env = dict(os.environ, ACCELERATE_MIXED_PRECISION="bf16" if device == "cuda" else "no")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, script, cfg, f"--out_dir={out_dir}",
                    f"--max_steps={demo_steps}", "--gradient_checkpointing=True", *flags],
                   env=env, check=True)
    return time.perf_counter() - t0


def rollout_tokens_per_s():
    """Tokens/s of one rollout (12 rows, each `rollout_tokens` long) of the full-depth model."""
    layers = 2 if small else 28
    bench_memory.vision_depth = 1 if small else 32
    hf, tokenizer = bench_memory.build(layers)
    batch = bench_memory.prompt_batch(tokenizer, 2)
    with bench_memory.autocast():
        bench_memory.generate(hf, batch, [8, 4], 2, stop_ids=[])  # warm-up
        t0 = bench_memory.clock()
        out = bench_memory.generate(hf, batch, [8, 4], rollout_tokens, stop_ids=[])
        seconds = bench_memory.clock() - t0
    return int(out["lengths"].sum()) / seconds


def main():
    bench_memory.device = device
    if small:
        bench_memory.QWEN25_VL_7B.update(SMALL)
        bench_memory.frames = 4
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        sft = demo_stage("sft.py", "config/sft_demo.py", f"{tmp}/sft", "--eval_every=0",
                         "--n_samples=0", "--batch_size=2", "--micro_batch_size=2")
        rl = demo_stage("tgrpo.py", "config/tgrpo_demo.py", f"{tmp}/tgrpo",
                        f"--model_path={tmp}/sft",
                        "--prompts_per_rank=2", "--num_iterations=1", "--sample_every=0")
    table.append(f"demo: {demo_steps} SFT steps {sft:.0f} s, {demo_steps} T-GRPO steps {rl:.0f} s")
    cpu = {}
    if os.path.isfile(bench_json) and not small:
        cpu = {json.loads(l)["run"]: json.loads(l) for l in open(bench_json)}
    have = all(k in cpu for k in memory.FIT_RUNS + memory.HEAD_RUNS)
    a, b = memory.fit(list(cpu.values()))["net"] if have else (None, None)  # net = a + b * layers
    table.append("| run | GPU net GiB | CPU net GiB | fit GiB | GPU s |\n|---|---|---|---|---|")
    gib = lambda b: "-" if b is None else f"{b / 2 ** 30:.3f}"
    for run in runs.split(","):
        part, layers, chunk, T = bench_memory.parse(run)
        if small:
            T = min(T, 16)
        r = bench_memory.one_run(part, layers, chunk, T)
        fitted = a is not None and run in memory.FIT_RUNS + (memory.CHECK_RUN,)
        pred = a + b * layers if fitted else None
        theirs = cpu[run]["peak"] - cpu[run]["base"] if run in cpu else None
        table.append(f"| {run} | {gib(r['peak'] - r['base'])} | {gib(theirs)} | {gib(pred)} | "
                     f"{r['seconds']:.2f} |")
        if device == "cuda":
            torch.cuda.empty_cache()
    table.append(f"rollout at real widths: {rollout_tokens_per_s():.0f} tokens/s "
                 f"(12 rows x {rollout_tokens} new tokens, fp32 weights under bf16 autocast)")
    print("\n".join(table))
    return table


if __name__ == "__main__":
    main()
