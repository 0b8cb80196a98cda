# The demo's evaluation of a tiny Qwen3.5 checkpoint, stacked on config/eval_demo.py:
#   python eval.py config/eval_demo.py config/eval_demo_qwen3_5.py --model_path=out/tgrpo_demo_qwen3_5
model_path = "out/tgrpo_demo_qwen3_5"
out_dir = "out/eval_demo_qwen3_5"
video_min_pixels = 128 * 128            # 128x128 frames as in training
video_max_pixels = 128 * 128
image_min_pixels = 128 * 128
image_max_pixels = 128 * 128
