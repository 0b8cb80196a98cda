# The demo's SFT cold start on the tiny Qwen3.5, stacked on config/sft_demo.py:
#   python sft.py config/sft_demo.py config/sft_demo_qwen3_5.py
model_path = "demo/tiny-qwen3.5-warm"
out_dir = "out/sft_demo_qwen3_5"
video_min_pixels = 128 * 128            # 128x128 frames: the Qwen2.5-VL demo's token counts
video_max_pixels = 128 * 128
image_min_pixels = 128 * 128
image_max_pixels = 128 * 128
