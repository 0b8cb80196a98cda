# The CPU demo's evaluation: the 400 held-out questions of eval_demo.json, greedy, 112x112 frames as in training.
#   python eval.py config/eval_demo.py --model_path=out/tgrpo_demo --shuffle=True
model_path = "out/tgrpo_demo"
data_dir = "demo/world"
benchmarks = "demo"
out_dir = "out/eval_demo"
max_new_tokens = 96
batch_size = 16
max_frames = 8
video_min_pixels = 112 * 112
video_max_pixels = 112 * 112
image_min_pixels = 112 * 112
image_max_pixels = 112 * 112
dtype = "float32"
log_every = 10
