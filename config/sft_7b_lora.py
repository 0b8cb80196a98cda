# SFT cold start with LoRA (peft) instead of full fine-tuning, on top of the paper run; the frozen base
# is held in bf16 and AdamW state exists only for the adapters, so plain data parallel fits:
#   accelerate launch --config_file config/accelerate_ddp.yaml sft.py config/sft_7b.py config/sft_7b_lora.py
# Then T-GRPO from it (the adapters are merged into the base on load): config/tgrpo_7b_lora.py.
# Not in the paper: rank, alpha and lr are common LoRA choices (lr ~10x full fine-tuning's), not tuned here.
out_dir = "out/sft_7b_lora"
lora_rank = 64
lora_alpha = 128
lora_dropout = 0.05
lora_target = ["language"]              # + "vision" to adapt the vision tower too
lr = 1e-5
