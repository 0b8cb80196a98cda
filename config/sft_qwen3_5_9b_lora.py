# SFT cold start of Qwen3.5-9B with LoRA (peft), on top of config/sft_qwen3_5_9b.py. "language" covers
# the full-attention layers' q/k/v/o, the Gated DeltaNet layers' in_proj_qkv, in_proj_z, in_proj_a,
# in_proj_b and out_proj, and every MLP (families.py, QWEN3_5):
#   accelerate launch --config_file config/accelerate_ddp.yaml sft.py config/sft_qwen3_5_9b.py \
#       config/sft_qwen3_5_9b_lora.py
# Not in the paper: rank, alpha and lr are common LoRA choices (lr ~10x full fine-tuning's), not tuned here.
out_dir = "out/sft_qwen3_5_9b_lora"
lora_rank = 64
lora_alpha = 128
lora_dropout = 0.05
lora_target = ["language"]              # + "vision" to adapt the vision tower and its merger
lr = 1e-5
