# The CPU demo's SFT cold start: the warmed-up tiny checkpoint (it sees colours, places and time) learns
# the reasoning format on cot.json. python sft.py config/sft_demo.py
model_path = "demo/tiny-qwen2.5-vl-warm"
data_dir = "demo/world"
train_file = "cot.json"
out_dir = "out/sft_demo"
num_epochs = 3
lr = 1e-3
warmup_steps = 20
eval_every = 50
video_min_pixels = 112 * 112
video_max_pixels = 112 * 112
image_min_pixels = 112 * 112
image_max_pixels = 112 * 112
