# Qwen3.5-2B checkpoints on the six benchmarks at the paper's inference settings in 32-pixel units.
#   accelerate launch --num_processes 8 eval.py config/eval_qwen3_5_2b.py --model_path=out/tgrpo_qwen3_5_2b
model_path = "out/tgrpo_qwen3_5_2b"      # or models/Qwen3.5-2B (the starting point)
data_dir = "data/eval"
benchmarks = "all"
out_dir = "out/eval_qwen3_5_2b"
# 64 frames at 2 fps; per frame up to the paper's inference budget of 256 merged tokens of 32x32 pixels
max_frames = 64
fps = 2.0
video_min_pixels = 128 * 32 * 32
video_max_pixels = 256 * 32 * 32
image_min_pixels = 4 * 32 * 32
image_max_pixels = 256 * 32 * 32
