# The CPU demo: T-GRPO on the tiny checkpoint after `python sft.py`, on the demo world. About 5 minutes
# on 2 cores.  python tgrpo.py config/tgrpo_demo.py   (+ config/tgrpo_grpo.py for plain GRPO)
model_path = "out/sft_demo"
data_dir = "demo/world"
train_file = "rl.json"
out_dir = "out/tgrpo_demo"
G = 8
G_shuffled = 4
# The demo's completions are ~50 tokens, so the paper's length window [320, 512] never fires here: the
# length bonus is off in effect, which keeps the GRPO vs T-GRPO comparison about the temporal bonus alone.
l_min = 320
l_max = 512
max_new_tokens = 96                     # SFT answers are ~50 tokens; a loop is cut (and scores 0) early
max_steps = 250
prompts_per_rank = 4                    # 4 groups per step: less noisy than the release's 1
lr = 3e-4                               # paper: 1e-6; the random tiny model needs far more
warmup_steps = 10
sample_every = 25
save_every = 1000                       # the final step is always saved
# Frames and images upscaled from 56x56 to 112x112: 16 visual tokens per image and 64 per video
# instead of 4 and 16. With 4 tokens among ~200 of prompt text the tiny model never learned to look
# (its loss was the same with a blank image); with 4x as many it starts to, for some seeds.
video_min_pixels = 112 * 112
video_max_pixels = 112 * 112
image_min_pixels = 112 * 112
image_max_pixels = 112 * 112
