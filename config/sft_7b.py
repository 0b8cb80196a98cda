# The paper's SFT cold start: Qwen2.5-VL-7B-Instruct on Video-R1-COT-165k, 1 epoch, 8 GPUs.
#   accelerate launch --config_file config/accelerate_zero2.yaml sft.py config/sft_7b.py
model_path = "models/Qwen2.5-VL-7B-Instruct"   # a local download of the Hugging Face checkpoint
data_dir = "data/Video-R1-data"
train_file = "Video-R1-COT-165k.json"
out_dir = "out/sft_7b"
val_rows = 512
max_frames = 16
video_min_pixels = 128 * 28 * 28
video_max_pixels = 128 * 28 * 28
image_min_pixels = 4 * 28 * 28
image_max_pixels = 256 * 28 * 28
max_length = 16384
num_epochs = 1
batch_size = 1                 # per GPU, as the release
micro_batch_size = 1
lr = 1e-6
warmup_steps = 0
grad_clip = 5.0
gradient_checkpointing = True
eval_every = 1000
save_every = 2000
n_samples = 16
sample_tokens = 1024
log_with = "wandb"
