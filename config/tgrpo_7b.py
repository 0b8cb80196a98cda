# The paper's T-GRPO run (tgrpo.py's defaults): Qwen2.5-VL-7B after the SFT cold start, Video-R1-260k, 8 GPUs.
#   accelerate launch --config_file config/accelerate_zero2.yaml tgrpo.py config/tgrpo_7b.py
model_path = "out/sft_7b"
data_dir = "data/Video-R1-data"          # folder holding Video-R1-260k.json and the media
train_file = "Video-R1-260k.json"
out_dir = "out/tgrpo_7b"
log_with = "wandb"
