# Ablation "zero": RL straight from the base model, no SFT cold start. On the demo the base model is the
# warmed-up tiny VLM (the demo's stand-in for Qwen2.5-VL-Instruct); for the paper run, add after tgrpo_7b.py:
#   ... tgrpo.py config/tgrpo_7b.py config/tgrpo_zero.py --model_path=Qwen/Qwen2.5-VL-7B-Instruct
model_path = "demo/tiny-qwen2.5-vl-warm"
out_dir = "out/tgrpo_zero"
