# Ablation "wo-temporal": plain GRPO, no shuffled rollouts and no temporal bonus. Add after the base
# config: python tgrpo.py config/tgrpo_grpo.py   |   ... tgrpo.py config/tgrpo_7b.py config/tgrpo_grpo.py
temporal = False
out_dir = "out/grpo_demo"
