# T-GRPO of Qwen3-VL-8B with LoRA (peft), on top of config/tgrpo_qwen3vl_8b.py; the frozen base
# with its adapters off is the reference:
#   accelerate launch --config_file config/accelerate_ddp.yaml tgrpo.py config/tgrpo_qwen3vl_8b.py \
#       config/tgrpo_qwen3vl_8b_lora.py
# Not in the paper: rank, alpha and lr are common LoRA choices (lr ~10x full fine-tuning's), not
# tuned here.
model_path = "out/sft_qwen3vl_8b_lora"  # a LoRA SFT out_dir (merged on load) or a full one
out_dir = "out/tgrpo_qwen3vl_8b_lora"
lora_rank = 64
lora_alpha = 128
lora_dropout = 0.0
lora_target = ["language"]
lr = 1e-5
