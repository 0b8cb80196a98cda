# The paper's T-GRPO on Qwen3.5-9B after its SFT cold start (tgrpo.py's defaults otherwise). Completions
# start inside the prompt's open <think>; the rewards read "<think>\n" + completion.
#   accelerate launch --config_file config/accelerate_zero2.yaml tgrpo.py config/tgrpo_qwen3_5_9b.py
model_path = "out/sft_qwen3_5_9b"
data_dir = "data/Video-R1-data"
train_file = "Video-R1-260k.json"
out_dir = "out/tgrpo_qwen3_5_9b"
log_with = "wandb"
# 16 frames at 2 fps, 128 tokens of 32x32 pixels per frame: the paper's token budget
max_frames = 16
fps = 2.0
video_min_pixels = 128 * 32 * 32
video_max_pixels = 128 * 32 * 32
image_min_pixels = 4 * 32 * 32
image_max_pixels = 256 * 32 * 32
shuffle_timestamps = "keep"             # shuffled frames, timestamps in order (as on Qwen3-VL)
