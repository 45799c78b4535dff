"""SEED-Bench-R1 as the paper feeds it: the video, then the current-observation image, then the text.

A tiny row with both is made here (video with PyAV, image with PIL), converted, loaded, encoded and
rolled out on a tiny random Qwen2.5-VL."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import model as M
from machinery.dataset import convert_seedbench_r1, load_records, load_samples, write_records
from machinery.logprobs import completion_logps
from rollout import (build_messages, concat_rollouts, drop_long_prompts, encode_prompts, generate_rollout,
                     prompt_length)
from machinery.video import write_video

ROW = {"sample_id": "s1", "question": "What comes next?", "choice_a": "cut", "choice_b": "wash",
       "choice_c": "stir", "choice_d": "open", "golden_choice_idx": "B", "video_source": "Ego4D",
       "video_basename": "v1.mp4", "current_observation_basename": "o1.png",
       "task_progress_metadata": [{"narration_text": "take knife"}]}


@pytest.fixture(scope="module")
def seedbench(tmp_path_factory):
    root = tmp_path_factory.mktemp("sb")
    (root / "videos" / "Ego4D").mkdir(parents=True)
    (root / "images" / "Ego4D").mkdir(parents=True)
    write_video(root / "videos" / "Ego4D" / "v1.mp4", np.full((4, 56, 84, 3), 40, np.uint8))
    Image.fromarray(np.full((120, 200, 3), (200, 30, 60), np.uint8)).save(root / "images" / "Ego4D" / "o1.png")
    rows = [ROW, dict(ROW, sample_id="s2", current_observation_basename="missing.png")]
    (root / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_records(root / "records.jsonl", convert_seedbench_r1(root / "val.jsonl", root))
    return root


def test_image_read_and_resized_like_a_frame(seedbench):
    records = load_records(seedbench / "records.jsonl")
    assert records[0]["meta"]["image"] == str(seedbench / "images" / "Ego4D" / "o1.png")
    lines = []
    samples = load_samples(records, num_frames=2, max_pixels=56 * 56, log=lines.append, skipped=(counts := {}))
    assert [s["id"] for s in samples] == ["seedbench_r1-s1"]
    h, w, _ = samples[0]["image"].shape
    assert h * w <= 56 * 56 and h % 28 == 0 and w % 28 == 0 and w > h        # 200x120: aspect kept
    assert np.abs(samples[0]["image"].astype(int) - (200, 30, 60)).max() <= 8
    # the missing image: skipped, named by file:line and its path, counted by reason
    assert lines[0].startswith(f"skip {seedbench}/records.jsonl:2 (seedbench_r1-s2): ")
    assert "missing.png: file not found" in lines[0]
    assert counts == {"file not found": 1}
    with pytest.raises(SystemExit, match=r"records.jsonl: no usable records: all 1 skipped \(file not found: 1\)"):
        load_samples(records[1:], num_frames=2, max_pixels=56 * 56, log=lambda s: None)


def test_messages_and_rollout_carry_video_image_text(seedbench, tmp_path):
    sample = load_samples(load_records(seedbench / "records.jsonl")[:1], num_frames=2, max_pixels=56 * 56,
                          log=lambda s: None)[0]
    user = build_messages(sample)[1]["content"]
    assert [part["type"] for part in user] == ["video", "image", "text"]
    policy, processor = M.load_policy(M.tiny_qwen25vl(tmp_path / "tiny", seed=0))
    batch = encode_prompts(processor, [sample], [sample["frames"]])
    n_image_tokens = int(batch["image_grid_thw"].prod()) // 4                      # merge 2x2
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (batch["input_ids"] == image_pad).sum().item() == n_image_tokens > 0
    ids = batch["input_ids"][0].tolist()
    video_pad = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert ids.index(video_pad) < ids.index(image_pad)                             # video, then image
    torch.manual_seed(0)
    rollout = generate_rollout(policy, processor, [sample, sample], [sample["frames"]] * 2, group_size=2,
                               max_new_tokens=3)
    assert rollout.visual["image_grid_thw"].shape[0] == 4
    picked = concat_rollouts([rollout.select([3]), rollout.select([0])])
    assert picked.visual["pixel_values"].shape[0] == 2 * n_image_tokens * 4
    logps = completion_logps(policy, picked.logp_batch())
    assert torch.isfinite(logps).all()

    # a prompt that does not fit the model's positions with max_new_tokens is skipped by file:line, counted
    n = batch["input_ids"].shape[1]
    assert prompt_length(processor, sample) == n
    no_image = {k: v for k, v in sample.items() if k != "image"}
    assert prompt_length(processor, no_image) == encode_prompts(processor, [no_image], [sample["frames"]])["input_ids"].shape[1]
    other = dict(sample, id="other", where="x.jsonl:7", question="What comes next? " * 20)
    lines, counts = [], {}
    kept = drop_long_prompts(processor, [sample, other], n + 3, 3, log=lines.append, skipped=counts)
    assert [s["id"] for s in kept] == [sample["id"]] and counts == {"prompt too long": 1}
    assert lines[0].startswith("skip x.jsonl:7 (other): prompt of ") and "exceeds the model's" in lines[0]
    with pytest.raises(SystemExit, match="x.jsonl: no usable records: every prompt"):
        drop_long_prompts(processor, [other], n + 3, 3, log=lambda s: None)
