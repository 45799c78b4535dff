"""Rewards, masks and batch plumbing of rollout.py, and the configurator (no model needed)."""
import pytest
import torch

from machinery.configurator import configure
from rewards import (accuracy_reward, edit_distance, extract_answer, format_reward, lcs_length, option_letter,
                     rouge_reward, wer_reward)
from rollout import STILL_SECONDS, completion_mask_until, repeat_batch, seconds_per_patch, select_visual, whole_seconds

MC = {"problem_type": "multiple_choice", "answer": "B", "options": ["l", "r", "u", "d"]}


@pytest.mark.parametrize("text,expected", [
    ("<think>it moves right</think><answer>B</answer>", 1.0),
    ("<think>x</think> <answer>(B)</answer>", 1.0),
    ("<think>x</think><answer>B. right</answer>", 1.0),
    ("<think>x</think><answer>C</answer>", 0.0),
    ("<think>x</think><answer>b</answer>", 0.0),          # lower case is not an option letter
    ("<think>x</think><answer>Because</answer>", 0.0),    # a word starting with B is not 'B'
    ("B", 0.0),                                          # no answer tag
    ("<answer>A</answer> then <answer>B</answer>", 1.0),  # the last answer counts
])
def test_multiple_choice_accuracy(text, expected):
    assert accuracy_reward(text, MC) == expected


def test_format_reward_requires_think_then_answer():
    assert format_reward("<think>a</think><answer>B</answer>") == 1.0
    assert format_reward("  <think>a\nb</think>\n<answer>B</answer>\n") == 1.0
    assert format_reward("<answer>B</answer><think>a</think>") == 0.0
    assert format_reward("<think></think><answer>B</answer>") == 0.0
    assert format_reward("<think>a</think><answer>B</answer> extra") == 0.0


def test_numeric_free_form_and_regression_rewards():
    num = {"problem_type": "numerical", "answer": "3.5"}
    assert accuracy_reward("<answer>3.50</answer>", num) == 1.0
    assert accuracy_reward("<answer>about 3.51</answer>", num) == 0.0
    assert accuracy_reward("<answer>none</answer>", num) == 0.0
    free = {"problem_type": "free_form", "answer": "The red ball."}
    assert accuracy_reward("<answer>the red ball</answer>", free) == 1.0
    # "red ball" vs "the red ball": ROUGE-1 2*2/(2+3), ROUGE-2 2*1/(1+2), ROUGE-L 2*2/(2+3)
    assert accuracy_reward("<answer>red ball</answer>", free) == pytest.approx((0.8 + 2 / 3 + 0.8) / 3)
    assert accuracy_reward("<answer>green cube</answer>", free) == 0.0
    ocr = {"problem_type": "ocr", "answer": "STOP here"}
    assert accuracy_reward("<answer>stop here.</answer>", ocr) == 1.0
    assert accuracy_reward("<answer>stop</answer>", ocr) == 0.5                  # one deletion of 2 words
    reg = {"problem_type": "regression", "answer": "10"}
    assert accuracy_reward("<answer>8</answer>", reg) == pytest.approx(0.8)
    assert accuracy_reward("<answer>100</answer>", reg) == 0.0


def test_helpers():
    assert extract_answer("no tags") is None
    assert option_letter("D") == "D" and option_letter("Dog") is None


def test_completion_mask_stops_after_first_end_token():
    end = 7
    completion = torch.tensor([[1, 2, 7, 5, 7], [1, 1, 1, 1, 1], [7, 3, 3, 3, 3]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert torch.equal(completion_mask_until(completion, end), expected)


def test_repeat_batch_repeats_each_video_with_its_prompt():
    grid = torch.tensor([[1, 2, 2], [2, 2, 2]])                 # 4 and 8 patches
    pix = torch.arange(12).float().unsqueeze(1)                 # patch i has value i
    batch = {"input_ids": torch.tensor([[1, 2], [3, 4]]), "pixel_values_videos": pix, "video_grid_thw": grid}
    out = repeat_batch(batch, 3)
    assert out["input_ids"].tolist() == [[1, 2]] * 3 + [[3, 4]] * 3
    assert out["video_grid_thw"].tolist() == [[1, 2, 2]] * 3 + [[2, 2, 2]] * 3
    expected = list(range(4)) * 3 + list(range(4, 12)) * 3
    assert out["pixel_values_videos"].squeeze(1).tolist() == expected
    picked = select_visual({"pixel_values_videos": out["pixel_values_videos"],
                            "video_grid_thw": out["video_grid_thw"]}, torch.tensor([0, 4]))
    assert picked["pixel_values_videos"].squeeze(1).tolist() == list(range(4)) + list(range(4, 12))


def test_configurator_overrides_presets_and_rejects_unknown_keys(tmp_path):
    preset = tmp_path / "p.py"
    preset.write_text("lr = 0.5\nname = 'x'\n")
    g = {"lr": 1e-3, "name": "a", "steps": 10, "flag": False, "opt": None, "__annotations__": {"opt": str | None}}
    configure(g, [str(preset), "--steps=20", "--flag=True", "--opt=abc"])
    assert (g["lr"], g["name"], g["steps"], g["flag"], g["opt"]) == (0.5, "x", 20, True, "abc")
    with pytest.raises(SystemExit, match="unknown setting 'stpes'"):
        configure(dict(g), ["--stpes=3"])
    with pytest.raises(SystemExit, match="'steps' expects int"):
        configure(dict(g), ["--steps=fast"])
    with pytest.raises(SystemExit, match="cannot read preset"):
        configure(dict(g), [str(tmp_path / "missing.py")])


def test_rouge_by_hand():
    # pred "the cat sat on the mat", ref "the cat is on the mat" (6 words each):
    # ROUGE-1: the x2, cat, on, mat = 5 matches -> 2*5/12; ROUGE-2: "the cat", "on the", "the mat" = 3 of 5
    # bigrams each -> 2*3/10; ROUGE-L: LCS "the cat on the mat" = 5 -> 2*5/12
    assert rouge_reward("The cat sat on the mat.", "the cat is on the mat") == pytest.approx((5 / 6 + 0.6 + 5 / 6) / 3)
    assert rouge_reward("", "a b") == 0.0 and rouge_reward("x y", "a b") == 0.0
    # repeated words are clipped: pred "a a a", ref "a b": 1 unigram match -> 2*1/(3+2); no bigram; LCS 1
    assert rouge_reward("a a a", "a b") == pytest.approx((0.4 + 0.0 + 0.4) / 3)


def test_wer_by_hand():
    assert wer_reward("hello word", "Hello world foo") == pytest.approx(1 - 2 / 3)   # 1 substitution, 1 deletion
    assert wer_reward("x y z w", "a b") == 0.0                                        # WER 2 floored at 0
    assert wer_reward("a b c", "a b c") == 1.0
    assert wer_reward("", "") == 1.0 and wer_reward("a", "") == 0.0


def brute_lcs(a, b):
    """Longest common subsequence by trying every subsequence of a (independent of lcs_length)."""
    from itertools import combinations
    def is_subsequence(s, t):
        it = iter(t)
        return all(x in it for x in s)
    return max(k for k in range(len(a) + 1) for s in combinations(a, k) if is_subsequence(s, b))


def brute_edit(a, b):
    """Levenshtein distance by plain recursion (exponential, fine for 5 tokens)."""
    if not a or not b:
        return len(a) + len(b)
    return min(brute_edit(a[1:], b) + 1, brute_edit(a, b[1:]) + 1, brute_edit(a[1:], b[1:]) + (a[0] != b[0]))


def test_lcs_and_edit_distance_against_brute_force():
    import random
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 5))]
        b = [rng.choice("abc") for _ in range(rng.randint(0, 5))]
        assert lcs_length(a, b) == brute_lcs(a, b), (a, b)
        assert edit_distance(a, b) == brute_edit(a, b), (a, b)


def test_seconds_per_patch_by_hand():
    assert seconds_per_patch([0.0, 0.25, 0.5, 0.75, 1.0, 1.25]) == 0.5  # 4 fps, patches of 2 frames
    assert seconds_per_patch([0.0, 0.0, 0.1, 0.1, 0.2, 0.2]) == pytest.approx(0.1)  # each frame twice
    assert seconds_per_patch([0.08, 0.48, 1.0, 1.08, 2.0], 2) == pytest.approx(0.96)  # starts 0.08, 1.0, 2.0
    assert seconds_per_patch([0.0, 0.5, 1.0, 1.5], 1) == 0.5
    assert seconds_per_patch([0.0] * 8) == seconds_per_patch([0.3]) == STILL_SECONDS


def test_whole_seconds_for_old_transformers():
    with pytest.warns(UserWarning, match="whole seconds"):
        assert whole_seconds([0.5, 0.9999, 1.4, 2.6]) == [1.0, 1.0, 1.0, 3.0]
