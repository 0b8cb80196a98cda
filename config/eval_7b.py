# Qwen2.5-VL-7B checkpoints on the six benchmarks at the paper's inference settings (SPEC 5).
# accelerate launch --num_processes 8 eval.py config/eval_7b.py --model_path=out/tgrpo_7b
# data_dir holds eval_mvbench.json, eval_tempcompass.json, eval_videomme.json, eval_videommmu.json,
# eval_vsibench.json, eval_mmvu.json (row schema of SPEC 1.1) with their media.
model_path = "out/tgrpo_7b"             # or Video-R1/Video-R1-7B, Qwen/Qwen2.5-VL-7B-Instruct
data_dir = "data/eval"
benchmarks = "all"
out_dir = "out/eval_7b"
max_new_tokens = 1024
batch_size = 8                          # 64 frames x 256 tokens/2 frames ~ 8k visual tokens per prompt
max_frames = 64                         # the paper's main table; its ablations use 16 (32 also works)
video_min_pixels = 128 * 28 * 28        # qwen-vl-utils' default floor
video_max_pixels = 256 * 28 * 28        # the release's inference setting per frame
image_min_pixels = 4 * 28 * 28
image_max_pixels = 256 * 28 * 28
dtype = "bfloat16"
log_every = 20
