"""model.py: tiny Qwen2.5-VL round trip, processor/tokenizer agreement, vision sharing and windows."""

import numpy as np
import pytest
import torch

import model as M
from machinery import speedups as S
from machinery.logprobs import completion_logps

QUESTIONS = ["Which way does the red square move?", "How many circles appear in the whole video clip?"]
TEXTS = ["The red square moves left. The blue circle moves right. How many circles appear?"] * 20


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return M.tiny_qwen25vl(tmp_path_factory.mktemp("tiny") / "qwen", texts=TEXTS, seed=0)


@pytest.fixture(scope="module")
def policy(tiny_dir):
    model, processor = M.load_policy(tiny_dir)
    return model.eval(), processor


def videos(n, frames=8, size=112, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8) for _ in range(n)]


def prompt(processor, question):
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_batch(processor, questions, vids):
    texts = [prompt(processor, q) for q in questions]
    return processor(text=texts, videos=vids, return_tensors="pt", padding=True, padding_side="left")


def with_completions(prompts, completions, pad_id):
    """Layout of completion_logps: left-padded prompt, then right-padded completion."""
    T = max(len(c) for c in completions)
    ids = torch.full((len(completions), T), pad_id)
    mask = torch.zeros(len(completions), T, dtype=torch.long)
    for i, c in enumerate(completions):
        ids[i, :len(c)] = torch.tensor(c)
        mask[i, :len(c)] = 1
    batch = dict(prompts)
    batch["input_ids"] = torch.cat([prompts["input_ids"], ids], 1)
    batch["attention_mask"] = torch.cat([prompts["attention_mask"], mask], 1)
    batch["completion_mask"] = mask
    return batch


def text_ids(processor, s):
    return processor.tokenizer(s, add_special_tokens=False)["input_ids"]


def test_round_trip_same_weights_and_logits(tiny_dir, policy):
    loaded, processor = policy
    fresh, _ = M.build_tiny(texts=TEXTS, seed=0)
    S.patch_embed_as_matmul(fresh.eval())  # as load_policy does: the conv's sum order differs in float32
    assert type(loaded).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    a, b = fresh.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    batch = prompt_batch(processor, QUESTIONS, videos(2))
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, loaded(**batch).logits)
    other, _ = M.build_tiny(texts=TEXTS, seed=1)
    assert not torch.equal(other.lm_head.weight, loaded.lm_head.weight)


def test_size_and_parameter_count(policy):
    model, processor = policy
    text, vision = model.config.text_config, model.config.vision_config
    sizes = (text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.num_key_value_heads)
    assert sizes == (4, 128, 4, 2)
    assert sum(text.rope_parameters["mrope_section"]) == text.hidden_size // text.num_attention_heads // 2
    assert (vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size) == (14, 2, 2)
    assert vision.out_hidden_size == text.hidden_size
    assert text.vocab_size == len(processor.tokenizer)
    assert 0.2e6 < M.count_parameters(model) < 3e6


def test_chat_template_and_tags(policy):
    _, processor = policy
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "video"}, {"type": "image"}, {"type": "text", "text": "Q?"}]},
                {"role": "assistant", "content": "<think>x</think><answer>A</answer>"}]
    got = processor.apply_chat_template(messages, tokenize=False)
    assert got == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                   "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>"
                   "<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n"
                   "<|im_start|>assistant\n<think>x</think><answer>A</answer><|im_end|>\n")
    assert prompt(processor, "Q?").endswith("Q?<|im_end|>\n<|im_start|>assistant\n")
    tok = processor.tokenizer
    for tag in M.TAG_TOKENS + M.SPECIAL_TOKENS:
        assert len(text_ids(processor, tag)) == 1, tag
    s = "<think>It moves left.</think><answer>B</answer>"
    assert tok.decode(text_ids(processor, s)) == s
    assert tok.decode(text_ids(processor, s), skip_special_tokens=True) == s  # tags are plain tokens


def test_placeholder_count_matches_grid(policy):
    _, processor = policy
    batch = prompt_batch(processor, QUESTIONS[:1], videos(1, frames=8, size=112))
    grid = batch["video_grid_thw"]
    assert grid.tolist() == [[4, 8, 8]]  # 8 frames / temporal patch 2; 112 px / patch 14: not resized
    n_pad = int((batch["input_ids"] == processor.video_token_id).sum())
    assert n_pad == int(grid.prod()) // 4 == 64
    assert batch["pixel_values_videos"].shape == (4 * 8 * 8, 3 * 2 * 14 * 14)
    # a 168x112 clip of 6 frames: kept at its size, 3 temporal groups
    clip = np.zeros((6, 168, 112, 3), np.uint8)
    other = processor(text=[prompt(processor, "Q")], videos=[clip], return_tensors="pt")
    assert other["video_grid_thw"].tolist() == [[3, 12, 8]]
    assert int((other["input_ids"] == processor.video_token_id).sum()) == 3 * 12 * 8 // 4


def test_video_fps_reaches_rope_through_video_metadata(policy):
    """second_per_grid_ts = temporal_patch / fps comes from video_metadata (frames are not resampled)."""
    model, processor = policy
    text = [prompt(processor, "Q")] * 2
    vids = videos(2)
    # fps 2 and 1: whole seconds per temporal patch. transformers 5.17 truncates seconds-per-grid to an
    # int inside get_rope_index (0.5 s -> 0, all time steps collapse); 5.23 does not.
    meta = [{"total_num_frames": 8, "fps": 2.0}, {"total_num_frames": 8, "fps": 1.0}]
    batch = processor(text=text, videos=vids, video_metadata=meta, return_tensors="pt", padding=True)
    assert batch["second_per_grid_ts"].tolist() == [1.0, 2.0]
    assert batch["video_grid_thw"].tolist() == [[4, 8, 8]] * 2  # still all 8 frames
    types = (batch["input_ids"] == model.config.video_token_id).int() * 2
    pos, _ = model.model.get_rope_index(batch["input_ids"], mm_token_type_ids=types,
                                        video_grid_thw=batch["video_grid_thw"],
                                        second_per_grid_ts=batch["second_per_grid_ts"],
                                        attention_mask=batch["attention_mask"])
    t = pos[0][types.bool()].view(2, 4, 16)[:, :, 0]  # temporal index of each 4x4 group
    start = t[:, :1]
    # tokens_per_second 2: 2 * 1.0 s per group -> steps of 2; 2 * 2.0 s -> steps of 4
    assert (t - start).tolist() == [[0, 2, 4, 6], [0, 4, 8, 12]]


def test_encode_prompts_tells_each_clip_its_true_spacing(policy):
    """The same 8 frames, read 0.5 s apart from one clip and 2.5 s apart from another, get different
    temporal rope positions (whole seconds per patch, so that transformers 5.17 agrees)."""
    from rollout import encode_prompts, per_video
    model, processor = policy
    clip = videos(1)[0]
    record = {"question": "Q", "options": [], "problem_type": "free_form"}
    records = [dict(record, times=np.arange(8) * 0.5), dict(record, times=np.arange(8) * 2.5)]
    batch = encode_prompts(processor, records, [clip, clip])
    assert batch["second_per_grid_ts"].tolist() == [1.0, 5.0]
    assert torch.equal(*per_video(batch["pixel_values_videos"], batch["video_grid_thw"]))
    types = (batch["input_ids"] == model.config.video_token_id).int() * 2
    pos, _ = model.model.get_rope_index(batch["input_ids"], mm_token_type_ids=types,
                                        video_grid_thw=batch["video_grid_thw"],
                                        second_per_grid_ts=batch["second_per_grid_ts"],
                                        attention_mask=batch["attention_mask"])
    t = pos[0][types.bool()].view(2, 4, 16)[:, :, 0]
    assert (t - t[:, :1]).tolist() == [[0, 2, 4, 6], [0, 10, 20, 30]]  # tokens_per_second 2


def test_special_ids_agree(policy):
    model, processor = policy
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in M.SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(ids)
    text = model.config.text_config
    assert text.bos_token_id == ids["<|endoftext|>"]
    assert text.eos_token_id == ids["<|im_end|>"] == tok.eos_token_id
    assert text.pad_token_id == ids["<|endoftext|>"] == tok.pad_token_id
    assert model.config.video_token_id == ids["<|video_pad|>"] == processor.video_token_id
    assert model.config.image_token_id == ids["<|image_pad|>"] == processor.image_token_id
    assert model.config.vision_start_token_id == ids["<|vision_start|>"]
    assert model.config.vision_end_token_id == ids["<|vision_end|>"]
    assert set(model.generation_config.eos_token_id) == {ids["<|im_end|>"], ids["<|endoftext|>"]}
    assert M.vision_token_ids(processor) == sorted(ids[t] for t in M.VISION_TOKENS)
    assert tok("hi")["input_ids"] == text_ids(processor, "hi")  # no BOS prepended, as in Qwen


def test_generate_never_samples_vision_tokens(policy):
    model, processor = policy
    sup = M.vision_token_ids(processor)
    prompts = prompt_batch(processor, QUESTIONS, videos(2, seed=5))
    P = prompts["input_ids"].shape[1]
    boost = torch.zeros(model.config.text_config.vocab_size)
    boost[sup] = 30.0  # make the placeholders the model's favourite tokens
    hook = model.lm_head.register_forward_hook(lambda mod, inp, out: out + boost.to(out.dtype))
    try:
        torch.manual_seed(0)
        free = model.generate(**prompts, max_new_tokens=8, do_sample=True)
        assert torch.isin(free[:, P:], torch.tensor(sup)).all()  # the trap is real without suppression
        torch.manual_seed(0)
        out = model.generate(**prompts, max_new_tokens=24, do_sample=True, temperature=1.5,
                             suppress_tokens=sup, output_logits=True, return_dict_in_generate=True)
    finally:
        hook.remove()
    completion = out.sequences[:, P:]
    assert not torch.isin(completion, torch.tensor(sup)).any()
    # feed the samples back: no "video features and video tokens do not match", and the log-probs are
    # the ones the sampler used (generate's raw logits / tau, suppressed ids removed)
    mask = torch.ones_like(completion)
    batch = dict(prompts, input_ids=out.sequences, completion_mask=mask,
                 attention_mask=torch.cat([prompts["attention_mask"], mask], 1))
    with torch.no_grad():
        got = completion_logps(model, batch, temperature=1.5, suppress_tokens=sup)
    z = torch.stack(out.logits, 1).double() / 1.5  # (N, T, V) generate's logits, boost included
    z[..., sup] = float("-inf")  # the boost sat on these ids only, so the rest equal the unhooked logits
    ref = torch.log_softmax(z, -1).gather(-1, completion[..., None]).squeeze(-1)
    torch.testing.assert_close(got.double(), ref, atol=2e-5, rtol=0)


def test_freeze_vision_and_checkpointing_train_only_language_model(tiny_dir):
    model, processor = M.load_policy(tiny_dir)
    M.freeze_vision(model)
    M.enable_gradient_checkpointing(model)
    model.train()
    assert model.model.language_model.gradient_checkpointing
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert trainable and all(n.startswith(("model.language_model.", "lm_head.")) for n in trainable)
    assert frozen and all(n.startswith("model.visual.") for n in frozen)
    batch = with_completions(prompt_batch(processor, QUESTIONS, videos(2)),
                             [text_ids(processor, "<answer>A</answer>"), text_ids(processor, "B")],
                             processor.tokenizer.pad_token_id)
    logps = completion_logps(model, batch)
    (-(logps.sum())).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("model.visual."))


def test_load_reference_is_frozen(tiny_dir):
    ref = M.load_reference(tiny_dir)
    assert not ref.training
    assert all(not p.requires_grad for p in ref.parameters())


def test_bad_path_names_the_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        M.load_policy(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*config.json"):
        M.load_policy(empty)


def test_checkpointing_keeps_frozen_vision_out_of_backward(tiny_dir):
    """transformers' input-grad hook would make the frozen tower's output require grad (so it is
    recomputed and backpropagated); enable_gradient_checkpointing removes it."""
    model, processor = M.load_policy(tiny_dir)
    M.freeze_vision(model)
    M.enable_gradient_checkpointing(model)
    model.train()
    seen = []
    model.model.visual.patch_embed.register_forward_hook(lambda mod, inp, out: seen.append(out.requires_grad))
    batch = with_completions(prompt_batch(processor, QUESTIONS, videos(2)),
                             [text_ids(processor, "A"), text_ids(processor, "B")], processor.tokenizer.pad_token_id)
    completion_logps(model, batch).sum().backward()
    assert seen == [False]
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def test_repeated_videos_are_encoded_once_with_the_same_logps(tiny_dir):
    from transformers import AutoModelForImageTextToText
    from rollout import repeat_batch
    shared, processor = M.load_policy(tiny_dir)
    plain = AutoModelForImageTextToText.from_pretrained(tiny_dir)  # transformers as shipped
    assert not getattr(plain.model.visual, "shares_repeated_videos", False)
    prompts = prompt_batch(processor, QUESTIONS, videos(2, seed=4))
    batch = repeat_batch(dict(prompts), 3)  # 6 rows, each video 3 times in a row
    completions = [text_ids(processor, s) for s in ("A", "<answer>B</answer>", "C", "D", "xy", "A")]
    batch = with_completions(batch, completions, processor.tokenizer.pad_token_id)
    encoded = {}
    for name, model in (("shared", shared), ("plain", plain)):
        rows = []
        model.model.visual.patch_embed.register_forward_hook(lambda mod, inp, out: rows.append(out.shape[0]))
        logps = completion_logps(model.train(), batch)
        logps.sum().backward()
        encoded[name] = (rows[0], logps.detach(), model.model.visual.merger.mlp[0].weight.grad.clone())
    per_video = prompts["pixel_values_videos"].shape[0] // 2
    assert encoded["shared"][0] == 2 * per_video and encoded["plain"][0] == 6 * per_video
    torch.testing.assert_close(encoded["shared"][1], encoded["plain"][1], rtol=0, atol=1e-6)
    # a trainable tower gets the gradient summed over the copies, as if each copy were encoded
    g_shared, g_plain = encoded["shared"][2], encoded["plain"][2]
    assert g_plain.norm() > 0 and (g_shared - g_plain).norm() / g_plain.norm() < 1e-5


def windowed_config():
    """A Qwen2.5-VL whose vision tower has a window layer and a full layer (the tiny one has no windows)."""
    from transformers import Qwen2_5_VLConfig
    text = dict(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=1,
                num_key_value_heads=1, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                        "mrope_section": [2, 1, 1]})
    vision = dict(depth=2, hidden_size=8, intermediate_size=12, num_heads=2, patch_size=2, temporal_patch_size=2,
                  spatial_merge_size=2, window_size=8, fullatt_block_indexes=[1], out_hidden_size=8)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=5, video_token_id=6,
                            vision_start_token_id=7, vision_end_token_id=8)


def test_grouped_window_attention_matches_transformers_float64():
    from transformers import Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration._from_config(windowed_config(), attn_implementation="sdpa").double()
    grids = torch.tensor([[2, 6, 4], [2, 10, 6], [4, 2, 2]])  # windows of 16, 8, 4 patches and whole frames
    pixels = torch.randn(int(grids.prod(-1).sum()), 3 * 2 * 2 * 2, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(int(grids.prod(-1).sum()) // 4, 8, dtype=torch.float64)

    def features_and_grad():
        out = model.model.visual(pixels, grid_thw=grids)
        features = getattr(out, "pooler_output", out)
        grad, = torch.autograd.grad((features * weights).sum(), pixels)
        return features.detach(), grad

    reference = features_and_grad()
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    S.group_vision_windows(model)
    torch.nn.functional.scaled_dot_product_attention = lambda *a, **k: calls.append(a[0].shape) or sdpa(*a, **k)
    try:
        grouped = features_and_grad()
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
    torch.testing.assert_close(grouped[0], reference[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grouped[1], reference[1], rtol=1e-12, atol=1e-14)
    windows = sum(shape[0] for shape in calls)
    assert len(calls) < windows  # stacked: fewer kernels than windows


def test_patch_embed_as_matmul_matches_conv3d_float64():
    from transformers import Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration._from_config(windowed_config(), attn_implementation="sdpa").double()
    embed = model.model.visual.patch_embed
    pixels = torch.randn(40, 3 * 2 * 2 * 2, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(40, 8, dtype=torch.float64)

    def output_and_grads():
        out = embed(pixels)
        grads = torch.autograd.grad((out * weights).sum(), (pixels, embed.proj.weight))
        return out.detach(), *grads

    conv = output_and_grads()
    keys = list(model.state_dict())
    S.patch_embed_as_matmul(S.patch_embed_as_matmul(model))   # idempotent
    assert embed.as_matmul
    matmul = output_and_grads()
    for a, b in zip(matmul, conv):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # the conv by hand, patch by patch: one patch (C, T, P, P) dotted with each output channel's kernel
    kernel = embed.proj.weight.detach()
    by_hand = torch.stack([(kernel * row.view(3, 2, 2, 2)).sum(dim=(1, 2, 3, 4)) for row in pixels.detach()])
    torch.testing.assert_close(matmul[0], by_hand, rtol=1e-12, atol=1e-12)
    assert list(model.state_dict()) == keys and embed.proj.weight.shape == (8, 3, 2, 2, 2)


def test_load_policy_installs_patch_embed_as_matmul(policy):
    model, _ = policy
    assert getattr(model.model.visual.patch_embed, "as_matmul", False)


def test_speedups_are_named_and_off_gives_transformers_model(tiny_dir):
    """load_policy(speedups=()) is the model as transformers ships it (no forward replaced); with all of
    them installed the log-probs of a batch with repeated videos are the plain model's (float32)."""
    from machinery.logprobs import completion_logps
    plain, processor = M.load_policy(tiny_dir, speedups=())
    fast, _ = M.load_policy(tiny_dir)
    replaced = lambda m: [n for n, mod in m.named_modules() if "forward" in vars(mod)]
    assert replaced(plain) == []
    assert replaced(fast) and all(n.startswith("model.visual") for n in replaced(fast))
    with pytest.raises(ValueError, match="unknown"):
        S.apply(plain, ("share_video",))
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which way?"}]}],
                                           add_generation_prompt=True, tokenize=False)] * 2
    batch = dict(processor(text=texts, videos=videos(1) * 2, video_metadata=[{"total_num_frames": 8, "fps": 2.0}] * 2,
                           return_tensors="pt", padding=True, do_sample_frames=False))
    completion = torch.randint(10, 200, (2, 5), generator=torch.Generator().manual_seed(0))
    batch = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    batch["input_ids"] = torch.cat([batch["input_ids"], completion], 1)
    batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(completion)], 1)
    batch["completion_mask"] = torch.ones_like(completion)
    with torch.no_grad():
        torch.testing.assert_close(completion_logps(fast.eval(), batch), completion_logps(plain.eval(), batch),
                                   rtol=1e-5, atol=1e-5)
