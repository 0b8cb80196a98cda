# The CPU demo: T-GRPO from the demo SFT (python sft.py config/sft_demo.py) on the 2,000 questions of rl.json.
#   python tgrpo.py config/tgrpo_demo.py   (+ config/tgrpo_grpo.py for plain GRPO)
model_path = "out/sft_demo"
data_dir = "demo/world"
train_file = "rl.json"
out_dir = "out/tgrpo_demo"
G = 8
G_shuffled = 4
# The demo's completions are ~30 tokens, so the paper's length window [320, 512] never fires here: the
# length bonus is off in effect, which keeps the GRPO vs T-GRPO comparison about the temporal bonus alone.
l_min = 320
l_max = 512
max_new_tokens = 64                     # paper: 768; demo answers are ~30 tokens, a loop is cut (and scores 0)
max_steps = 300
prompts_per_rank = 8                    # 8 groups per step: less noisy than the release's 1
num_iterations = 4                      # 4 clipped updates per batch of rollouts, which are most of a step's time
lr = 3e-4                               # paper: 1e-6; a tiny model needs far more
warmup_steps = 10
sample_every = 25
save_every = 1000                       # the final step is always saved
video_min_pixels = 112 * 112
video_max_pixels = 112 * 112
image_min_pixels = 112 * 112
image_max_pixels = 112 * 112
