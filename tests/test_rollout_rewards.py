"""Rewards, masks and batch plumbing of rollout.py, and the configurator (no model needed)."""
import pytest
import torch

from configurator import configure
from rollout import (accuracy_reward, completion_mask_until, extract_answer, format_reward, option_letter,
                     repeat_batch, select_visual)

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
    assert accuracy_reward("<answer>red ball</answer>", free) == 1.0
    assert accuracy_reward("<answer>blue ball</answer>", free) == 0.0
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
    g = {"lr": 1e-3, "name": "a", "steps": 10, "flag": False, "opt": None}
    configure(g, [str(preset), "--steps=20", "--flag=True", "--opt=abc"])
    assert (g["lr"], g["name"], g["steps"], g["flag"], g["opt"]) == (0.5, "x", 20, True, "abc")
    with pytest.raises(SystemExit, match="unknown setting 'stpes'"):
        configure(dict(g), ["--stpes=3"])
    with pytest.raises(SystemExit, match="'steps' expects int"):
        configure(dict(g), ["--steps=fast"])
    with pytest.raises(SystemExit, match="cannot read preset"):
        configure(dict(g), [str(tmp_path / "missing.py")])
