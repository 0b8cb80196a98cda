# The CPU demo (the defaults of sft.py, spelled out): tiny random Qwen2.5-VL on the demo world,
# about 260 steps of 8 samples, 2-4 minutes on 2 cores.
model_path = "demo/tiny-qwen2.5-vl"
data_dir = "demo/world"
train_file = "cot.json"
out_dir = "out/sft_demo"
num_epochs = 10
lr = 3e-3
warmup_steps = 20
