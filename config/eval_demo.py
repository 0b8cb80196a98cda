# The CPU demo: the tiny random checkpoint on the synthetic demo world (both built on first use).
# eval.py's defaults, except the 112x112 frames the demo trains on. python eval.py config/eval_demo.py [--shuffle=True]
model_path = "demo/tiny-qwen2.5-vl"
data_dir = "demo/world"
benchmarks = "demo"
out_dir = "out/eval_demo"
max_new_tokens = 128
batch_size = 4
max_frames = 8
fps = 2.0
video_min_pixels = 112 * 112            # as in training (config/sft_demo.py): 56x56 media upscaled
video_max_pixels = 112 * 112
image_min_pixels = 112 * 112
image_max_pixels = 112 * 112
dtype = "float32"
