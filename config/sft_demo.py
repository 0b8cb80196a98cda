# The CPU demo: tiny random Qwen2.5-VL on the demo world (built on first use),
# 780 steps of 8 samples, 2-3 minutes on 2 cores.
model_path = "demo/tiny-qwen2.5-vl"
data_dir = "demo/world"
train_file = "cot.json"
out_dir = "out/sft_demo"
num_epochs = 30
lr = 3e-3
warmup_steps = 20
# Frames and images upscaled from 56x56 to 112x112: 16 visual tokens per image and 64 per video
# instead of 4 and 16. With 4 tokens among ~200 of prompt text the tiny model never learned to look
# (its loss was the same with a blank image); with 4x as many it starts to, for some seeds.
video_min_pixels = 112 * 112
video_max_pixels = 112 * 112
image_min_pixels = 112 * 112
image_max_pixels = 112 * 112
