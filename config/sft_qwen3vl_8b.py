# The paper's SFT cold start on Qwen3-VL-8B-Instruct instead of Qwen2.5-VL-7B (sft.py's defaults
# otherwise):
#   accelerate launch --config_file config/accelerate_zero2.yaml sft.py config/sft_qwen3vl_8b.py
model_path = "models/Qwen3-VL-8B-Instruct"  # a local download; its config.json names the family
data_dir = "data/Video-R1-data"
train_file = "Video-R1-COT-165k.json"
out_dir = "out/sft_qwen3vl_8b"
log_with = "wandb"
# The paper's preprocessing in Qwen3-VL's units: 16 frames at 2 fps and, per frame, the paper's
# TOKEN budget, 128 merged tokens, now of 32x32 pixels (Qwen3-VL's patch 16 x merge 2) instead of
# 28x28. Same tokens = the paper's sequence lengths, memory and compute; each token sees 1.31x the
# pixels. qwen-vl-utils (0.0.14) counts Qwen3-VL's budgets the same way (128-768 tokens x 32 x 32).
max_frames = 16
fps = 2.0
video_min_pixels = 128 * 32 * 32
video_max_pixels = 128 * 32 * 32
image_min_pixels = 4 * 32 * 32
image_max_pixels = 256 * 32 * 32
