# The CPU demo's SFT cold start: the warmed-up tiny checkpoint (it sees colours, places and time) learns the
# reasoning format from the 352 questions of cot.json (32 held out), a cold start: RL then has the 2,000
# questions of rl.json.   python sft.py config/sft_demo.py
model_path = "demo/tiny-qwen2.5-vl-warm"
data_dir = "demo/world"
train_file = "cot.json"
out_dir = "out/sft_demo"
num_epochs = 12
lr = 3e-3                               # paper: 1e-6; a tiny model needs far more
warmup_steps = 20
eval_every = 60
video_min_pixels = 112 * 112
video_max_pixels = 112 * 112
image_min_pixels = 112 * 112
image_max_pixels = 112 * 112
