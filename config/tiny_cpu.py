# The embedded default, written out: tiny random-init Qwen2.5-VL after the SFT warm start,
# the synthetic video benchmark, one CPU process. `python train.py config/tiny_cpu.py`.
init_from = "out/tiny-sft"
train_data = "data/synthetic/train.jsonl"
val_data = "data/synthetic/val.jsonl"
out_dir = "out/tiny-rl"
loss = "reg_grpo"
augment = "both"
group_size = 8
prompts_per_step = 8
num_iterations = 2
beta = 0.04
max_steps = 100
device = "cpu"
dtype = "float32"
