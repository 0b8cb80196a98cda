# Ablation "zero": RL straight from the base model, no SFT cold start. On the demo that is the tiny
# random checkpoint; for the paper run, add after tgrpo_7b.py with model_path set to the base model:
#   ... tgrpo.py config/tgrpo_7b.py config/tgrpo_zero.py --model_path=Qwen/Qwen2.5-VL-7B-Instruct
model_path = "demo/tiny-qwen2.5-vl"
out_dir = "out/tgrpo_zero"
