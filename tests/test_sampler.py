"""sampler.py against transformers (float32, CPU, tiny Qwen2.5-VL): same greedy tokens as generate, the
same logits as a teacher-forced forward at every step, suppression, top-p, the drawn frequencies, and
rho = 0 on the first update of a rollout it sampled."""
import math

import numpy as np
import pytest
import torch

from machinery import sampler
from machinery.dataset import load_records, load_samples
from machinery.logprobs import completion_logps
from model import build_tiny, load_policy, vision_token_ids
from rollout import generate_rollout, repeat_batch

QUESTIONS = ["Which way?", "How many circles appear in the whole video clip, and which one comes first?",
             "Red square moves left"]


@pytest.fixture(scope="module")
def policy():
    model, processor = build_tiny(texts=["The red square moves left. How many circles appear?"] * 10, seed=0)
    return model.eval(), processor


def prompts(processor, questions=QUESTIONS, seed=0):
    """Left-padded batch of prompts of different lengths, each with its own video (one of another size)."""
    rng = np.random.default_rng(seed)
    sizes = [(8, 112, 112), (6, 168, 112), (8, 112, 112)]
    videos = [rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8) for t, h, w in sizes[:len(questions)]]
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q}]}],
                                           add_generation_prompt=True, tokenize=False) for q in questions]
    meta = [{"total_num_frames": len(v), "fps": 2.0} for v in videos]
    return dict(processor(text=texts, videos=videos, video_metadata=meta, return_tensors="pt", padding=True,
                          padding_side="left", do_sample_frames=False))


def ids(processor):
    tok = processor.tokenizer
    return tok.pad_token_id, vision_token_ids(processor)


def test_greedy_matches_generate_with_rows_ending_at_different_steps(policy):
    model, processor = policy
    pad, suppress = ids(processor)
    prompt = prompts(processor)
    assert len(set(prompt["attention_mask"].sum(1).tolist())) == 3           # three prompt lengths
    free = sampler.sample(model, prompt, 2, 12, None, pad, suppress, greedy=True)
    end = int(free[-1, 2])            # a token the last prompt emits early: its rows end, others later/never
    ours = sampler.sample(model, prompt, 2, 12, end, pad, suppress, greedy=True)
    repeated = repeat_batch(prompt, 2)
    theirs = model.generate(**repeated, do_sample=False, max_new_tokens=12, suppress_tokens=suppress,
                            eos_token_id=end, pad_token_id=pad)[:, repeated["input_ids"].shape[1]:]
    assert (ours == end).any() and (ours == pad).any()                     # ended rows pad
    assert torch.equal(ours, theirs)
    everyone_ends = sampler.sample(model, prompt, 2, 12, int(free[0, 0]), pad, suppress, greedy=True)
    assert everyone_ends.shape[1] == 1                                      # stopped and trimmed


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.8)])
def test_every_step_has_transformers_logits_and_distribution(policy, temperature, top_p):
    """Sampled rows of left-padded prompts: our step's logits = a teacher-forced forward to 1e-5.

    The forward computes the 3D rope index over prompt + completion with its padding, so this also
    checks that rope_deltas already absorbs the left padding (positions after the prompt agree).
    """
    model, processor = policy
    pad, suppress = ids(processor)
    prompt = prompts(processor)
    gen = torch.Generator().manual_seed(1)
    out, logits = sampler.sample(model, prompt, 3, 10, None, pad, suppress, temperature=temperature,
                                 top_p=top_p, keep_logits=True, generator=gen)
    ours = torch.stack(logits, 1)                                           # (N, T, V)
    theirs = sampler.teacher_forced_logits(model, repeat_batch(prompt, 3), out)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert not torch.isin(out, torch.tensor(suppress)).any()
    # each drawn token lies in the nucleus: the tokens more likely than it hold < top_p (float64)
    z = theirs.double() / temperature
    z[..., suppress] = -math.inf
    p = z.softmax(-1)
    drawn = p.gather(-1, out[..., None])                                    # (N, T, 1)
    assert (drawn > 0).all()
    assert ((p * (p > drawn)).sum(-1) < top_p + 1e-9).all()


def test_nucleus_matches_transformers_top_p_and_keeps_the_mass():
    from transformers.generation.logits_process import TopPLogitsWarper
    z = torch.randn(64, 50, generator=torch.Generator().manual_seed(0)) * 3
    for top_p in (0.3, 0.8, 0.95):
        ours = sampler.nucleus(z, top_p)
        torch.testing.assert_close(ours, TopPLogitsWarper(top_p)(None, z.clone()), rtol=0, atol=0)
        kept = torch.isfinite(ours)
        p = z.double().softmax(-1)
        assert ((p * kept).sum(-1) >= top_p - 1e-6).all()                    # the kept mass reaches top_p
        smallest = torch.where(kept, p, math.inf).min(-1).values
        assert ((p * kept).sum(-1) - smallest < top_p + 1e-6).all()          # and no kept token is spare


def test_first_token_frequencies_follow_the_distribution():
    """6000 draws of the first token at temperature 0.7, top-p 0.9: a chi-square bound (fixed seed).

    The random model's head is scaled by 6 so that the nucleus is a few dozen tokens (a flat
    distribution would not tell temperature 0.7 from 1.0: with this one, 1.0 gives chi2 ~ 4800).
    """
    model, processor = build_tiny(texts=["The red square moves left. How many circles appear?"] * 10, seed=0)
    model.eval().lm_head.weight.data *= 6
    pad, suppress = ids(processor)
    prompt = prompts(processor, QUESTIONS[:1])
    gen = torch.Generator().manual_seed(0)
    out, logits = sampler.sample(model, prompt, 6000, 1, None, pad, suppress, temperature=0.7, top_p=0.9,
                                 keep_logits=True, generator=gen)
    z = logits[0][0].double() / 0.7
    z[suppress] = -math.inf
    p = z.softmax(-1)
    order = p.argsort(descending=True)
    keep = torch.zeros_like(p, dtype=torch.bool)
    keep[order[:int((p[order].cumsum(0) < 0.9).sum()) + 1]] = True         # the nucleus, by hand
    expected = torch.where(keep, p, 0.0) / (p * keep).sum() * out.numel()
    counts = torch.bincount(out.flatten(), minlength=len(p)).double()
    assert counts[~keep].sum() == 0
    big = expected >= 5
    rest = keep & ~big
    obs = torch.cat([counts[big], counts[rest].sum()[None]] if rest.any() else [counts[big]])
    exp = torch.cat([expected[big], expected[rest].sum()[None]] if rest.any() else [expected[big]])
    chi2, df = float(((obs - exp) ** 2 / exp).sum()), len(obs) - 1
    assert df >= 5 and chi2 < df + 6 * math.sqrt(2 * df), (chi2, df)          # ~ a 1e-5 tail


@pytest.fixture(scope="module")
def sft_policy(tiny):
    model, processor = load_policy(str(tiny["sft"]))
    samples = load_samples(load_records(tiny["data"] / "val.jsonl")[:4], num_frames=8, max_pixels=112 * 112,
                           log=lambda *a: None)
    return model, processor, samples


def test_fast_and_hf_rollouts_agree_greedy(sft_policy):
    model, processor, samples = sft_policy
    frames = [s["frames"] for s in samples]
    fast = generate_rollout(model, processor, samples, frames, 2, max_new_tokens=48, greedy=True, sampler="fast")
    hf = generate_rollout(model, processor, samples, frames, 2, max_new_tokens=48, greedy=True, sampler="hf")
    assert fast.completion_mask.sum(1).min() < fast.completion_mask.shape[1]  # some answer ended early
    assert fast.texts == hf.texts
    for key in ("input_ids", "attention_mask", "completion_mask", "accuracy", "format"):
        assert torch.equal(getattr(fast, key), getattr(hf, key)), key
    for key in fast.visual:
        assert torch.equal(fast.visual[key], hf.visual[key]), key


def test_first_update_has_rho_zero_exactly(sft_policy):
    """Old log-probs and the policy's log-probs both come from completion_logps: rho = 0 on pass one."""
    model, processor, samples = sft_policy
    torch.manual_seed(0)
    rollout = generate_rollout(model, processor, samples, [s["frames"] for s in samples], 4,
                               max_new_tokens=32, temperature=1.0, sampler="fast")
    batch = rollout.logp_batch()
    with torch.no_grad():
        old = completion_logps(model, batch)
    new = completion_logps(model.train(), batch)
    model.eval()
    assert new.requires_grad and torch.equal(new.detach(), old)
    assert rollout.completion_mask.sum() > 0


def test_resolve_names_the_setting():
    assert sampler.resolve("hf", torch.device("cpu")) == "hf"
    assert sampler.resolve("auto", torch.device("cpu")) in ("fast", "hf")
    with pytest.raises(ValueError, match="sampler"):
        sampler.resolve("vllm", torch.device("cpu"))


def test_bench_sampler_times_both_samplers(monkeypatch):
    import scripts.bench_sampler as bench_sampler
    small = dict(batch_size=1, group_size=2, num_frames=4, frame_size=56, prompt_len=8, gen_len=4, repeats=1,
                 peak_bandwidth_gbs=10.0)
    for key, value in small.items():
        monkeypatch.setattr(bench_sampler, key, value)
    rows, info = bench_sampler.random_weights_rows()
    assert set(rows) == {"fast", "hf"} and info["answers"] == 2
    for r in rows.values():
        assert {"prefill_s", "decode_s", "step_ms", "rollout_s", "compile_capture_s", "bandwidth_use"} <= set(r)
    assert "fast vs hf" in bench_sampler.format_rows(rows)


def perturb(model, seed):
    """What an optimizer step does to the weights between two rollouts."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.model.language_model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 1e-2)


@pytest.mark.parametrize("compile", [False, True])
def test_kept_decoders_match_fresh_calls_and_generate(compile):
    """A sequence of calls whose prompts, group size, sampling settings and weights change between calls,
    as a run makes them: each call with the decoders kept from the calls before it gives the tokens and
    logits of the same call on a model that never sampled (fresh), and greedy calls give generate's tokens.
    compile=True is CUDA's code path on the CPU: bucketed shapes (spare rows), torch.compile."""
    model, processor = build_tiny(texts=["The red square moves left. How many circles appear?"] * 10, seed=0)
    model.eval()
    pad, suppress = ids(processor)
    calls = [(3, 2, dict(greedy=True)), (2, 3, dict(temperature=0.7, top_p=0.8)), (3, 2, dict(greedy=True)),
             "perturb", (1, 5, dict(temperature=1.0)), (3, 2, dict(greedy=True)), (2, 3, dict(temperature=0.7, top_p=0.8))]
    for i, call in enumerate(calls):
        if call == "perturb":
            perturb(model, i)
            continue
        B, G, kw = call
        prompt = prompts(processor, QUESTIONS[:B], seed=i)
        run = lambda: sampler.sample(model, prompt, G, 10, None, pad, suppress, keep_logits=True,
                                     generator=torch.Generator().manual_seed(i), compile=compile, **kw)
        kept_out, kept_logits = run()
        kept = model.__dict__.pop("_decoders")
        fresh_out, fresh_logits = run()
        model.__dict__["_decoders"] = kept
        assert torch.equal(kept_out, fresh_out), (i, call)
        torch.testing.assert_close(torch.stack(kept_logits), torch.stack(fresh_logits), rtol=0, atol=1e-6)
        if kw.get("greedy"):
            repeated = repeat_batch(prompt, G)
            theirs = model.generate(**repeated, do_sample=False, max_new_tokens=10, suppress_tokens=suppress,
                                    eos_token_id=None, pad_token_id=pad)[:, repeated["input_ids"].shape[1]:]
            assert torch.equal(kept_out, theirs), (i, call)
    shapes = list(model.__dict__["_decoders"]["shapes"])
    assert 1 < len(shapes) <= 4
    if compile:                                          # rows bucketed to powers of two, cache to 128s
        assert all(key[0] & (key[0] - 1) == 0 and key[1] % 128 == 0 for key in shapes)


def test_least_recently_used_shape_is_dropped_first():
    model, processor = build_tiny(texts=["The red square moves left. How many circles appear?"] * 10, seed=0)
    model.eval()
    pad, suppress = ids(processor)
    for B in (1, 2, 1, 3):                               # shapes a, b, a again, c: b goes, a stays
        sampler.sample(model, prompts(processor, QUESTIONS[:B]), 2, 3, None, pad, suppress, greedy=True, max_shapes=2)
    assert sorted(key[0] for key in model.__dict__["_decoders"]["shapes"]) == [2, 6]


def test_graph_needs_cuda_and_auto_means_cuda_only():
    assert sampler.speedups("cpu") == (False, False)
    assert sampler.speedups("cpu", compile=True) == (True, False)
    assert sampler.speedups("cuda") == (True, True)
    assert sampler.speedups("cuda", lm_params=10 ** 6) == (False, True)          # tiny: graph only
    assert sampler.speedups("cuda", lm_params=3 * 10 ** 9) == (True, True)
    assert sampler.speedups("cuda:1", graph=False) == (True, False)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        sampler.speedups("cpu", graph=True)
