# SFT cold start of Qwen3-VL-8B with LoRA (peft), on top of config/sft_qwen3vl_8b.py; the target
# module names are Qwen3-VL's (families.py), picked from the checkpoint's family:
#   accelerate launch --config_file config/accelerate_ddp.yaml sft.py config/sft_qwen3vl_8b.py \
#       config/sft_qwen3vl_8b_lora.py
# Not in the paper: rank, alpha and lr are common LoRA choices (lr ~10x full fine-tuning's), not
# tuned here.
out_dir = "out/sft_qwen3vl_8b_lora"
lora_rank = 64
lora_alpha = 128
lora_dropout = 0.05
lora_target = ["language"]              # + "vision": the vision tower and DeepStack mergers too
lr = 1e-5
