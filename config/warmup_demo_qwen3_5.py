# The perception warm-up of the tiny Qwen3.5, stacked on config/warmup_demo.py (`python demo.py
# --family=qwen3_5` builds it):
#   python sft.py config/warmup_demo.py config/warmup_demo_qwen3_5.py
model_path = "demo/tiny-qwen3.5"
out_dir = "demo/tiny-qwen3.5-warm"
video_min_pixels = 128 * 128            # 128x128 frames (sides multiples of 32): 4x4 tokens per frame
video_max_pixels = 128 * 128            # pair and 16 per image, as the Qwen2.5-VL demo's 112x112
image_min_pixels = 128 * 128
image_max_pixels = 128 * 128
