"""
bench.py: what each speed lever of model.py is worth, measured side by side in one run. Run by hand, not in CI.

    python bench.py                                   # random-weight Qwen2.5-VL on CPU, about 10 minutes
    python bench.py --parts=rollout,logprob          # some parts: rollout, logprob, sft, step, media,
                                                     # prefetch, deadline
    python bench.py --device=cuda --dtype=bfloat16    # the same on a GPU
    python bench.py --family=qwen3_5 --parts=rollout,logprob,sft   # tiny hybrid Qwen3.5 (2*num_layers
                                                      # layers, 3 of 4 Gated DeltaNet), 224x224 = 7x7 tokens

Both sides of a comparison get the same model and inputs; they alternate, and the best of `repeats`
runs after a warm-up counts. On a CPU with threads=1 the clock is the process's CPU time, which other
work on a shared machine barely moves (wall time on a GPU). Video prompts: 16 frames of 224x224 -> 512
visual tokens, 722 tokens in all.
1. rollout: per video prompt G ordered + G_shuffled shuffled samples, temperature 1, top_p 0.95.
   ours: model.generate, one call, each prompt prefilled once, finished rows dropped from the batch.
   HF:   generate(num_return_sequences=G) on the ordered prompts, then (=G_shuffled) on the shuffled
         ones (transformers 5.23 encodes each visual once, then prefills every row).
   forced: every row exactly max_new_tokens long (no stop ids on either side).
   spread: rows stop when they sample one of `stop_tokens` random tokens (lengths spread like a
         geometric distribution, a share truncated); HF is made to stop each row at the length ours
         sampled (a logits processor), so both sides generate exactly the same number of tokens per row.
2. log-prob fwd+bwd, G rows of one video prompt, completions a third of the prompt (T-GRPO's update).
   ours: VisionOnceLM, the video and the prompt run once, completions attend to the shared prompt.
   per-row: the plain HF forward, prompt and video repeated in every row. Time and peak memory.
3. SFT micro-batch: 8 rows, each with its own video prompt (nothing to share): ours (prompt pass +
   completion pass) against the one-pass HF forward; ours should be no slower.
4. T-GRPO step split (ours): one prompt's step on a real decoded video (the 10 s 640x360 file below
   at the training setting): media, vision, prefill, decode, reference log-probs, policy forward, backward.
5. media: H.264 files written once with PyAV into media_dir (640x360 and 1280x720, 30 fps, 10 s and
   120 s, x264 ultrafast, a keyframe every 250 frames), decoded with data.load_video + patchified at
   the training (16 frames, 128*28*28 pixels) and evaluation (64 frames, 256*28*28) settings.
6. prefetch: a T-GRPO-like loop of `prefetch_steps` steps, one video prompt each (the release's one
   prompt per GPU): its clip (the four files above in turn) decoded at the training setting, shuffled,
   patchified and collated, then the rollout (8 + 4 samples), reference log-probs, policy forward +
   backward. The media come inline (decoded at the start of each step), from a background thread
   (data.prefetch: what sft.py, tgrpo.py and eval.py use), from a background process, or were all decoded
   before the loop; every way gives the same losses (checked). Wall time (the background works in parallel
   to the model, so CPU time would not show it; it needs a free core), the first step's decode left out.
   Then eval's decode-once: 4 clips x 3 questions, decoded per question vs once per clip.
7. deadline: the cost of media_timeout on the normal path: data.load_frames of the four clips above
   (training setting) and of 32 demo clips (demo setting, when demo/world exists), in this thread
   vs in a DecodeProcess child (the frames pickled back through a socket); alternating, best of
   `repeats`, after the child has started. Wall time, and CPU time of this process + the child.
"""
import ctypes
import itertools
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import av
import numpy as np
import torch
from transformers import LogitsProcessorList

import data
import families
from configurator import configure
from demo import make_tiny_checkpoint
from model import VisionOnceLM, embed_prompts, generate, load_model, token_logprobs

device = "cpu"             # "cuda" on a GPU machine
dtype = "float32"          # "bfloat16" on a GPU
threads = 1                # torch CPU threads: 1 gives steady timings on a shared machine
parts = "rollout,logprob,sft,step,media,prefetch,deadline"  # step..deadline: Qwen2.5-VL only
family = "qwen2_5_vl"      # the tiny model's model_type: qwen2_5_vl, qwen3_vl, qwen3_5
num_prompts = 2            # video prompts per rollout batch
G = 8                      # ordered samples per prompt (paper)
G_shuffled = 4             # shuffled-frame samples per prompt (paper)
frames = 16                # training frames per video (paper)
frame_size = 224           # 224x224 frames -> grid (8, 16, 16) -> 8*8*8 = 512 visual tokens
max_new_tokens = 64        # forced rollout length
spread_max_new_tokens = 128  # cap of the spread rollout and of the T-GRPO step
stop_tokens = 5            # random ordinary tokens that end a row in the spread rollout (~1% per step here)
# model shape: the vision tower's cost per visual token relative to the LM's cost per token decides
# what vision-once can save; these sizes give about 0.33, Qwen2.5-VL-7B's is about 0.39 (printed below)
hidden_size = 256          # text width (4 heads)
num_layers = 4             # text layers
vision_hidden_size = 64    # vision width (4 heads)
vision_depth = 4           # vision blocks
repeats = 3                # timed runs per side (after a warm-up), alternating; the best counts
media_dir = "out/bench_media"  # the H.264 files, written on first use
prefetch_steps = 8         # steps of the prefetch loop (the four clips in turn)
seed = 0
config = configure(globals())
fam = families.of(family)

torch.manual_seed(seed)
torch_dtype = getattr(torch, dtype)
on_gpu = device.startswith("cuda")
if not on_gpu:
    torch.set_num_threads(threads)
wanted = set(parts.split(","))
rows_out = []  # (measurement, ours (s), plain (s), target) for the report


def sync():
    if on_gpu:
        torch.cuda.synchronize()


clock = time.process_time if not on_gpu and threads == 1 else time.perf_counter


def timed(fn):
    sync()
    t0 = clock()
    fn()
    sync()
    return clock() - t0


def compare(ours, theirs):
    """Best times (ours, theirs) of `repeats` runs each after a warm-up, alternating sides."""
    best = [float("inf"), float("inf")]
    for i in range(repeats + 1):
        for side, fn in enumerate((ours, theirs)):
            t = timed(fn)
            if i > 0:
                best[side] = min(best[side], t)
    return best


def peak_memory(fn):
    """Bytes above the start that fn holds at its peak: the CUDA allocator's peak on a GPU, else the
    resident set's high-water mark (Linux: reset through /proc/self/clear_refs before the run)."""
    if on_gpu:
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        return torch.cuda.max_memory_allocated() - start
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed memory leaves the resident set, so reuse counts
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    status = lambda key: int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
    start = status("VmRSS")
    fn()
    return status("VmHWM") - start


def hf_video_inputs(input_ids, visuals):
    """HF's inputs for rows that each carry a video: token types and the videos in row order."""
    return {"mm_token_type_ids": (input_ids == hf.config.video_token_id).long() * 2,
            "pixel_values_videos": torch.cat([v["pixel_values"] for v in visuals]).to(device),
            "video_grid_thw": torch.stack([v["grid_thw"] for v in visuals]).to(device)} | (
        {} if fam.timestamps else  # Qwen3-VL, Qwen3.5: time is in the text
        {"second_per_grid_ts": torch.tensor([v["second_per_grid_t"] for v in visuals], device=device)})


def video_row(i):
    return {"problem": f"What happens to square {i}?", "data_type": "video", "problem_type": "multiple choice",
            "options": ["A. it moves left", "B. it moves right"]}


# model and prompts
texts = [data.QUESTION_TEMPLATE, *data.TYPE_TEMPLATE.values(), data.SYSTEM_PROMPT, "<think>let me think</think>"]
with tempfile.TemporaryDirectory() as tmp:
    make_tiny_checkpoint(tmp, texts, seed=seed, hidden_size=hidden_size, num_layers=num_layers,
                         vision_hidden_size=vision_hidden_size, vision_depth=vision_depth, model_type=family)
    hf, tokenizer = load_model(tmp, dtype=torch_dtype, device=device)
hf.requires_grad_(True)
g = torch.Generator().manual_seed(seed)
videos = [torch.rand(frames, 3, frame_size, frame_size, generator=g) for _ in range(num_prompts)]  # [T, 3, H, W]
# 16 frames at 2 fps: 1 s per frame pair (Qwen3-VL, Qwen3.5: the frames' times)
time_of = lambda: [i / 2 for i in range(frames)] if fam.timestamps else 1.0
ordered = [data.make_visual(v, time_of(), fam) for v in videos]
shuffled = [data.make_visual(data.shuffle_frames(v, g), time_of(), fam) for v in videos]
prompts = [data.prompt_text(video_row(i)) for i in range(num_prompts)]
batch = data.collate(prompts + prompts, ordered + shuffled, tokenizer)  # ordered prompts, then shuffled
n_visual = int(ordered[0]["grid_thw"].prod()) // 4
n = [G] * num_prompts + [G_shuffled] * num_prompts
sampling = dict(temperature=1.0, top_p=0.95)
first_special = tokenizer.convert_tokens_to_ids("<|endoftext|>")  # ids below it are ordinary tokens
stop_ids = torch.randperm(first_special, generator=g)[:stop_tokens].tolist()


class StopAt:
    """HF logits processor: row r samples `stop` as its token number lengths[r] and never before, so
    HF generates exactly the lengths our engine sampled."""

    def __init__(self, lengths, prompt_length, stop):
        self.lengths, self.prompt_length, self.stop = lengths.to(device), prompt_length, stop

    def __call__(self, input_ids, scores):
        now = self.lengths == input_ids.shape[1] - self.prompt_length + 1  # [R] rows whose last token this is
        scores[:, self.stop] = -float("inf")
        scores[now] = -float("inf")
        scores[now, self.stop] = 0.0
        return scores


def hf_rollout(new_tokens, lengths=None):
    """HF generate on the ordered prompts, then the shuffled ones; forced lengths, or the given ones."""
    begin = 0
    for half, num_return_sequences in ((slice(0, num_prompts), G), (slice(num_prompts, None), G_shuffled)):
        input_ids, mask = batch["input_ids"][half].to(device), batch["attention_mask"][half].to(device)
        rows = num_prompts * num_return_sequences
        stop = {} if lengths is None else dict(eos_token_id=stop_ids[0], logits_processor=LogitsProcessorList(
            [StopAt(lengths[begin:begin + rows], input_ids.shape[1], stop_ids[0])]))
        begin += rows
        hf.model.rope_deltas = None
        with torch.no_grad():
            out = hf.generate(input_ids=input_ids, attention_mask=mask,
                              **hf_video_inputs(input_ids, batch["visuals"][half]), do_sample=True, top_k=0,
                              **sampling, max_new_tokens=new_tokens,
                              min_new_tokens=None if lengths is not None else new_tokens,
                              num_return_sequences=num_return_sequences, pad_token_id=tokenizer.pad_token_id, **stop)
        if lengths is not None:  # HF stopped each row where ours did
            got = ((out[:, input_ids.shape[1]:] == stop_ids[0]).long().cumsum(1) == 0).sum(1) + 1  # [rows]
            assert torch.equal(got.clamp(max=new_tokens).cpu(), lengths[begin - rows:begin].cpu()), "HF lengths differ"


hf.eval()
if "rollout" in wanted:
    ours_forced = lambda: generate(hf, batch, n, max_new_tokens, stop_ids=[], **sampling,
                                   generator=torch.Generator(device).manual_seed(seed))
    t_ours, t_hf = compare(ours_forced, lambda: hf_rollout(max_new_tokens))
    rows_out.append((f"rollout, forced: {num_prompts} prompts x ({G} + {G_shuffled} shuffled) x {max_new_tokens} "
                     f"tokens ({sum(n) * max_new_tokens / t_ours:.0f} vs {sum(n) * max_new_tokens / t_hf:.0f} tok/s)",
                     t_ours, t_hf, ">= 3x"))
    spread = lambda: generate(hf, batch, n, spread_max_new_tokens, stop_ids=stop_ids, **sampling,
                              generator=torch.Generator(device).manual_seed(seed))
    lengths = spread()["lengths"]
    t_ours, t_hf = compare(spread, lambda: hf_rollout(spread_max_new_tokens, lengths))
    rows_out.append((f"rollout, spread: the same, lengths {int(lengths.min())}-{int(lengths.max())} (mean "
                     f"{lengths.float().mean():.0f}, {(lengths == spread_max_new_tokens).float().mean():.0%} at the "
                     f"cap {spread_max_new_tokens})", t_ours, t_hf, ">= 4x"))

# 2. policy log-prob forward + backward, G rows of the first ordered prompt, completions a third as long
one = data.collate(prompts[:1], ordered[:1], tokenizer)
completion_len = one["input_ids"].shape[1] // 3
prompt_index = torch.zeros(G, dtype=torch.long)
completion_ids = torch.randint(0, first_special, (G, completion_len), generator=g)
completion_lengths = torch.full((G,), completion_len)
policy = VisionOnceLM(hf)


def ours_logprob_step():
    hf.zero_grad(set_to_none=True)
    token_logprobs(policy, one, prompt_index.to(device), completion_ids.to(device),
                   completion_lengths.to(device)).sum().backward()


def per_row_logprob_step(prompt_batch, rows, ids):
    """The plain HF forward + backward over full rows, each carrying its own prompt and video."""
    hf.zero_grad(set_to_none=True)
    input_ids = torch.cat([prompt_batch["input_ids"][rows], ids], dim=1).to(device)  # [R, Lp+T]
    mask = torch.cat([prompt_batch["attention_mask"][rows], torch.ones_like(ids)], dim=1).to(device)
    hf.model.rope_deltas = None
    T = ids.shape[1]
    logits = hf(input_ids=input_ids, attention_mask=mask,
                **hf_video_inputs(input_ids, [prompt_batch["visuals"][r] for r in rows.tolist()]),
                logits_to_keep=T + 1).logits[:, :-1].float()  # [R, T, V]
    logp = logits.log_softmax(-1).gather(-1, input_ids[:, -T:, None]).squeeze(-1)  # [R, T]
    logp.sum().backward()


hf.train()
if "logprob" in wanted:
    per_row = lambda: per_row_logprob_step(one, prompt_index, completion_ids)
    t_ours, t_hf = compare(ours_logprob_step, per_row)
    m_ours, m_hf = peak_memory(ours_logprob_step), peak_memory(per_row)
    rows_out.append((f"log-prob fwd+bwd: G={G} rows x {completion_len} completion tokens, one video prompt of "
                     f"{one['input_ids'].shape[1]} (peak memory {m_ours / 2**20:.0f} vs {m_hf / 2**20:.0f} MiB)",
                     t_ours, t_hf, ">= 3x, less memory"))

if "sft" in wanted:  # 8 rows, 8 prompts: nothing to share, so this checks the two-pass form costs nothing
    sft_videos = [data.make_visual(torch.rand(frames, 3, frame_size, frame_size, generator=g), time_of(), fam)
                  for _ in range(8)]
    sft_batch = data.collate([prompts[0]] * 8, sft_videos, tokenizer)
    sft_ids = torch.randint(0, first_special, (8, 128), generator=g)
    sft_rows = torch.arange(8)

    def ours_sft():
        hf.zero_grad(set_to_none=True)
        token_logprobs(policy, sft_batch, sft_rows.to(device), sft_ids.to(device),
                       torch.full((8,), 128, device=device)).sum().backward()

    t_ours, t_hf = compare(ours_sft, lambda: per_row_logprob_step(sft_batch, sft_rows, sft_ids))
    rows_out.append(("SFT micro-batch fwd+bwd: 8 rows with their own video prompts x 128 target tokens",
                     t_ours, t_hf, ">= 1x"))


def write_video(path, width, height, seconds, fps=30):
    """A camera panning over a textured scene with a red square crossing it, H.264 (libx264)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:2 * height, 0:2 * width].astype(np.float32)
    scene = np.stack([np.sin(xx / 37 + c) * np.cos(yy / 23 - c) for c in (0.0, 1.0, 2.0)], axis=-1)  # [2h, 2w, 3]
    scene = ((scene * 0.5 + 0.5) * 200 + rng.integers(0, 24, scene.shape)).astype(np.uint8)
    side = height // 4
    with av.open(path + ".tmp", "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23", "threads": "1"}
        for i in range(seconds * fps):
            t = i / fps
            x0, y0 = int((np.sin(t / 7) * 0.5 + 0.5) * width), int((np.cos(t / 5) * 0.5 + 0.5) * height)
            frame = scene[y0:y0 + height, x0:x0 + width].copy()  # [h, w, 3]
            x = int(t * 60) % (width - side)
            frame[height // 3:height // 3 + side, x:x + side] = (230, 40, 40)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    os.replace(path + ".tmp", path)


MEDIA = [(640, 360, 10), (640, 360, 120), (1280, 720, 10), (1280, 720, 120)]
SETTINGS = {"train": dict(max_frames=16, min_pixels=128 * 28 * 28, max_pixels=128 * 28 * 28),  # sft.py, tgrpo.py
            "eval": dict(max_frames=64, min_pixels=128 * 28 * 28, max_pixels=256 * 28 * 28)}  # config/eval_7b.py
media_paths = {}
if wanted & {"step", "media", "prefetch", "deadline"}:
    os.makedirs(media_dir, exist_ok=True)
    for w, h, s in MEDIA:
        media_paths[w, h, s] = os.path.join(media_dir, f"pan_{w}x{h}_{s}s.mp4")
        if not os.path.exists(media_paths[w, h, s]):
            print(f"writing {media_paths[w, h, s]} ...", flush=True)
            write_video(media_paths[w, h, s], w, h, s)


def load_visual(path, setting, shuffle=False):
    video, second_per_grid_t = data.load_video(path, **SETTINGS[setting])
    return [data.make_visual(video, second_per_grid_t)] + \
        ([data.make_visual(data.shuffle_frames(video, g), second_per_grid_t)] if shuffle else [])


step_split = []
if "step" in wanted:  # one prompt (the release's 1 prompt per GPU) of a decoded 640x360 clip
    path = media_paths[640, 360, 10]
    visuals = load_visual(path, "train", shuffle=True)
    step_batch = data.collate(prompts[:1] * 2, visuals, tokenizer)
    step_n = [G, G_shuffled]
    roll = lambda new: generate(hf, step_batch, step_n, new, stop_ids=stop_ids, **sampling,
                                generator=torch.Generator(device).manual_seed(seed))
    out = roll(spread_max_new_tokens)
    rows = torch.arange(G)  # the ordered rows are trained on
    step_ids, step_len = out["completion_ids"][rows], out["lengths"][rows]
    forward = lambda: token_logprobs(policy, step_batch, out["prompt_index"][rows], step_ids, step_len)

    def media():
        load_visual(path, "train", shuffle=True)

    def vision():
        with torch.no_grad():
            embed_prompts(hf, step_batch["input_ids"].to(device), step_batch["visuals"])

    def reference():
        with torch.no_grad():
            forward()

    def backward():  # the time of loss.backward() alone
        hf.zero_grad(set_to_none=True)
        loss = forward().sum()
        return timed(loss.backward)

    best = lambda fn: min([timed(fn) for _ in range(repeats + 1)][1:])  # run 0 is the warm-up
    t_fwd, t_bwd = best(lambda: forward().sum()), min([backward() for _ in range(repeats + 1)][1:])
    t_vision, t_first, t_roll = best(vision), best(lambda: roll(1)), best(lambda: roll(spread_max_new_tokens))
    step_split = [("media: decode + patchify (ordered and shuffled)", best(media)), ("vision tower", t_vision),
                  ("prefill (language model, cache copy, first sample)", t_first - t_vision),
                  (f"decode ({int(out['lengths'].sum())} tokens in {sum(step_n)} rows, "
                   f"lengths {int(out['lengths'].min())}-{int(out['lengths'].max())})", t_roll - t_first),
                  ("reference log-probs", best(reference)), ("policy log-probs (forward)", t_fwd),
                  ("backward", t_bwd)]
    prompt_tokens = step_batch["input_ids"].shape[1]

media_rows = []
if "media" in wanted:
    for (w, h, s), path in media_paths.items():
        for setting in SETTINGS:
            t_decode = min(timed(lambda: data.load_video(path, **SETTINGS[setting])) for _ in range(2))
            video, spt = data.load_video(path, **SETTINGS[setting])
            t_patch = min(timed(lambda: data.make_visual(video, spt)) for _ in range(2))
            media_rows.append((f"{w}x{h}, {s} s", setting, tuple(video.shape), t_decode, t_patch))

prefetch_rows = []
if "prefetch" in wanted:
    clips = [media_paths[m] for m in MEDIA]

    def step_inputs(k):
        """Loop step k's batch: its clip decoded at the training setting, ordered and shuffled, collated."""
        video, second_per_grid_t = data.load_video(clips[k % len(clips)], **SETTINGS["train"])  # [16, 3, H, W]
        shuffled = data.shuffle_frames(video, torch.Generator().manual_seed(k))
        visuals = [data.make_visual(video, second_per_grid_t), data.make_visual(shuffled, second_per_grid_t)]
        return data.collate(prompts[:1] * 2, visuals, tokenizer)

    def model_step(k, step_batch):
        """Rollout, reference log-probs, policy forward + backward of one prompt; returns the loss."""
        out = generate(hf, step_batch, [G, G_shuffled], spread_max_new_tokens, stop_ids=stop_ids, **sampling,
                       generator=torch.Generator(device).manual_seed(seed + k))
        rows = torch.arange(G)  # the ordered rows are trained on
        args = (step_batch, out["prompt_index"][rows], out["completion_ids"][rows], out["lengths"][rows])
        with torch.no_grad():
            logp_ref = token_logprobs(policy, *args)                        # [G, T]
        hf.zero_grad(set_to_none=True)
        loss = (token_logprobs(policy, *args) - logp_ref).square().sum()  # a stand-in: any loss costs the same
        loss.backward()
        return loss.item()

    def process_prefetch(fn, items):
        """data.prefetch with a process instead of a thread (the pool is started before the clock)."""
        items = iter(items)
        pending = [pool.submit(fn, item) for item in itertools.islice(items, 1)]
        while pending:
            result = pending.pop().result()
            pending = [pool.submit(fn, item) for item in itertools.islice(items, 1)]
            yield result

    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"), initializer=torch.set_num_threads,
                               initargs=(1,))
    pool.submit(int).result()  # started
    predecoded = [step_inputs(k) for k in range(prefetch_steps)]
    ways = {"inline": lambda: (step_inputs(k) for k in range(prefetch_steps)),
            "background thread (data.prefetch)": lambda: data.prefetch(step_inputs, range(prefetch_steps)),
            "background process": lambda: process_prefetch(step_inputs, range(prefetch_steps)),
            "pre-decoded": lambda: iter(predecoded)}

    def run_loop(way):
        """Wall seconds of the loop from step 0's model work on (its inputs are fetched before), and the losses."""
        inputs = ways[way]()
        first = next(inputs)
        sync()
        t0 = time.perf_counter()
        losses = [model_step(0, first)] + [model_step(k, next(inputs)) for k in range(1, prefetch_steps)]
        sync()
        return time.perf_counter() - t0, losses

    model_step(0, predecoded[0])  # warm-up
    load_before = os.getloadavg()[0]  # the background needs a free core: other work on the machine takes it
    best, losses = {way: float("inf") for way in ways}, {}
    for _ in range(repeats):
        for way in ways:
            t, losses[way] = run_loop(way)
            best[way] = min(best[way], t)
    pool.shutdown()
    load_after = os.getloadavg()[0]
    assert all(l == losses["inline"] for l in losses.values()), f"the ways gave different losses: {losses}"
    t_media = sum(min(timed(lambda: step_inputs(k)) for _ in range(2)) for k in range(1, prefetch_steps))
    prefetch_rows = [(way, t, t / best["pre-decoded"]) for way, t in best.items()]

    # eval: each clip asked 3 questions (VideoMME's 3 per video), at the evaluation setting; the old loop decoded
    # once per question, eval.py's frames_of once per clip
    eval_rows = [{"media": clip, "data_type": "video"} for clip in clips for _ in range(3)]
    settings = dict(max_frames=64, video_min_pixels=128 * 28 * 28, video_max_pixels=256 * 28 * 28)

    def per_question():
        for row in eval_rows:
            data.make_visual(*data.load_frames(row, **settings))

    def decode_once():
        decoded = {}
        for row in eval_rows:
            if row["media"] not in decoded:  # the rows of a clip are adjacent: keep only the last clip
                decoded = {row["media"]: data.load_frames(row, **settings)}
            data.make_visual(*decoded[row["media"]])

    t_once, t_each = compare(decode_once, per_question)
    rows_out.append((f"eval media, {len(clips)} clips x 3 questions at 64 frames, 256*28*28: decoded once per clip "
                     f"vs once per question", t_once, t_each, "-"))

deadline_rows = []
if "deadline" in wanted:
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu(pid):
        """User + system CPU seconds of a live process (10 ms resolution)."""
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    jobs = [("the 4 clips above, training setting",
             [{"media": media_paths[m], "data_type": "video"} for m in MEDIA],
             dict(max_frames=16, video_min_pixels=128 * 28 * 28, video_max_pixels=128 * 28 * 28))]
    if os.path.exists("demo/world/rl.json"):
        demo_rows = [r for r in data.load_rows("demo/world/rl.json") if r["data_type"] == "video"]
        jobs.append(("32 demo clips, demo setting (8 frames of 112x112)", demo_rows[:32],
                     dict(max_frames=8, video_min_pixels=112 * 112, video_max_pixels=112 * 112)))
    for what, clip_rows, settings in jobs:
        data.load_frames(clip_rows[0], **settings, media_timeout=120)  # the child starts: untimed
        child = data._decoders.this_thread.proc.pid
        best = {None: [float("inf")] * 2, 120: [float("inf")] * 2}  # timeout -> [wall, cpu]
        for _ in range(repeats):
            for timeout in best:
                c0, w0 = time.process_time() + cpu(child), time.perf_counter()
                for row in clip_rows:
                    data.load_frames(row, **settings, media_timeout=timeout)
                wall, spent = time.perf_counter() - w0, time.process_time() + cpu(child) - c0
                best[timeout] = [min(best[timeout][0], wall), min(best[timeout][1], spent)]
        deadline_rows.append((what, *best[None], *best[120]))

# report
visual = hf.model.visual
# multiply-adds per visual token: every block runs on its 4 patches, the merger once; the LM's layers once
vision_cost = (4 * sum(p.numel() for p in visual.blocks.parameters())
               + sum(p.numel() for p in visual.merger.parameters()))
lm_cost = sum(p.numel() for p in hf.model.language_model.layers.parameters())
print(f"command: python {' '.join(sys.argv)}")
print(f"device {device} ({torch.get_num_threads()} threads), {dtype}, torch {torch.__version__}; "
      f"{family}: text {hidden_size}x{len(hf.model.language_model.layers)} layers, "
      f"vision {vision_hidden_size}x{vision_depth} blocks, "
      f"{sum(p.numel() for p in hf.parameters()) / 1e6:.1f}M params, vocab {len(tokenizer)}; "
      f"vision/LM cost per visual token {vision_cost / lm_cost:.2f}")
print(f"video prompts: {frames} frames of {frame_size}x{frame_size} -> {n_visual} visual tokens, "
      f"prompt length {batch['input_ids'].shape[1]}; best of {repeats} runs after a warm-up")
if rows_out:
    print("\n| measurement | ours (s) | plain (s) | speed-up | target |\n|---|---|---|---|---|")
    for what, t_ours, t_other, target in rows_out:
        print(f"| {what} | {t_ours:.2f} | {t_other:.2f} | {t_other / t_ours:.2f}x | {target} |")
if step_split:
    total = sum(t for _, t in step_split)
    print(f"\nT-GRPO step, ours: 1 video prompt ({prompt_tokens} tokens, 640x360 10 s clip at 16 frames), "
          f"{G} + {G_shuffled} shuffled samples, at most {spread_max_new_tokens} tokens: {total:.2f} s")
    print("\n| phase | s | share |\n|---|---|---|")
    for what, t in step_split:
        print(f"| {what} | {t:.3f} | {t / total:.0%} |")
if prefetch_rows:
    print(f"\nT-GRPO-like loop, {prefetch_steps} steps of 1 video prompt (the four clips in turn, 16 frames), "
          f"{G} + {G_shuffled} samples of at most {spread_max_new_tokens} tokens; media of steps 2-{prefetch_steps} "
          f"alone: {t_media:.2f} s; wall time, best of {repeats}; load average {load_before:.1f} before, "
          f"{load_after:.1f} after ({os.cpu_count()} cores)")
    print("\n| media | loop (s) | vs pre-decoded |\n|---|---|---|")
    for way, t, ratio in prefetch_rows:
        print(f"| {way} | {t:.2f} | {ratio:.3f}x |")
if media_rows:
    print("\n| video | setting | frames [T, 3, H, W] | decode (s) | patchify (s) | frames/s |")
    print("|---|---|---|---|---|---|")
    for video, setting, shape, t_decode, t_patch in media_rows:
        print(f"| {video} | {setting} | {list(shape)} | {t_decode:.3f} | {t_patch:.3f} | "
              f"{shape[0] / (t_decode + t_patch):.0f} |")
if deadline_rows:
    print("\nmedia_timeout on the normal path: data.load_frames in this thread vs in its decode "
          f"process (best of {repeats})")
    print("\n| clips | wall, no deadline (s) | wall, deadline (s) | ratio | CPU, no deadline (s) | "
          "CPU, deadline (s) | ratio |\n|---|---|---|---|---|---|---|")
    for what, wall, spent, wall_d, spent_d in deadline_rows:
        print(f"| {what} | {wall:.3f} | {wall_d:.3f} | {wall_d / wall:.3f}x | {spent:.2f} | "
              f"{spent_d:.2f} | {spent_d / spent:.3f}x |")
