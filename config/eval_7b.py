# Qwen2.5-VL-7B checkpoints on the six benchmarks at the paper's inference settings (eval.py's defaults).
#   accelerate launch --num_processes 8 eval.py config/eval_7b.py --model_path=out/tgrpo_7b
# data_dir holds eval_mvbench.json, eval_tempcompass.json, eval_videomme.json, eval_videommmu.json,
# eval_vsibench.json, eval_mmvu.json (row schema of SPEC 1.1) with their media.
model_path = "out/tgrpo_7b"             # or Video-R1/Video-R1-7B, Qwen/Qwen2.5-VL-7B-Instruct
data_dir = "data/eval"
benchmarks = "all"
out_dir = "out/eval_7b"
