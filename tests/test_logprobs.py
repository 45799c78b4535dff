"""logprobs.py: completion log-probs against a plain full-vocabulary log-softmax (float64 where the
check is of the chunking or the length sorting), padding, temperature, suppression, gradients."""
import pytest
import torch

import model as M
from machinery import speedups as S
from machinery.logprobs import completion_logps, group_packed_logps, length_sorted_logps, select_rows, trim_padding
from rollout import repeat_batch
from test_model import QUESTIONS, policy, prompt, prompt_batch, text_ids, tiny_dir, videos, with_completions  # noqa: F401


def naive_logps(model, processor, question, video, completion, temperature=1.0, suppress=()):
    """One unpadded sequence, full-vocabulary float64 log-softmax over all positions."""
    p = processor(text=[prompt(processor, question)], videos=[video], return_tensors="pt")
    ids = torch.cat([p["input_ids"], torch.tensor([completion])], 1)
    types = torch.zeros_like(ids)
    types[ids == model.config.video_token_id] = 2
    visual = {k: p[k] for k in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")}
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=types, **visual).logits
    z = logits[0].double() / temperature
    z[:, list(suppress)] = float("-inf")
    P = p["input_ids"].shape[1]
    logp = torch.log_softmax(z, -1)[P - 1:P - 1 + len(completion)]
    return logp.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def test_completion_logps_matches_naive_and_ignores_padding(policy):
    model, processor = policy
    vids = videos(2, seed=3)
    eos = processor.tokenizer.eos_token_id
    completions = [text_ids(processor, "<think>It moves left.</think><answer>A</answer>") + [eos],
                   text_ids(processor, "<answer>C</answer>")]
    prompts = prompt_batch(processor, QUESTIONS, vids)
    assert (prompts["attention_mask"][:, 0] == 0).any()  # really left-padded
    batch = with_completions(prompts, completions, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        got = completion_logps(model, batch)
    assert got.dtype == torch.float32 and got.shape == batch["completion_mask"].shape
    for i, c in enumerate(completions):
        ref = naive_logps(model, processor, QUESTIONS[i], vids[i], c)
        torch.testing.assert_close(got[i, :len(c)].double(), ref, atol=2e-5, rtol=0)
        assert torch.all(got[i, len(c):] == 0)
    # more left padding, and junk ids wherever attention_mask is 0: same numbers
    P, extra = prompts["input_ids"].shape[1], 5
    ids = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 42)
    junk = dict(batch, input_ids=torch.cat([torch.full((2, extra), 42), ids], 1),
                attention_mask=torch.cat([torch.zeros(2, extra, dtype=torch.long), batch["attention_mask"]], 1))
    with torch.no_grad():
        torch.testing.assert_close(completion_logps(model, junk), got, atol=2e-5, rtol=0)


def test_temperature_and_suppression(policy):
    model, processor = policy
    vid = videos(1, seed=4)
    c = text_ids(processor, "<answer>B</answer>")
    batch = with_completions(prompt_batch(processor, QUESTIONS[:1], vid), [c], processor.tokenizer.pad_token_id)
    sup = M.vision_token_ids(processor)
    with torch.no_grad():
        cold = completion_logps(model, batch, temperature=0.3)
        hot = completion_logps(model, batch, temperature=1.0)
        cold_sup = completion_logps(model, batch, temperature=0.3, suppress_tokens=sup)
    ref = naive_logps(model, processor, QUESTIONS[0], vid[0], c, 0.3)
    ref_sup = naive_logps(model, processor, QUESTIONS[0], vid[0], c, 0.3, sup)
    torch.testing.assert_close(cold[0].double(), ref, atol=2e-5, rtol=0)
    torch.testing.assert_close(cold_sup[0].double(), ref_sup, atol=2e-5, rtol=0)
    assert (cold - hot).abs().max() > 1e-3
    assert torch.all(cold_sup > cold)  # removing mass from other tokens raises every kept token's log-prob


def test_completion_logps_gradient_matches_naive(tiny_dir):
    """The row-by-row, recomputed-in-backward log-softmax gives the gradient of the plain one."""
    model, processor = M.load_policy(tiny_dir)
    vids = videos(2, seed=6)
    completions = [text_ids(processor, "<answer>A</answer>"), text_ids(processor, "B")]
    batch = with_completions(prompt_batch(processor, QUESTIONS, vids), completions, processor.tokenizer.pad_token_id)
    completion_logps(model, batch, temperature=0.7).sum().backward()
    got = model.lm_head.weight.grad.clone()
    model.zero_grad()
    P = batch["input_ids"].shape[1] - batch["completion_mask"].shape[1]
    types = (batch["input_ids"] == model.config.video_token_id).int() * 2
    visual = {k: batch[k] for k in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   mm_token_type_ids=types, **visual).logits
    logp = torch.log_softmax(logits[:, P - 1:-1].double() / 0.7, -1)
    ref = logp.gather(-1, batch["input_ids"][:, P:, None]).squeeze(-1)
    (ref * batch["completion_mask"]).sum().backward()
    torch.testing.assert_close(got, model.lm_head.weight.grad, atol=1e-5, rtol=1e-4)
    assert got.abs().max() > 1e-3


def test_completion_logps_checks_shapes(policy):
    model, processor = policy
    batch = with_completions(prompt_batch(processor, QUESTIONS, videos(2)), [[50], [60]], 0)
    batch["completion_mask"] = batch["completion_mask"][:1]
    with pytest.raises(ValueError, match="completion_mask .1, 1. .* do not fit input_ids"):
        completion_logps(model, batch)


def float64_policy(tiny_dir):
    model, processor = M.load_policy(tiny_dir, dtype=torch.float64)
    M.freeze_vision(model)
    return model.train(), processor


def mixed_length_batch(processor, repeats=3):
    """Two prompts x `repeats` answers of lengths 1 to 15 (the G copies of a video contiguous)."""
    prompts = repeat_batch(dict(prompt_batch(processor, QUESTIONS, videos(2, seed=8))), repeats)
    texts = ["A", "<think>It moves left and then up.</think><answer>A</answer>", "B.", "<answer>C</answer>",
             "xy", "<think>two</think>"][:2 * repeats]
    return with_completions(prompts, [text_ids(processor, t) for t in texts], processor.tokenizer.pad_token_id)


def unchunked_logps(model, batch, temperature):
    """The plain computation: full (N, L, V) logits, float64 log-softmax, gather, mask."""
    T = batch["completion_mask"].shape[1]
    types = (batch["input_ids"] == model.config.video_token_id).int() * 2
    visual = {k: batch[k] for k in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   mm_token_type_ids=types, **visual).logits
    logp = torch.log_softmax(logits[:, -T - 1:-1].double() / temperature, -1)
    return logp.gather(-1, batch["input_ids"][:, -T:, None]).squeeze(-1) * batch["completion_mask"]


def values_and_grads(model, logps_fn, weights):
    """Log-probs and the gradient of sum(weights * logps) for every trainable parameter."""
    model.zero_grad(set_to_none=True)
    logps = logps_fn()
    (logps * weights).sum().backward()
    return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same(a, b, atol=1e-10):
    (va, ga), (vb, gb) = a, b
    torch.testing.assert_close(va.double(), vb.double(), atol=atol, rtol=0)
    assert ga.keys() == gb.keys()
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], atol=atol, rtol=1e-8, msg=name)


@pytest.mark.parametrize("chunk_tokens", [1, 7, 4096])
def test_chunked_logps_equal_unchunked_float64(tiny_dir, chunk_tokens):
    """Values and every parameter's gradient, chunks smaller than a row, across rows, and one chunk."""
    model, processor = float64_policy(tiny_dir)
    batch = mixed_length_batch(processor)
    weights = torch.randn(batch["completion_mask"].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = values_and_grads(model, lambda: unchunked_logps(model, batch, 0.7), weights)
    got = values_and_grads(model, lambda: completion_logps(model, batch, temperature=0.7, chunk_tokens=chunk_tokens),
                           weights)
    assert got[0].dtype == torch.float32  # the log-softmax runs in float32 of the float64 logits
    assert_same(got, ref, atol=1e-6)
    assert ref[1]["lm_head.weight"].abs().max() > 1e-3
    assert torch.all(got[0][batch["completion_mask"] == 0] == 0)
    assert "forward" not in vars(model.lm_head)  # the head is back to nn.Linear.forward


def test_head_is_restored_when_the_forward_fails(tiny_dir):
    model, processor = M.load_policy(tiny_dir)
    batch = mixed_length_batch(processor)
    batch["pixel_values_videos"] = batch["pixel_values_videos"][:-4]  # features and tokens no longer match
    with pytest.raises(Exception):
        completion_logps(model, batch)
    assert "forward" not in vars(model.lm_head)


@pytest.mark.parametrize("rows_per_forward", [1, 2, 4, 6])
def test_length_sorted_forwards_equal_the_padded_one_float64(tiny_dir, rows_per_forward):
    model, processor = float64_policy(tiny_dir)
    batch = mixed_length_batch(processor)
    weights = torch.randn(batch["completion_mask"].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    padded = values_and_grads(model, lambda: completion_logps(model, batch), weights)
    sorted_ = values_and_grads(model, lambda: length_sorted_logps(model, batch, rows_per_forward), weights)
    assert_same(sorted_, padded, atol=1e-9)
    assert padded[0].shape == sorted_[0].shape == batch["completion_mask"].shape


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_packed_groups_equal_the_padded_forward_float64(tiny_dir, temperature):
    """Each group's prompt once, its answers after it under a block mask: the same log-probs (float64
    model; the log-softmax runs in float32, hence 1e-6) and the same gradient of every parameter. Two
    prompts of different lengths (left padding), answers of 1 to 15 tokens."""
    model, processor = float64_policy(tiny_dir)
    batch = mixed_length_batch(processor)
    weights = torch.randn(batch["completion_mask"].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    padded = values_and_grads(model, lambda: completion_logps(model, batch, temperature=temperature), weights)
    packed = values_and_grads(model, lambda: group_packed_logps(model, batch, 3, temperature=temperature), weights)
    assert packed[0].shape == batch["completion_mask"].shape
    assert_same(packed, padded, atol=1e-6)
    via_sorted = length_sorted_logps(model, batch, 0, 3, temperature=temperature).detach()
    torch.testing.assert_close(via_sorted, padded[0], atol=1e-6, rtol=0)
    assert padded[1]["model.language_model.embed_tokens.weight"].abs().max() > 1e-3


def test_packed_groups_match_unpadded_sequences(policy):
    """Against the plain forward of each answer alone (no padding, no mask), float32 model."""
    model, processor = policy
    batch = mixed_length_batch(processor)
    packed = group_packed_logps(model, batch, 3)
    vids = videos(2, seed=8)
    mask = batch["completion_mask"]
    for n in range(6):
        T_n = int(mask[n].sum())
        completion = batch["input_ids"][n, -mask.shape[1]:][:T_n].tolist()
        want = naive_logps(model, processor, QUESTIONS[n // 3], vids[n // 3], completion)
        torch.testing.assert_close(packed[n, :T_n].double(), want, atol=2e-5, rtol=0)
        assert torch.all(packed[n, T_n:] == 0)


def test_packed_groups_refuse_rows_that_are_not_groups(policy):
    model, processor = policy
    batch = mixed_length_batch(processor)
    with pytest.raises(ValueError, match="not whole groups of 4"):
        group_packed_logps(model, batch, 4)
    swapped = select_rows(batch, torch.tensor([0, 3, 1, 2, 4, 5]))            # a row of prompt 2 in group 1
    with pytest.raises(ValueError, match="must share one prompt"):
        group_packed_logps(model, swapped, 3)


def test_trim_padding_and_select_rows():
    video = torch.arange(2 * 4 * 3).float().view(8, 3)  # two videos of 4 patches each
    batch = {"input_ids": torch.tensor([[0, 0, 5, 6, 7, 8, 0], [0, 5, 5, 6, 7, 0, 0]]),
             "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0, 0]]),
             "completion_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]),
             "pixel_values_videos": video, "video_grid_thw": torch.tensor([[1, 2, 2], [1, 2, 2]]),
             "second_per_grid_ts": torch.tensor([1.0, 2.0])}
    t = trim_padding(batch)
    assert t["input_ids"].tolist() == [[0, 5, 6, 7, 8], [5, 5, 6, 7, 0]]  # one prompt pad column, T 3 -> 2
    assert t["completion_mask"].tolist() == [[1, 1], [1, 0]]
    s = select_rows(batch, torch.tensor([1]))
    assert s["input_ids"].tolist() == [[0, 5, 5, 6, 7, 0, 0]] and torch.equal(s["pixel_values_videos"], video[4:])
    assert s["second_per_grid_ts"].tolist() == [2.0] and s["video_grid_thw"].tolist() == [[1, 2, 2]]
    with pytest.raises(ValueError, match="video_grid_thw: expected one video per row"):
        select_rows(dict(batch, video_grid_thw=batch["video_grid_thw"][:1]), torch.tensor([0]))


def test_compiled_layers_same_logps_and_gradients_and_generation_runs_eagerly(tiny_dir):
    """compile_decoder_layers with the "eager" backend (dynamo's tracing, no code generation: the test
    checks the integration; inductor runs on CPU too but takes minutes to compile)."""
    plain, processor = M.load_policy(tiny_dir)
    compiled, _ = M.load_policy(tiny_dir)
    S.compile_decoder_layers(compiled, backend="eager")
    batch = mixed_length_batch(processor)
    weights = torch.randn(batch["completion_mask"].shape, generator=torch.Generator().manual_seed(2))
    before = S.compile_seconds()
    got = values_and_grads(compiled.train(), lambda: length_sorted_logps(compiled, batch, 2), weights)
    assert S.compile_seconds() > before  # the layers were really traced
    ref = values_and_grads(plain.train(), lambda: length_sorted_logps(plain, batch, 2), weights)
    assert_same(got, ref, atol=1e-5)
    before = S.compile_seconds()
    prompts = {k: v for k, v in prompt_batch(processor, QUESTIONS[:1], videos(1)).items()}
    with torch.no_grad():
        compiled.eval().generate(**prompts, max_new_tokens=4, do_sample=False)
    assert S.compile_seconds() == before  # calls with a KV cache run the layers eagerly
