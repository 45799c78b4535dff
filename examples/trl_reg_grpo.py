"""
Reg-GRPO inside TRL's GRPOTrainer: a subclass that swaps the loss (TRL is not a dependency here).

    pip install trl
    python examples/trl_reg_grpo.py --model=Qwen/Qwen2.5-0.5B-Instruct
    python examples/trl_reg_grpo.py --model=tiny      # a random 2-layer Qwen2, offline, for the plumbing

Where each input of reg_grpo_loss comes from in TRL:
- logps: the subclass's own forward, self._get_per_token_logps_and_entropies (as TRL's _compute_loss).
- old_logps: inputs["old_per_token_logps"]; TRL computes it only when the batch is reused
  (num_iterations > 1, or generation out of step with the optimizer); otherwise it is absent and the
  policy's own detached log-probs are the sampler's: rho = 0.
- advantages: inputs["advantages"], TRL's group z-scores (Bessel std, so their mean square is
  (G - 1) / G, not 1: the regression's minimiser, z-scored rho proportional to A, is unchanged).
  The raw rewards are not in the inputs.
- group ids: not in TRL's inputs. Its sampler puts the G answers of a prompt next to each other in
  the generation batch, then _prepare_inputs SHUFFLES the rows and splits them into
  steps_per_generation micro-batches. The subclass adds "group_ids" before the shuffle (it is shuffled
  with the other columns), sorts by it in the loss, and the config keeps whole groups in one
  micro-batch: steps_per_generation = 1 and a per-device batch that is a multiple of G.
  reg_grpo_loss raises if a group is split or mixed.
- ref_logps: inputs["ref_per_token_logps"] when beta > 0; our KL is the plain k3 token mean.

num_iterations: with TRL's default 1 every update sees rho = 0, the regression never acts, and
Reg-GRPO (scaled form, token_mean=True) is exactly GRPO's per-sequence-mean gradient at ratio 1
(TRL's loss_type="grpo"). num_iterations = 2 (below) makes the second pass a real regression.
"""
import os
import sys

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from reg_grpo import reg_grpo_loss  # noqa: E402


class RegGRPOTrainer(GRPOTrainer):
    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        n = out["completion_ids"].shape[0]
        first = self.accelerator.process_index * n           # this process's rows of the global batch
        out["group_ids"] = (first + torch.arange(n, device=out["completion_ids"].device)) // self.num_generations
        return out

    def _compute_loss(self, model, inputs):
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logps = self._get_per_token_logps_and_entropies(model, input_ids, attention_mask,
                                                        inputs["completion_ids"].shape[1])[0]  # (N, T)
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        ref = inputs.get("ref_per_token_logps")
        order = torch.argsort(inputs["group_ids"], stable=True)  # undo TRL's row shuffle
        loss, stats = reg_grpo_loss(logps[order], old[order], inputs["advantages"][order],
                                    inputs["completion_mask"][order], inputs["group_ids"][order],
                                    group_size=self.num_generations, beta=self.beta, token_mean=True,
                                    ref_logps=ref[order] if ref is not None else None)
        mode = "train" if model.training else "eval"
        for k, v in stats.items():
            self._metrics[mode][f"reg_grpo/{k}"].append(v)
        return loss / (self.current_gradient_accumulation_steps if mode == "train" else 1)


def tiny_model(path="out/trl_reg_grpo/tiny"):
    """A random 2-layer Qwen2 with a character tokenizer, saved to `path` (TRL loads the reference from it)."""
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {c: i for i, c in enumerate(["<pad>", "<eos>"] + [chr(i) for i in range(32, 127)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1,
                         bos_token_id=1, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, tokenizer


def digit_reward(completions, **kwargs):
    return [float(sum(ch.isdigit() for ch in c)) / max(len(c), 1) for c in completions]


def main():
    name = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--model=")), "tiny")
    model, tokenizer = tiny_model() if name == "tiny" else (name, None)
    G = 4
    args = GRPOConfig(output_dir="out/trl_reg_grpo", num_generations=G, per_device_train_batch_size=2 * G,
                      steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=2,
                      max_completion_length=16, beta=0.04, learning_rate=1e-4, max_steps=6, logging_steps=1,
                      report_to="none", use_cpu=not torch.cuda.is_available(), save_strategy="no")
    data = Dataset.from_dict({"prompt": [f"Write {i} digits:" for i in range(32)]})
    trainer = RegGRPOTrainer(model=model, reward_funcs=digit_reward, args=args, train_dataset=data,
                             processing_class=tokenizer)
    trainer.train()
    for row in trainer.state.log_history:
        print({k: round(v, 4) for k, v in row.items() if k in ("step", "loss", "reward", "reg_grpo/mse",
                                                               "reg_grpo/floored_frac", "kl")})


if __name__ == "__main__":
    main()
