"""
bench.py: are the rollout engine and vision-once log-probs worth having? Run by hand, not in CI.

    python bench.py                                   # random-weight Qwen2.5-VL on CPU, a few minutes
    python bench.py --device=cuda --dtype=bfloat16    # the same on a GPU

Both sides get the same model, the same video prompts (16 frames of 224x224 -> 512 visual tokens each)
and the same amount of work:
1. rollout: per video prompt G ordered + G_shuffled shuffled samples of exactly max_new_tokens tokens
   (no early stop on either side; temperature 1, top_p 0.95).
   ours: model.generate, one call, every prompt prefilled once and its KV cache copied into its rows.
   HF:   generate(num_return_sequences=G) on the ordered prompts, then (=G_shuffled) on the shuffled
         ones, which prefills the language model for every row separately (transformers 5.23 already
         encodes each visual once before expanding to the G rows).
2. policy log-prob forward+backward of G completions of one video prompt.
   ours: VisionOnceLM via token_logprobs, the video encoded once and copied into the G rows.
   HF:   the naive per-row input, the video repeated in every row (LM head on the completion only,
         as ours, so only the vision-once part differs).
"""
import sys
import tempfile
import time

import torch

import data
from configurator import configure
from model import VisionOnceLM, generate, load_model, make_tiny_checkpoint, token_logprobs

device = "cpu"             # "cuda" on a GPU machine
dtype = "float32"          # "bfloat16" on a GPU
num_prompts = 2            # video prompts per rollout batch
G = 8                      # ordered samples per prompt (paper)
G_shuffled = 4             # shuffled-frame samples per prompt (paper)
frames = 16                # training frames per video (paper)
frame_size = 224           # 224x224 frames -> grid (8, 16, 16) -> 8*8*8 = 512 visual tokens
max_new_tokens = 64        # rollout length, forced for both sides
completion_len = 128       # completion tokens per row in the log-prob benchmark
# model shape: the vision tower's cost per visual token relative to the LM's cost per token decides
# what vision-once can save; these sizes give about 0.33, Qwen2.5-VL-7B's is about 0.39 (printed below)
hidden_size = 256          # text width (4 heads)
num_layers = 4             # text layers
vision_hidden_size = 64    # vision width (4 heads)
vision_depth = 4           # vision blocks
repeats = 3                # timed runs per side (after a warm-up), alternating ours/HF; the best counts
seed = 0
config = configure(globals())

torch.manual_seed(seed)
torch_dtype = getattr(torch, dtype)


def compare(ours, theirs):
    """Best wall times (ours, theirs) of `repeats` runs each, after a warm-up; the two alternate so
    that a change in machine load hits both sides alike."""
    best = [float("inf"), float("inf")]
    for i in range(repeats + 1):
        for side, fn in enumerate((ours, theirs)):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i > 0:  # run 0 is the warm-up
                best[side] = min(best[side], time.perf_counter() - t0)
    return best


def hf_video_inputs(input_ids, visuals):
    """HF's inputs for rows that each carry a video: token types and the videos in row order."""
    return {"mm_token_type_ids": (input_ids == hf.config.video_token_id).long() * 2,
            "pixel_values_videos": torch.cat([v["pixel_values"] for v in visuals]).to(device),
            "video_grid_thw": torch.stack([v["grid_thw"] for v in visuals]).to(device),
            "second_per_grid_ts": torch.tensor([v["second_per_grid_t"] for v in visuals], device=device)}


# model and prompts
texts = [data.QUESTION_TEMPLATE, *data.TYPE_TEMPLATE.values(), data.SYSTEM_PROMPT, "<think>let me think</think>"]
with tempfile.TemporaryDirectory() as tmp:
    make_tiny_checkpoint(tmp, texts, seed=seed, hidden_size=hidden_size, num_layers=num_layers,
                         vision_hidden_size=vision_hidden_size, vision_depth=vision_depth)
    hf, tokenizer = load_model(tmp, dtype=torch_dtype, device=device)
hf.requires_grad_(True)
g = torch.Generator().manual_seed(seed)
videos = [torch.rand(frames, 3, frame_size, frame_size, generator=g) for _ in range(num_prompts)]  # [T, 3, H, W]
ordered = [data.make_visual(v, 1.0) for v in videos]  # 16 frames at 2 fps: 1 s per frame pair
shuffled = [data.make_visual(data.shuffle_frames(v, g), 1.0) for v in videos]
rows = [{"problem": f"What happens to square {i}?", "data_type": "video", "problem_type": "multiple choice",
         "options": ["A. it moves left", "B. it moves right"]} for i in range(num_prompts)]
prompts = [data.prompt_text(r) for r in rows]
batch = data.collate(prompts + prompts, ordered + shuffled, tokenizer)  # ordered prompts, then shuffled
n_visual = int(ordered[0]["grid_thw"].prod()) // 4

# 1. rollout
n = [G] * num_prompts + [G_shuffled] * num_prompts
sampling = dict(temperature=1.0, top_p=0.95)


def ours_rollout():
    generate(hf, batch, n, max_new_tokens, stop_ids=[], **sampling, generator=torch.Generator(device).manual_seed(seed))


def hf_rollout():
    for half, num_return_sequences in ((slice(0, num_prompts), G), (slice(num_prompts, None), G_shuffled)):
        input_ids, mask = batch["input_ids"][half].to(device), batch["attention_mask"][half].to(device)
        hf.model.rope_deltas = None
        with torch.no_grad():
            out = hf.generate(input_ids=input_ids, attention_mask=mask, **hf_video_inputs(input_ids, batch["visuals"][half]),
                              do_sample=True, top_k=0, **sampling, max_new_tokens=max_new_tokens,
                              min_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences,
                              pad_token_id=tokenizer.pad_token_id)
        assert out.shape[1] == input_ids.shape[1] + max_new_tokens


hf.eval()
ours_rollout_time, hf_rollout_time = compare(ours_rollout, hf_rollout)
rollout_tokens = sum(n) * max_new_tokens

# 2. policy log-prob forward + backward, G rows of the first ordered prompt
one = data.collate(prompts[:1], ordered[:1], tokenizer)
prompt_index = torch.zeros(G, dtype=torch.long)
completion_ids = torch.randint(0, tokenizer.convert_tokens_to_ids("<|endoftext|>"), (G, completion_len), generator=g)
lengths = torch.full((G,), completion_len)
policy = VisionOnceLM(hf)
hf.train()


def ours_logprob_step():
    hf.zero_grad(set_to_none=True)
    token_logprobs(policy, one, prompt_index, completion_ids.to(device), lengths.to(device)).sum().backward()


def hf_logprob_step():
    hf.zero_grad(set_to_none=True)
    input_ids = torch.cat([one["input_ids"].expand(G, -1), completion_ids], dim=1).to(device)  # [G, Lp+T]
    mask = torch.ones_like(input_ids)
    hf.model.rope_deltas = None
    logits = hf(input_ids=input_ids, attention_mask=mask, **hf_video_inputs(input_ids, [ordered[0]] * G),
                logits_to_keep=completion_len + 1).logits[:, :-1].float()  # [G, T, V]
    logp = logits.log_softmax(-1).gather(-1, input_ids[:, -completion_len:, None]).squeeze(-1)  # [G, T]
    logp.sum().backward()


ours_logprob, hf_logprob = compare(ours_logprob_step, hf_logprob_step)

# report
visual = hf.model.visual
# multiply-adds per visual token: every block runs on its 4 patches, the merger once; the LM's layers once
vision_cost = 4 * sum(p.numel() for p in visual.blocks.parameters()) + sum(p.numel() for p in visual.merger.parameters())
lm_cost = sum(p.numel() for p in hf.model.language_model.layers.parameters())
print(f"command: python {' '.join(sys.argv)}")
print(f"device {device} ({torch.get_num_threads()} threads), {dtype}, torch {torch.__version__}; "
      f"text {hidden_size}x{num_layers} layers, vision {vision_hidden_size}x{vision_depth} blocks, "
      f"{sum(p.numel() for p in hf.parameters()) / 1e6:.1f}M params, vocab {len(tokenizer)}; "
      f"vision/LM cost per visual token {vision_cost / lm_cost:.2f}")
print(f"video prompts: {frames} frames of {frame_size}x{frame_size} -> {n_visual} visual tokens, "
      f"prompt length {batch['input_ids'].shape[1]}; best of {repeats} runs after a warm-up")
print()
print(f"| measurement | ours (s) | HF (s) | speed-up | target |")
print(f"|---|---|---|---|---|")
print(f"| rollout: {num_prompts} prompts x ({G} + {G_shuffled} shuffled) x {max_new_tokens} new tokens "
      f"({rollout_tokens / ours_rollout_time:.0f} vs {rollout_tokens / hf_rollout_time:.0f} tok/s) "
      f"| {ours_rollout_time:.2f} | {hf_rollout_time:.2f} | {hf_rollout_time / ours_rollout_time:.2f}x | >= 3x |")
print(f"| log-prob fwd+bwd: G={G} rows x {completion_len} completion tokens, one video "
      f"| {ours_logprob:.2f} | {hf_logprob:.2f} | {hf_logprob / ours_logprob:.2f}x | >= 1.5x |")
