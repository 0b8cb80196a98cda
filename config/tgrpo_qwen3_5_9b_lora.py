# T-GRPO of Qwen3.5-9B with LoRA (peft), on top of config/tgrpo_qwen3_5_9b.py; the frozen base with its
# adapters off is the reference. LoRA names as in config/sft_qwen3_5_9b_lora.py:
#   accelerate launch --config_file config/accelerate_ddp.yaml tgrpo.py config/tgrpo_qwen3_5_9b.py \
#       config/tgrpo_qwen3_5_9b_lora.py
# Not in the paper: rank, alpha and lr are common LoRA choices (lr ~10x full fine-tuning's), not tuned here.
model_path = "out/sft_qwen3_5_9b_lora"  # a LoRA SFT out_dir (merged on load) or a full one
out_dir = "out/tgrpo_qwen3_5_9b_lora"
lora_rank = 64
lora_alpha = 128
lora_dropout = 0.0
lora_target = ["language"]
lr = 1e-5
