# The paper's T-GRPO run (tgrpo.py's defaults): Qwen2.5-VL-7B after the SFT cold start, Video-R1-260k, 8 GPUs.
#   accelerate launch --config_file config/accelerate_zero2.yaml tgrpo.py config/tgrpo_7b.py
# Frames (SPEC 1.3, the defaults): 16 of 128*28*28 pixels, the cap raised to 1.05x the floor as
# qwen-vl-utils does (video_cap_floor_ratio = 1.05; a 480x320 video -> 252x392, 640x480 -> 280x364).
model_path = "out/sft_7b"
data_dir = "data/Video-R1-data"          # folder holding Video-R1-260k.json and the media
train_file = "Video-R1-260k.json"
out_dir = "out/tgrpo_7b"
log_with = "wandb"
