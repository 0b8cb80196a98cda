# The demo's evaluation of a tiny Qwen3-VL checkpoint, stacked on config/eval_demo.py:
#   python eval.py config/eval_demo.py config/eval_demo_qwen3vl.py --shuffle=True
model_path = "out/tgrpo_demo_qwen3vl"
out_dir = "out/eval_demo_qwen3vl"
video_min_pixels = 128 * 128            # 128x128 frames as in training
video_max_pixels = 128 * 128
image_min_pixels = 128 * 128
image_max_pixels = 128 * 128
