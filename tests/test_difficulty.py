import numpy as np
import pytest
import torch

from difficulty import (RewardBuffer, add_frame_noise, build_hint, flat_groups, group_mean_rewards,
                        make_easier_prompt, make_harder, mask_fraction, mask_frames, plan_augmentation,
                        zero_advantage_ratio)


def _uint8_frames(t=8, h=16, w=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


# ---- rewards and buffer ----

def test_zero_advantage_ratio_and_group_means():
    rewards = [2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert zero_advantage_ratio(rewards, 3) == pytest.approx(3 / 4)
    assert zero_advantage_ratio(torch.tensor(rewards), 6) == 0.0
    assert zero_advantage_ratio(rewards, 1) == 1.0
    assert flat_groups(rewards, 3).tolist() == [True, True, True, False]
    np.testing.assert_allclose(group_mean_rewards(rewards, 3).numpy(), [2.0, 0.0, 1.0, 2 / 3], rtol=1e-6)
    assert group_mean_rewards(np.array(rewards), 6).shape == (2,)
    with pytest.raises(ValueError, match="group_size=5 does not divide N=12"):
        zero_advantage_ratio(rewards, 5)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        group_mean_rewards(torch.ones(2, 3), 3)


def test_buffer_window_drops_old_steps_and_mean():
    buf = RewardBuffer(window=2)
    assert len(buf) == 0 and buf.mean() is None  # empty: no r_ref, no augmentation
    buf.push([0.0, 1.0])
    assert buf.mean() == pytest.approx(0.5)
    buf.push(torch.tensor([2.0]))
    assert len(buf) == 2 and buf.mean() == pytest.approx(1.0)  # mean over all stored rewards
    buf.push(np.array([1.0, 1.0, 1.0]))
    assert len(buf) == 2 and buf.mean() == pytest.approx(5 / 4)  # step [0, 1] dropped
    buf.push([2.0])
    assert buf.mean() == pytest.approx(5 / 4)  # step [2] dropped, [1, 1, 1] + [2]
    with pytest.raises(ValueError, match="window must be a positive int"):
        RewardBuffer(0)
    with pytest.raises(ValueError, match="non-empty list of finite"):
        buf.push([])
    with pytest.raises(ValueError, match="non-empty list of finite"):
        buf.push([1.0, float("nan")])


def test_buffer_state_dict_round_trip():
    buf = RewardBuffer(window=3)
    for step in ([0.0], [1.0, 2.0], [0.5], [1.5]):
        buf.push(step)
    state = buf.state_dict()
    assert state == {"window": 3, "steps": [[1.0, 2.0], [0.5], [1.5]]}
    other = RewardBuffer(window=3)
    other.load_state_dict(state)
    assert other.mean() == buf.mean() and len(other) == 3
    small = RewardBuffer(window=2)  # a smaller window keeps the newest steps
    small.load_state_dict(state)
    assert small.state_dict()["steps"] == [[0.5], [1.5]]
    with pytest.raises(KeyError, match="steps"):
        other.load_state_dict({"window": 3})


# ---- plans ----

def test_plan_direction_easy_harder_hard_easier():
    plans = plan_augmentation(torch.tensor([2.0, 0.0, 1.05, 0.95, 1.5]), r_ref=1.0, margin=0.1)
    assert [p["action"] for p in plans] == ["harder", "easier", "none", "none", "harder"]
    assert plans[0]["l_guide"] == 0 and plans[1]["l_perturb"] == 0.0
    assert [p["delta"] for p in plans] == pytest.approx([1.0, -1.0, 0.05, -0.05, 0.5])
    # all-correct and all-wrong groups are the ones moved when r_ref sits in between
    assert [p["action"] for p in plan_augmentation([2.0, 0.0], 1.2)] == ["harder", "easier"]


def test_plan_empty_buffer_means_no_augmentation():
    plans = plan_augmentation([0.0, 2.0], r_ref=RewardBuffer(4).mean())
    assert [p["action"] for p in plans] == ["none", "none"]


def test_levels_follow_formulas_and_grow_with_delta():
    deltas = np.linspace(0.2, 2.0, 10)
    harder = plan_augmentation(deltas, r_ref=0.0, margin=0.1)  # r_cur - r_ref = deltas
    easier = plan_augmentation(2.0 - deltas, r_ref=2.0, margin=0.1)
    lp = [p["l_perturb"] for p in harder]
    assert lp == pytest.approx(list(deltas + 1))  # l_perturb = |delta| + 1
    assert all(a < b for a, b in zip(lp, lp[1:])) and 1 <= lp[0] and lp[-1] <= 3
    lg = [p["l_guide"] for p in easier]
    assert all(a <= b for a, b in zip(lg, lg[1:])) and set(lg) <= {1, 2, 3}
    # l_guide = round(|delta|) + 1, halves rounded up
    got = [p["l_guide"] for p in plan_augmentation([0.6, 0.5, 0.0, -0.5, -0.9], r_ref=1.0, margin=0.0)]
    assert got == [1, 2, 2, 3, 3]


# ---- harder: noise ----

def test_noise_scale_matches_sigma0_times_l_perturb():
    frames = torch.full((4, 3, 64, 64), 0.5)
    for l_perturb in (1.0, 1.5, 2.0):
        out = add_frame_noise(frames, l_perturb, sigma0=0.05, generator=0)
        std = (out - frames).std().item()
        assert std == pytest.approx(0.05 * l_perturb, rel=0.03)  # 0.5 +- 4 std stays in [0, 1]
    u8 = np.full((4, 64, 64, 3), 128, dtype=np.uint8)
    out = add_frame_noise(u8, 2.0, sigma0=0.05, generator=1)
    assert (out.astype(np.float64) - 128).std() / 255 == pytest.approx(0.1, rel=0.03)  # [0, 1] pixel space


def test_noise_keeps_type_dtype_shape_and_range():
    u8 = _uint8_frames()
    out = add_frame_noise(u8, 3.0, generator=0)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == u8.shape
    assert not np.array_equal(out, u8)
    t8 = torch.from_numpy(u8)
    out_t8 = add_frame_noise(t8, 3.0, generator=0)
    assert isinstance(out_t8, torch.Tensor) and out_t8.dtype == torch.uint8
    assert np.array_equal(out_t8.numpy(), out)  # same seed, same noise, whatever the container
    white = torch.ones(2, 3, 8, 8, dtype=torch.bfloat16)
    out_w = add_frame_noise(white, 3.0, generator=0)
    assert out_w.dtype == torch.bfloat16 and out_w.shape == white.shape
    assert out_w.min() >= 0 and out_w.max() <= 1 and out_w.min() < 1  # clamped
    assert add_frame_noise(u8, 0.0, generator=0).tolist() == u8.tolist()


def test_noise_and_mask_reproduce_from_seed():
    u8 = _uint8_frames()
    a = add_frame_noise(u8, 2.0, generator=7)
    assert np.array_equal(a, add_frame_noise(u8, 2.0, generator=7))
    assert np.array_equal(a, add_frame_noise(u8, 2.0, generator=torch.Generator().manual_seed(7)))
    assert not np.array_equal(a, add_frame_noise(u8, 2.0, generator=8))
    m = mask_frames(u8, 0.5, generator=3)
    assert np.array_equal(m, mask_frames(u8, 0.5, generator=3))
    masked = lambda seed: tuple(i for i in range(8) if not mask_frames(u8, 0.5, generator=seed)[i].any())
    assert len({masked(s) for s in range(6)}) > 1  # which frames are masked depends on the seed


# ---- harder: masking ----

def test_mask_fraction_formula_and_growth():
    assert mask_fraction(0.0) == pytest.approx(1 / 8)
    assert mask_fraction(-1.0) == pytest.approx(2 / 8)
    assert mask_fraction(2.0) == pytest.approx(3 / 8)
    assert mask_fraction(10.0) == 0.5
    f = [mask_fraction(d) for d in np.linspace(0, 2, 9)]
    assert all(a < b for a, b in zip(f, f[1:]))


def test_mask_frames_blacks_out_whole_frames():
    u8 = np.random.default_rng(0).integers(1, 256, size=(8, 4, 4, 3), dtype=np.uint8)  # no 0 pixels
    for fraction, k in ((0.125, 1), (0.25, 2), (0.375, 3), (0.01, 1), (0.0, 0)):
        out = mask_frames(u8, fraction, generator=0)
        black = [i for i in range(8) if not out[i].any()]
        assert len(black) == k
        kept = [i for i in range(8) if i not in black]
        assert np.array_equal(out[kept], u8[kept])
    f = torch.rand(6, 3, 4, 4) * 0.9 + 0.1
    out = mask_frames(f, 0.5, generator=0)
    assert out.dtype == f.dtype and int((out.flatten(1).amax(1) == 0).sum()) == 3
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        mask_frames(u8, 1.5)


def test_make_harder_direction_and_modes():
    u8 = np.random.default_rng(0).integers(1, 256, size=(8, 4, 4, 3), dtype=np.uint8)
    easy, hard, mid = plan_augmentation([2.0, 0.0, 1.0], r_ref=1.0)
    assert make_harder(u8, hard) is u8 and make_harder(u8, mid, mode="mask") is u8
    noisy = make_harder(u8, easy, generator=0)
    assert np.array_equal(noisy, add_frame_noise(u8, easy["l_perturb"], generator=0))
    masked = make_harder(u8, easy, mode="mask", generator=0)
    assert sum(not masked[i].any() for i in range(8)) == 2  # mask_fraction(delta=1) * 8 frames
    with pytest.raises(ValueError, match="mode must be 'noise' or 'mask'"):
        make_harder(u8, easy, mode="blur")


def test_bad_frames_raise():
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        add_frame_noise(torch.full((2, 3, 4, 4), 255.0), 1.0)
    with pytest.raises(ValueError, match="4-D"):
        add_frame_noise(np.zeros((4, 4, 3), dtype=np.uint8), 1.0)
    with pytest.raises(ValueError, match="uint8 or float"):
        mask_frames(torch.zeros(2, 4, 4, 3, dtype=torch.int32), 0.5)
    with pytest.raises(ValueError, match="l_perturb and sigma0 must be >= 0"):
        add_frame_noise(_uint8_frames(), -1.0)


# ---- easier: hints ----

TRACE = "<think>The square starts left. It moves right! Then it stops?</think><answer>B</answer>"


def test_hint_prefers_correct_trace_and_grows_with_l_guide():
    hints = [build_hint(k, correct_thinks=["<think></think><answer>B</answer>", TRACE],
                        reasoning="Dataset reasoning.", answer="B") for k in (1, 2, 3, 4, 5)]
    assert hints[0] == "The square starts left."
    assert hints[1] == "The square starts left. It moves right!"
    assert hints[2] == "The square starts left. It moves right! Then it stops?"
    assert hints[3] == hints[2] + " The answer is B."
    assert hints[4] == hints[3]  # nothing more to give
    assert all(b.startswith(a) for a, b in zip(hints, hints[1:]))


def test_hint_falls_back_to_reasoning_then_answer():
    reasoning = "The red square starts on the left.\nIt ends on the right. So it moves right."
    assert build_hint(2, reasoning=reasoning, answer="B") == \
        "The red square starts on the left. It ends on the right."
    assert build_hint(4, reasoning=reasoning, answer="B").endswith("So it moves right. The answer is B.")
    assert build_hint(1, answer="3.5") == "The answer is 3.5."
    assert build_hint(2, answer="it moves right.") == "The answer is it moves right."
    assert build_hint(3) == "" and build_hint(0, reasoning=reasoning, answer="B") == ""
    assert build_hint(1, correct_thinks=["bare trace. second."]) == "bare trace."
    with pytest.raises(ValueError, match="list of strings"):
        build_hint(1, correct_thinks=TRACE)


def test_easier_prompt_appends_marked_hint_line():
    q = "Which way does the red square move?\nA. left\nB. right"
    assert make_easier_prompt(q, "") == q
    out = make_easier_prompt(q, build_hint(1, reasoning="It starts left. Then right.", answer="B"))
    assert out == q + "\nHint: It starts left."


def test_hard_sample_gets_hint_easy_sample_gets_noise():
    rewards = [2.0] * 4 + [0.0] * 4  # all-correct group, all-wrong group
    buf = RewardBuffer(window=4)
    buf.push([1.0, 1.0])
    plans = plan_augmentation(group_mean_rewards(rewards, 4), buf.mean())
    frames = _uint8_frames()
    assert [p["action"] for p in plans] == ["harder", "easier"]
    assert not np.array_equal(make_harder(frames, plans[0], generator=0), frames)
    assert make_harder(frames, plans[1], generator=0) is frames
    hint = build_hint(plans[1]["l_guide"], reasoning="It starts left. It ends right.", answer="B")
    assert hint == "It starts left. It ends right."  # |delta| = 1 -> l_guide = 2
