# The CPU demo's SFT cold start: the warmed-up tiny checkpoint (it sees colours, places and time) learns the
# reasoning format from the first 128 questions of cot.json (32 held out): a small cold start, as in the
# paper, where RL then has far more questions (here the 2,000 of rl.json) and rewards instead of written
# reasoning. By 80 epochs held-out accuracy has nearly stopped rising (experiment/: the sft_long arm).
#   python sft.py config/sft_demo.py          (`python demo.py` runs the whole pipeline)
model_path = "demo/tiny-qwen2.5-vl-warm"
data_dir = "demo/world"
train_file = "cot.json"
train_rows = 128
out_dir = "out/sft_demo"
val_rows = 32
max_frames = 8                          # 4-second videos at 2 fps
video_min_pixels = 112 * 112            # 112x112 frames: 64 tokens a video, 16 an image
video_max_pixels = 112 * 112
image_min_pixels = 112 * 112
image_max_pixels = 112 * 112
max_length = 4096
num_epochs = 80
batch_size = 8
micro_batch_size = 8
lr = 3e-3                               # paper: 1e-6; a tiny random model needs far more
warmup_steps = 20
gradient_checkpointing = False          # a 64-wide model: recomputing costs time and saves nothing
eval_every = 60
n_samples = 8
sample_tokens = 256
save_every = 500
