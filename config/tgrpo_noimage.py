# Ablation "wo-image": train on the video rows only.
data_types = ["video"]
out_dir = "out/tgrpo_noimage"
