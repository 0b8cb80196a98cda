# The demo's T-GRPO on the tiny Qwen3.5, stacked on config/tgrpo_demo.py:
#   python tgrpo.py config/tgrpo_demo.py config/tgrpo_demo_qwen3_5.py   (--shuffle_timestamps=follow)
model_path = "out/sft_demo_qwen3_5"
out_dir = "out/tgrpo_demo_qwen3_5"
video_min_pixels = 128 * 128            # 128x128 frames: the Qwen2.5-VL demo's token counts
video_max_pixels = 128 * 128
image_min_pixels = 128 * 128
image_max_pixels = 128 * 128
shuffle_timestamps = "keep"
