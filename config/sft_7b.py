# The paper's SFT cold start (sft.py's defaults): Qwen2.5-VL-7B-Instruct on Video-R1-COT-165k, 1 epoch, 8 GPUs.
#   accelerate launch --config_file config/accelerate_zero2.yaml sft.py config/sft_7b.py
# Frames (SPEC 1.3, the defaults): 16 of 128*28*28 pixels, the cap raised to 1.05x the floor as
# qwen-vl-utils does (video_cap_floor_ratio = 1.05; a 480x320 video -> 252x392, 640x480 -> 280x364).
model_path = "models/Qwen2.5-VL-7B-Instruct"   # a local download of the Hugging Face checkpoint
data_dir = "data/Video-R1-data"
train_file = "Video-R1-COT-165k.json"
out_dir = "out/sft_7b"
log_with = "wandb"
