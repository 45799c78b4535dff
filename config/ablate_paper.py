# The paper's comparison on the embedded default, settled over 2 SFT models x 5 RL seeds, paired by
# (SFT seed, RL seed):
#   python ablate.py config/ablate_paper.py
# Arms: SFT; GRPO; REBEL; Reg-GRPO as printed (paper form, rho the token sum); Reg-GRPO scaled (the
# default); + augmentation by the paper's rule; + augmentation on flat groups only (our variant);
# + dynamic sampling. The study trains its own SFT models (sft.py --seed=0 and 1 on the teacher's
# demonstrations, one thread each) and every RL run generates the same number of answers: 100 steps of
# 8 prompts x G = 8 for the arms that generate nothing extra (augmentation, hint traces and dynamic
# sampling's answers count, so those arms take fewer steps).
# Learning rates by one rule for every loss (ablate.py's docstring): each of 1e-5, 3e-5, 1e-4 trains once
# from SFT seed 0 (RL seed 100, no augmentation, 50 steps) and is scored on the selection split (200
# questions rendered with seed 1); the best mean accuracy over the evaluations after the start wins.
out_dir = "out/ablation_paper"
init_from = ""
sft_data = "data/synthetic/sft.jsonl"
sft_seeds = (0, 1)
seeds = (0, 1, 2, 3, 4)
answers_budget = 6400
select_budget = 3200
eval_every = 50
eval_samples = 1000
lr_grid = {"grpo": (1e-5, 3e-5, 1e-4), "rebel": (1e-5, 3e-5, 1e-4), "reg_grpo_paper": (1e-5, 3e-5, 1e-4),
           "reg_grpo": (1e-5, 3e-5, 1e-4)}
arms = ("sft", "grpo", "rebel", "reg_grpo_paper", "reg_grpo", "reg_grpo+aug", "reg_grpo+aug_flat", "reg_grpo+dynamic")
jobs = 2
