# The perception warm-up: turns the random tiny checkpoint into a tiny *pretrained* VLM that sees
# colours, places and time, as Qwen2.5-VL-Instruct does before the paper's SFT. Short questions about
# what is where and when (warmup.json: media of its own, never the demo's questions), plain prompts
# (no reasoning template), answer-only targets, so every target token depends on the picture.
# `python demo.py` (or `python demo.py assets`) builds it once into demo/tiny-qwen2.5-vl-warm; by hand:
#   python sft.py config/warmup_demo.py --out_dir=demo/tiny-qwen2.5-vl-warm
model_path = "demo/tiny-qwen2.5-vl"
data_dir = "demo/world"
train_file = "warmup.json"
out_dir = "demo/tiny-qwen2.5-vl-warm"
max_frames = 8
max_length = 4096
gradient_checkpointing = False
question_template = "plain"
target_format = "answer"
num_epochs = 8
batch_size = 16
micro_batch_size = 16
lr = 3e-3
warmup_steps = 20
eval_every = 250
val_rows = 64
n_samples = 64
sample_tokens = 32
save_every = 100000                     # only the final checkpoint
keep_last = 1
video_min_pixels = 112 * 112
video_max_pixels = 112 * 112
image_min_pixels = 112 * 112
image_max_pixels = 112 * 112
