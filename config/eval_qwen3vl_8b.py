# Qwen3-VL-8B checkpoints on the six benchmarks, the paper's inference settings in Qwen3-VL's units:
#   accelerate launch --num_processes 8 eval.py config/eval_qwen3vl_8b.py \
#       --model_path=out/tgrpo_qwen3vl_8b
model_path = "out/tgrpo_qwen3vl_8b"     # or models/Qwen3-VL-8B-Instruct (the starting point)
data_dir = "data/eval"
benchmarks = "all"
out_dir = "out/eval_qwen3vl_8b"
# 64 frames at 2 fps; per frame up to the paper's inference budget of 256 merged tokens, here of
# 32x32 pixels (config/sft_qwen3vl_8b.py says why tokens, not pixels, are kept equal), at least 128.
max_frames = 64
fps = 2.0
video_min_pixels = 128 * 32 * 32
video_max_pixels = 256 * 32 * 32
image_min_pixels = 4 * 32 * 32
image_max_pixels = 256 * 32 * 32
