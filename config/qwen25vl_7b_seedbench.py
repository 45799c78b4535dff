# The paper's setting (DeepVideo-R1, Table: SEED-Bench-R1): Qwen2.5-VL-7B, Reg-GRPO + augmentation,
# 8 GPUs x 1 prompt x G = 8 answers, beta 0.1, up to 16 frames at 252x252 and 2 fps.
#   python data/seedbench_r1/prepare.py --annotations .../training_6k.jsonl --video_root ... --out data/seedbench_r1/train.jsonl
#   torchrun --nproc_per_node=8 train.py config/qwen25vl_7b_seedbench.py
# Not published, our choice: lr 1e-6 (SEED-Bench-R1's trainer), 2000 steps, 768 new tokens,
# temperature 1. The current-observation image goes in after the video, as the paper feeds it
# (user content: video, image, text; the converter keeps its path in meta.image), resized by the
# frames' rule (max_pixels).
init_from = "Qwen/Qwen2.5-VL-7B-Instruct"
train_data = "data/seedbench_r1/train.jsonl"
val_data = "data/seedbench_r1/validation_L1.jsonl"
out_dir = "out/qwen25vl-7b-seedbench"
loss = "reg_grpo"
augment = "both"
group_size = 8
prompts_per_step = 1          # per GPU
num_iterations = 2
beta = 0.1
buffer_window = 13            # 13 steps x 8 GPUs ~ the paper's 100 samples
learning_rate = 1e-6
warmup_steps = 20
max_steps = 2000
max_new_tokens = 768
temperature = 1.0
num_frames = 16
max_pixels = 252 * 252
fps = 2.0
micro_batch_groups = 1
eval_interval = 200
eval_samples = 500
checkpoint_interval = 100
device = "cuda"
dtype = "bfloat16"
distributed = "fsdp"
freeze_vision = True
# Speed, as measured at the 3B shape on an H200 (bench.py, 2026-11-25; the 7B step is alike in kind):
compile = True                # compiled decoder layers for the log-prob passes: update 0.776 -> 0.674 s (3B)
gradient_checkpointing = False  # recomputing every layer costs about a quarter of the update (3B: 0.674 ->
                              # 0.518 s without it). The memory plan of this preset without it, groups packed:
                              # 63 GB per GPU of 80 (python scripts/bench.py --plan=True --size=7b
                              # --plan_checkpointing=False); the plan read 58 GB where 65.5 GB was measured at
                              # the 3B shape (2026-12-04), so about 71 GB. Out of memory: --gradient_checkpointing=True (28 GB)
# decode: compiled and captured in CUDA graphs (train.py's decode_compile / decode_graph defaults on CUDA)
