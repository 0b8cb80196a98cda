# The authors' release behaviour (SPEC 6), on top of any base config. With one iteration the ratio
# is 1 and the clip is inert, which is what "no clip" means there. Per-batch = per-group here
# because the release trains exactly one prompt per GPU.
temporal_share = "mean"
mu = 0.8
length_min_correct = 2
num_iterations = 1
prompts_per_rank = 1
