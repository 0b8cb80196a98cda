# The CPU demo: the tiny random checkpoint on the synthetic demo world (both built on first use).
# These are eval.py's defaults, written out. python eval.py config/eval_demo.py [--shuffle=True]
model_path = "demo/tiny-qwen2.5-vl"
data_dir = "demo/world"
benchmarks = "demo"
out_dir = "out/eval_demo"
max_new_tokens = 128
batch_size = 4
max_frames = 8
fps = 2.0
video_min_pixels = 56 * 56
video_max_pixels = 56 * 56
image_min_pixels = 4 * 28 * 28
image_max_pixels = 56 * 56
dtype = "float32"
