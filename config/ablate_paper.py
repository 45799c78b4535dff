# The paper's comparison on the embedded default: SFT, GRPO, REBEL, Reg-GRPO (our scaled form and the
# paper's printed form), Reg-GRPO + difficulty-aware augmentation; 5 seeds, paired differences per seed.
#   python ablate.py config/ablate_paper.py
# Every arm starts from the main command's SFT model (out/tiny-sft, the inconsistent teacher) and
# generates the same number of answers: 100 steps x 8 prompts x 8 answers for the arms without
# augmentation (augmentation's extra answers count, so those arms take fewer steps).
# Learning rates fixed, not selected: 3e-5 for the regression losses (the main command's),
# 1e-4 for GRPO (the winner of the earlier selection on this benchmark).
out_dir = "out/ablation_paper"
init_from = "out/tiny-sft"
sft_data = "data/synthetic/sft.jsonl"
seeds = (0, 1, 2, 3, 4)
answers_budget = 6400
eval_every = 50
eval_samples = 1000
lr_grid = {"reg_grpo": (3e-5,), "grpo": (1e-4,), "rebel": (3e-5,)}
arms = ("sft", "grpo", "rebel", "reg_grpo", "reg_grpo_paper", "reg_grpo+aug")
