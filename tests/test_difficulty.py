import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data.synthetic.prepare import make_question
from difficulty import (HintTraces, agrees_with_answer, RewardBuffer, add_frame_noise, answer_piece, answer_text, build_hint,
                        flat_groups, group_mean_rewards, hint_pieces, hint_trace, make_easier_prompt,
                        make_harder, mask_fraction, mask_frames, names_answer, plan_augmentation, plan_groups,
                        redo_groups, wants_trace, zero_advantage_ratio)


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

MOTION = {"id": "m1", "question": "Which way does the red square move?", "options": ["left", "right", "up", "down"],
          "answer": "B", "problem_type": "multiple_choice",
          "reasoning": "It moves sideways. Its x grows. So it moves right."}


def _words(text):
    return re.findall(r"[A-Za-z0-9]+", text)


@pytest.mark.parametrize("i", range(16))
def test_one_piece_hint_names_neither_letter_nor_answer_text(i):
    """On every family of the synthetic data: the first piece names neither the letter nor the option
    text (checked word by word, not with names_answer); the answer comes only as the last piece."""
    record, _ = make_question(3, "train", i)
    letter, text = record["answer"], record["options"]["ABCD".index(record["answer"])]
    pieces = hint_pieces(record["reasoning"], record)
    assert len(pieces) == 3 and pieces[-1] == f"The answer is {letter}."  # two narrowing steps, then it
    for l_guide in (1, 2):
        words = _words(build_hint(l_guide, pieces))
        assert letter not in words and text.lower() not in [w.lower() for w in words], (l_guide, pieces)
    assert build_hint(3, pieces).endswith(f"The answer is {letter}.")
    assert build_hint(9, pieces) == build_hint(3, pieces)  # nothing more to give


def test_hint_pieces_stop_before_the_first_sentence_naming_the_answer():
    trace = "The square moves. It goes RIGHT! Then it stops. So B."
    assert hint_pieces(trace, MOTION) == ["The square moves.", "The answer is B."]
    assert hint_pieces("B is it. It moves.", MOTION) == ["The answer is B."]   # the letter, as a word
    assert hint_pieces("A bright square moves.", MOTION) == ["A bright square moves.", "The answer is B."]
    assert hint_pieces("", MOTION) == ["The answer is B."]
    number = {"answer": "3.5", "problem_type": "numerical"}
    assert hint_pieces("Two parts. Sum is 3.5 here.", number) == ["Two parts.", "The answer is 3.5."]
    assert answer_text(MOTION) == "right" and answer_piece(MOTION) == "The answer is B."
    assert [names_answer(s, MOTION) for s in ("Rightwards.", "right.", "Bob.", "(B)")] == [False, True, False, True]


def test_build_hint_grows_with_l_guide_and_checks_input():
    pieces = ["One.", "Two!", "Three?", "The answer is B."]
    hints = [build_hint(k, pieces) for k in range(6)]
    assert hints[0] == "" and hints[1] == "One." and hints[3] == "One. Two! Three?"
    assert hints[4] == hints[5] == "One. Two! Three? The answer is B."
    assert all(b.startswith(a) for a, b in zip(hints, hints[1:]))
    with pytest.raises(ValueError, match="list of strings"):
        build_hint(1, "One. Two.")
    with pytest.raises(ValueError, match="l_guide must be an int"):
        build_hint(1.0, pieces)


def test_hint_traces_keep_the_best_correct_trace_and_round_trip(tmp_path):
    traces = HintTraces()
    completions = ["<think>wrong but formatted.</think><answer>A</answer>", "no tags, right B",
                   "<think>It moves sideways.</think><answer>B</answer>", "<think>later.</think><answer>B</answer>"]
    traces.add("m1", completions, accuracy=[0, 1, 1, 1], rewards=[1, 1, 2, 2])
    assert traces.get("m1") == "It moves sideways."       # highest reward among correct, first of equals
    traces.add("m2", completions[:1], accuracy=[0], rewards=[1])
    assert "m2" in traces and traces.get("m2") == "" and traces.get("never") == "" and len(traces) == 2
    torch.save(traces.state_dict(), tmp_path / "t.pt")    # plain python types: loads with weights_only
    other = HintTraces()
    other.load_state_dict(torch.load(tmp_path / "t.pt", weights_only=True))
    assert other.state_dict() == traces.state_dict() == {"traces": {"m1": "It moves sideways.", "m2": ""}}
    with pytest.raises(ValueError, match="3 completions, 2 accuracies"):
        traces.add("m3", completions[:3], accuracy=[1, 1], rewards=[2, 2, 2])
    with pytest.raises(KeyError, match="traces"):
        other.load_state_dict({"window": 3})


def test_traces_whose_reasoning_names_another_option_are_not_kept():
    """Seen on the embedded default: shown "The answer is B.", the policy copies the letter and writes
    reasoning for another option (or for another kind of question). Such a trace is not kept; the
    hint then falls back to the dataset's reasoning."""
    right = "<think>It moves sideways. Its x grows. So it moves right.</think><answer>B</answer>"
    other = "<think>It moves left. So it moves up.</think><answer>B</answer>"          # right letter, wrong reasoning
    unrelated = "<think>It turns warm. So it turns red.</think><answer>B</answer>"      # names no option
    assert agrees_with_answer("So it moves RIGHT.", MOTION) and not agrees_with_answer("It moves left.", MOTION)
    assert not agrees_with_answer("So it turns red.", MOTION)                          # the answer never named
    assert not agrees_with_answer("Right, not left: it moves right.", MOTION)          # another option named
    assert agrees_with_answer("anything", {**MOTION, "problem_type": "free_form"})
    traces = HintTraces()
    traces.add("m1", [other, unrelated, right], accuracy=[1, 1, 1], rewards=[2, 2, 2], record=MOTION)
    assert traces.get("m1") == "It moves sideways. Its x grows. So it moves right."
    traces.add("m1", [other, unrelated], accuracy=[1, 1], rewards=[2, 2], record=MOTION)
    assert traces.get("m1") == "" and hint_trace(MOTION, [], traces) == MOTION["reasoning"]
    traces.add("m1", [other], accuracy=[1], rewards=[2])                                # no record: answer only
    assert traces.get("m1") == "It moves left. So it moves up."


def test_hint_trace_prefers_own_answers_then_stored_then_reasoning():
    traces = HintTraces()
    traces.add("m1", ["<think>Stored trace.</think><answer>B</answer>"], [1], [2])
    own = ["<think></think><answer>B</answer>", "<think>Own trace.</think><answer>B</answer>"]
    assert hint_trace(MOTION, own, traces) == "Own trace."
    assert hint_trace(MOTION, [], traces) == "Stored trace."
    assert hint_trace(MOTION, [], HintTraces()) == MOTION["reasoning"]
    assert hint_trace({**MOTION, "reasoning": ""}) == ""
    with pytest.raises(ValueError, match="list of completions"):
        hint_trace(MOTION, "one string")


def test_easier_prompt_appends_marked_hint_line():
    q = "Which way does the red square move?\nA. left\nB. right"
    assert make_easier_prompt(q, "") == q
    assert make_easier_prompt(q, build_hint(1, hint_pieces(MOTION["reasoning"], MOTION))) == q + "\nHint: It moves sideways."


# ---- the plan per group: which groups to redo, and with what video or hint ----

def _rollout(texts, accuracy):
    return SimpleNamespace(texts=texts, accuracy=torch.tensor(accuracy, dtype=torch.float32))


def test_plan_groups_applies_flat_only_and_augment_mode():
    rewards = [2.0, 2.0, 0.0, 0.0, 2.0, 0.0, 1.0, 1.0]  # all-right, all-wrong, mixed, flat at r_ref
    actions = lambda **kw: [p["action"] for p in plan_groups(rewards, 2, 1.0, margin=0.1, **kw)]
    assert actions() == ["harder", "easier", "none", "none"]
    assert actions(flat_only=False) == ["harder", "easier", "none", "none"]  # mixed group's mean is 1.0
    assert actions(augment="harder") == ["harder", "none", "none", "none"]
    assert actions(augment="easier") == ["none", "easier", "none", "none"]
    assert actions(augment="none") == ["none"] * 4
    assert [p["action"] for p in plan_groups([2.0, 1.0, 0.0, 0.0], 2, 0.5, flat_only=False)] == ["harder", "easier"]
    assert [p["action"] for p in plan_groups([2.0, 1.0, 0.0, 0.0], 2, 0.5)] == ["none", "easier"]
    assert [p["action"] for p in plan_groups(rewards, 2, None)] == ["none"] * 4  # empty buffer
    with pytest.raises(ValueError, match="augment must be"):
        plan_groups(rewards, 2, 1.0, augment="more")


def test_redo_groups_gives_noisy_frames_to_easy_and_hints_to_hard_groups():
    frames = [_uint8_frames(seed=s) for s in range(3)]
    records = [{**MOTION, "id": f"m{i}"} for i in range(3)]
    rollout = _rollout(["<think>x</think><answer>B</answer>"] * 2 + ["<think>x</think><answer>A</answer>"] * 4,
                       [1, 1, 0, 0, 0, 0])
    plans = plan_groups([2.0, 2.0, 0.0, 0.0, 1.0, 1.0], 2, 1.0)    # harder, easier (|delta| 1: l_guide 2), none
    traces = HintTraces()
    assert wants_trace(plans, records, rollout, 2, traces) == [1]
    traces.add("m1", ["<think>It moves sideways. Stored. It moves right.</think><answer>B</answer>"], [1], [2])
    assert wants_trace(plans, records, rollout, 2, traces) == []
    redo = redo_groups(plans, records, frames, rollout, 2, traces, generator=0)
    assert [r["redo"] for r in redo] == [True, True, False]
    assert redo[0]["hint"] == "" and not np.array_equal(redo[0]["frames"], frames[0])
    assert redo[1]["hint"] == "It moves sideways. Stored." and redo[1]["frames"] is frames[1]
    assert redo[2]["hint"] == "" and redo[2]["frames"] is frames[2]
    masked = redo_groups(plans, records, frames, rollout, 2, traces, harder_mode="mask", generator=0)[0]["frames"]
    assert (masked.reshape(8, -1).max(1) == 0).sum() >= 1      # whole frames blacked out


def test_redo_groups_uses_the_groups_own_correct_answer_first():
    records = [MOTION]
    rollout = _rollout(["<think>Own. So right.</think><answer>B</answer>", "<think>y</think><answer>A</answer>"], [1, 0])
    plans = plan_groups([1.0, 0.0], 2, 1.9, flat_only=False)     # |delta| 1.4: l_guide 2
    assert plans[0]["l_guide"] == 2 and wants_trace(plans, records, rollout, 2, HintTraces()) == []
    assert redo_groups(plans, records, [_uint8_frames()], rollout, 2, HintTraces())[0]["hint"] == \
        "Own. The answer is B."
