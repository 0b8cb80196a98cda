# The CPU demo's SFT cold start: the warmed-up tiny checkpoint (it sees colours, places and time) learns the
# reasoning format from the first 128 questions of cot.json (32 held out): a small cold start, as in the
# paper, where RL then has far more questions (here the 2,000 of rl.json) and rewards instead of written
# reasoning. By 80 epochs held-out accuracy has nearly stopped rising (the sft_long control trains
# 160); the experiment's sft_all control trains on all 352 COT rows.   python sft.py config/sft_demo.py
model_path = "demo/tiny-qwen2.5-vl-warm"
data_dir = "demo/world"
train_file = "cot.json"
train_rows = 128
out_dir = "out/sft_demo"
num_epochs = 80
lr = 3e-3                               # paper: 1e-6; a tiny model needs far more
warmup_steps = 20
eval_every = 60
video_min_pixels = 112 * 112
video_max_pixels = 112 * 112
image_min_pixels = 112 * 112
image_max_pixels = 112 * 112
