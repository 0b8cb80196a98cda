# The paper's SFT cold start on Qwen3.5-9B (sft.py's defaults otherwise). Its chat template thinks by
# default: prompts end with "<think>\n" and the targets continue inside the think block (model.py,
# assistant_prefill). Three of its four language layers are Gated DeltaNet (linear attention).
#   accelerate launch --config_file config/accelerate_zero2.yaml sft.py config/sft_qwen3_5_9b.py
model_path = "models/Qwen3.5-9B"          # a local download; the family comes from its config.json
data_dir = "data/Video-R1-data"
train_file = "Video-R1-COT-165k.json"
out_dir = "out/sft_qwen3_5_9b"
log_with = "wandb"
# Qwen3-VL's vision input (patch 16 x merge 2): the paper's token budget per frame, 128 merged tokens
# of 32x32 pixels, 16 frames at 2 fps (config/sft_qwen3vl_8b.py says why tokens are kept equal).
max_frames = 16
fps = 2.0
video_min_pixels = 128 * 32 * 32
video_max_pixels = 128 * 32 * 32
image_min_pixels = 4 * 32 * 32
image_max_pixels = 256 * 32 * 32
