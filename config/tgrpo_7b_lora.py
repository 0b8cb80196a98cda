# T-GRPO with LoRA (peft) instead of full fine-tuning, on top of the paper run. The frozen base is held
# in bf16 and, adapters switched off, is the reference: no second model, and AdamW state only for the
# adapters, so plain data parallel fits (README, "LoRA: fewer GPUs", for the memory estimate):
#   accelerate launch --config_file config/accelerate_ddp.yaml tgrpo.py config/tgrpo_7b.py config/tgrpo_7b_lora.py
#   accelerate launch --num_processes 1 --mixed_precision bf16 tgrpo.py config/tgrpo_7b.py config/tgrpo_7b_lora.py \
#       --prompts_per_rank=8      # one GPU, the paper's 8 prompts per step (8x the time per step)
# Not in the paper: rank, alpha and lr are common LoRA choices (lr ~10x full fine-tuning's), not tuned here.
model_path = "out/sft_7b_lora"          # a LoRA SFT out_dir (merged on load) or a full one (out/sft_7b)
out_dir = "out/tgrpo_7b_lora"
lora_rank = 64
lora_alpha = 128
lora_dropout = 0.0
lora_target = ["language"]              # + "vision" to adapt the vision tower too
lr = 1e-5
