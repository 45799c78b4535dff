"""dataset.py: PyAV reading and writing, record validation, load_samples' skip rule, adapters."""

import json

import av
import numpy as np
import pytest

import dataset
from dataset import (VideoError, convert_seedbench_r1, convert_video_r1, format_question,
                     load_records, load_samples, option_letters, read_video, sample_indices,
                     target_size, write_records, write_video)


def marked_clip(t=16, h=112, w=112):
    """Frame i has a 14x14 white marker at column 6 * i, over a red square: the decoded marker
    position tells which frame was sampled."""
    frames = np.zeros((t, h, w, 3), np.uint8)
    frames[:, 40:84, 40:84] = (255, 0, 0)
    for i in range(t):
        frames[i, 0:14, 6 * i:6 * i + 14] = 255
    return frames


def marker_frame(frame):
    cols = np.nonzero(frame[2:12, :, 1].mean(0) > 128)[0]
    return int(round(cols.min() / 6))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "clip.mp4"
    write_video(path, marked_clip(), fps=8)
    return path


# -----------------------------------------------------------------------------
# reading

def test_round_trip_uniform_sampling(clip):
    v = read_video(clip, num_frames=8)
    assert v.shape == (8, 112, 112, 3) and v.dtype == np.uint8
    # centres of 8 equal segments of 16 frames: 1, 3, ..., 15
    assert [marker_frame(f) for f in v] == list(range(1, 16, 2))
    assert np.abs(v[:, 50:74, 50:74].astype(int) - (255, 0, 0)).max() <= 6  # colour survives
    v4 = read_video(clip, num_frames=4)
    assert [marker_frame(f) for f in v4] == [2, 6, 10, 14]
    v32 = read_video(clip, num_frames=32)  # more than the clip has: frames repeat in order
    assert [marker_frame(f) for f in v32] == [i // 2 for i in range(32)]


def test_fps_sampling(clip):
    # 16 frames at 8 fps = 2 s; 2 fps -> one frame every 4 -> 0, 4, 8, 12
    v = read_video(clip, num_frames=16, fps=2)
    assert [marker_frame(f) for f in v] == [0, 4, 8, 12]
    v = read_video(clip, num_frames=16, fps=8)
    assert [marker_frame(f) for f in v] == list(range(16))
    v = read_video(clip, num_frames=2, fps=8)  # capped at num_frames, spread uniformly
    assert [marker_frame(f) for f in v] == [4, 12]


def test_sample_indices_by_hand():
    assert sample_indices(10, 5) == [1, 3, 5, 7, 9]
    assert sample_indices(3, 6) == [0, 0, 1, 1, 2, 2]
    assert sample_indices(30, 100, fps=1, native_fps=10) == [0, 10, 20]
    assert sample_indices(30, 100, fps=3, native_fps=10) == [0, 3, 7, 10, 13, 17, 20, 23, 27]
    with pytest.raises(ValueError):
        sample_indices(10, 4, fps=2, native_fps=None)


def test_max_pixels_resize(tmp_path):
    frames = np.zeros((4, 224, 336, 3), np.uint8)
    frames[:, :, :168] = (0, 255, 0)  # left half green
    write_video(tmp_path / "wide.mp4", frames)
    v = read_video(tmp_path / "wide.mp4", num_frames=4, max_pixels=112 * 112)
    # beta = sqrt(224*336/12544) = 2.449 -> h = floor(3.27)*28 = 84, w = floor(4.90)*28 = 112
    assert v.shape == (4, 84, 112, 3)
    assert v[0, 40, 20, 1] > 240 and v[0, 40, 90, 1] < 15  # content scaled, not cropped
    v = read_video(tmp_path / "wide.mp4", num_frames=2, max_pixels=10**6)  # within budget: kept
    assert v.shape == (2, 224, 336, 3)


def test_target_size_properties():
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = int(rng.integers(20, 2000)), int(rng.integers(20, 2000))
        budget = int(rng.integers(28 * 28 * 4, 600 * 600))
        th, tw = target_size(h, w, budget, 28)
        assert th % 28 == 0 and tw % 28 == 0 and th * tw <= budget
        if min(h, w) >= 28 * 4 and max(h, w) / min(h, w) < 4:
            # aspect kept to within one 28 px cell on the shorter side
            assert abs(th / tw - h / w) <= (h / w) * 28 / min(th, tw) + 1e-9
    with pytest.raises(ValueError):
        target_size(100, 100, max_pixels=100)


def test_mpeg4_codec_round_trip(tmp_path):
    write_video(tmp_path / "m.mp4", marked_clip(), fps=8, codec="mpeg4")
    with av.open(str(tmp_path / "m.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "mpeg4"
    v = read_video(tmp_path / "m.mp4", num_frames=8)
    assert [marker_frame(f) for f in v] == list(range(1, 16, 2))
    assert np.abs(v[:, 50:74, 50:74].astype(int) - (255, 0, 0)).max() <= 12


def test_write_video_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="even H, W"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 16, 16, 3), np.float32))


def test_write_video_deterministic(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (8, 112, 112, 3), dtype=np.uint8)
    for name in ("a", "b", "c"):
        write_video(tmp_path / f"{name}.mp4", frames)
    data = {(tmp_path / f"{n}.mp4").read_bytes() for n in "abc"}
    assert len(data) == 1


@pytest.mark.parametrize("case,kind", [
    ("missing", "file not found"),
    ("empty", "empty file"),
    ("random", "not a readable video"),
    ("truncated", "truncated or corrupt"),
    ("text", "not a readable video"),      # named .mp4: the mp4 demuxer refuses it
    ("text.txt", "not a video file"),      # named .txt: ffmpeg's tty demuxer would "play" it
    ("directory", "is a directory, not a video file"),
])
def test_bad_videos_raise_video_error(tmp_path, clip, case, kind):
    path = tmp_path / (case if "." in case else f"{case}.mp4")
    if case == "empty":
        path.write_bytes(b"")
    elif case == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "truncated":
        data = clip.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif case.startswith("text"):
        path.write_text("just some text\n" * 50)
    elif case == "directory":
        path.mkdir()
    with pytest.raises(VideoError) as e:
        read_video(path)
    assert str(e.value).startswith(f"{path}: ") and e.value.kind == kind, str(e.value)
    assert isinstance(e.value, ValueError) and e.value.path == str(path)


# -----------------------------------------------------------------------------
# records

def rec(i, video="v.mp4", **kw):
    r = {"id": f"r{i}", "video": video, "question": "Which way?", "options": ["left", "right"],
         "answer": "B", "problem_type": "multiple_choice", "reasoning": "It goes right.",
         "meta": {"difficulty": 0.5}}
    r.update(kw)
    return r


def test_load_records_resolves_paths_and_defaults(tmp_path):
    lines = [json.dumps(rec(0, video="videos/a.mp4")) + "\n", "\n",
             json.dumps({k: v for k, v in rec(1, video="/abs/b.mp4").items()
                         if k not in ("reasoning", "meta")}) + "\n"]
    (tmp_path / "d.jsonl").write_text("".join(lines))
    rs = load_records(tmp_path / "d.jsonl")
    assert [r["id"] for r in rs] == ["r0", "r1"]
    assert rs[0]["video"] == str(tmp_path / "videos" / "a.mp4")
    assert rs[1]["video"] == "/abs/b.mp4" and rs[1]["reasoning"] == "" and rs[1]["meta"] == {}


@pytest.mark.parametrize("bad,msg", [
    ('{"id": "x", "video": ', "invalid JSON"),
    (json.dumps(rec(9, answer="C")), "answer 'C' is not an option letter A..B"),
    (json.dumps(rec(9, answer="b")), "is not an option letter"),
    (json.dumps(rec(9, problem_type="essay")), "problem_type 'essay' is not one of"),
    (json.dumps({"id": "x", "video": "v.mp4"}), "missing keys ['question', 'options', 'answer', "
                                                 "'problem_type']"),
    (json.dumps(rec(9, options=["only"])), "needs 2..26 options"),
    (json.dumps(rec(9, options="left,right")), "options must be a list"),
    (json.dumps(rec(0)), "duplicate id 'r0' (first on line 1)"),
    ("[1, 2]", "expected a JSON object"),
])
def test_malformed_lines_name_file_and_line(tmp_path, bad, msg):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(rec(0)) + "\n" + json.dumps(rec(1)) + "\n" + bad + "\n")
    with pytest.raises(ValueError) as e:
        load_records(path)
    assert str(e.value).startswith(f"{path}:3: ") and msg in str(e.value), str(e.value)


def test_numerical_and_free_form_records(tmp_path):
    rs = [rec(0, problem_type="numerical", options=[], answer="3.5"),
          rec(1, problem_type="free_form", options=[], answer="a cat")]
    write_records(tmp_path / "d.jsonl", rs)
    back = load_records(tmp_path / "d.jsonl")
    assert [r["answer"] for r in back] == ["3.5", "a cat"]
    assert format_question(back[0]) == "Which way?"


def test_write_records_round_trip_and_validation(tmp_path):
    rs = [rec(0, video="/x/a.mp4"), rec(1, video="/x/b.mp4", meta={"k": [1, 2]})]
    write_records(tmp_path / "sub" / "d.jsonl", rs)
    assert load_records(tmp_path / "sub" / "d.jsonl") == rs
    with pytest.raises(ValueError, match="record 1 .*answer 'Z'"):
        write_records(tmp_path / "e.jsonl", [rec(0), rec(1, answer="Z")])


def test_option_letters_and_format_question():
    assert option_letters(4) == ["A", "B", "C", "D"] and option_letters(26)[-1] == "Z"
    with pytest.raises(ValueError):
        option_letters(0)
    r = rec(0, options=["left", "right", "up"], answer="C")
    assert format_question(r) == "Which way?\nA. left\nB. right\nC. up"


def test_load_samples_reports_and_skips(tmp_path, clip):
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x01garbage" * 100)
    (tmp_path / "empty.mp4").write_bytes(b"")
    records = [rec(0, video=str(clip)), rec(1, video=str(tmp_path / "missing.mp4")),
               rec(2, video=str(tmp_path / "junk.mp4")), rec(3, video=str(clip)),
               rec(4, video=str(tmp_path / "empty.mp4"))]
    lines = []
    out = load_samples(records, num_frames=4, max_pixels=56 * 56, log=lines.append)
    assert [s["id"] for s in out] == ["r0", "r3"]
    assert out[0]["frames"].shape == (4, 56, 56, 3) and out[0]["question"] == "Which way?"
    assert len(lines) == 4
    assert lines[0].startswith("skip r1: ") and "missing.mp4: file not found" in lines[0]
    assert lines[1].startswith("skip r2: ") and "junk.mp4: not a readable video" in lines[1]
    assert lines[2].startswith("skip r4: ") and "empty file" in lines[2]
    assert lines[3] == ("skipped 3 of 5 records (empty file: 1, file not found: 1, "
                        "not a readable video: 1)")
    lines.clear()
    load_samples(records[:1], num_frames=2, log=lines.append)
    assert lines == ["skipped 0 of 1 records (none bad)"]


def test_load_samples_propagates_non_video_errors(monkeypatch):
    def boom(*a, **k):
        raise KeyError("bug")
    monkeypatch.setattr(dataset, "read_video", boom)
    with pytest.raises(KeyError):
        load_samples([rec(0)], num_frames=2, log=lambda s: None)


# -----------------------------------------------------------------------------
# Video-R1 adapter

VIDEO_R1 = [
    {"problem_id": 7, "problem": "What happens after the man opens the door?",
     "data_type": "video", "problem_type": "multiple choice",
     "options": ["A. He sits down", "B. He leaves", "C. He waves", "D. He runs"],
     "process": "<think>\nThe man opens the door, then walks out.\n</think>",
     "solution": "<answer>B</answer>", "path": "./LLaVA-Video/clip1.mp4",
     "data_source": "LLaVA-Video-178K/0_30_s"},
    {"problem_id": 8, "problem": "How many cups are on the table?", "data_type": "video",
     "problem_type": "numerical", "options": [], "process": "<think>Two cups.</think>",
     "solution": "<answer>2</answer>", "path": "NeXT/clip2.mp4", "data_source": "NeXT-QA"},
    {"problem_id": 9, "problem": "Read the sign.", "data_type": "image", "problem_type": "OCR",
     "solution": "<answer>STOP</answer>", "path": "img/sign.jpg", "data_source": "TextVQA"},
    {"problem_id": 10, "problem": "Describe the weather.", "data_type": "video",
     "problem_type": "free-form", "options": [], "solution": "<answer> It is raining. </answer>",
     "path": "w.mp4", "data_source": "X"},
    {"problem_id": 11, "problem": "How far does the ball go (m)?", "data_type": "video",
     "problem_type": "regression", "options": [], "solution": "<answer>12.5</answer>",
     "path": "r.mp4", "data_source": "Y"},
]


def test_convert_video_r1(tmp_path):
    (tmp_path / "vr1.json").write_text(json.dumps(VIDEO_R1))
    rs = convert_video_r1(tmp_path / "vr1.json", tmp_path / "root")
    assert rs[0] == {
        "id": "video_r1-7", "video": str(tmp_path / "root" / "LLaVA-Video" / "clip1.mp4"),
        "question": "What happens after the man opens the door?",
        "options": ["He sits down", "He leaves", "He waves", "He runs"], "answer": "B",
        "problem_type": "multiple_choice",
        "reasoning": "The man opens the door, then walks out.",
        "meta": {"data_type": "video", "data_source": "LLaVA-Video-178K/0_30_s", "problem_id": 7}}
    assert [r["problem_type"] for r in rs] == ["multiple_choice", "numerical", "ocr", "free_form",
                                               "regression"]
    assert [r["answer"] for r in rs] == ["B", "2", "STOP", "It is raining.", "12.5"]
    assert [r["options"] for r in rs[1:]] == [[]] * 4
    assert [r["reasoning"] for r in rs[1:]] == ["Two cups.", "", "", ""]
    assert rs[2]["video"] == str(tmp_path / "root" / "img" / "sign.jpg")
    # what the adapter writes, load_records reads back unchanged
    write_records(tmp_path / "out.jsonl", rs)
    assert load_records(tmp_path / "out.jsonl") == rs


@pytest.mark.parametrize("change,msg", [
    ({"problem_type": "essay"}, "item 0: problem_type 'essay' is not one of"),
    ({"solution": "<answer>E</answer>"}, "item 0: answer 'E' is not an option letter"),
    ({"options": ["A. x", "C. y"]}, "item 0: option 1 'C. y' should start with 'B'"),
    ({"path": None}, "item 0: missing keys ['path']; present keys"),
])
def test_convert_video_r1_errors(tmp_path, change, msg):
    item = dict(VIDEO_R1[0], **change)
    item = {k: v for k, v in item.items() if v is not None}
    (tmp_path / "vr1.json").write_text(json.dumps([item]))
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(")):
        convert_video_r1(tmp_path / "vr1.json", tmp_path)


def test_video_r1_cli(tmp_path):
    from data.video_r1.prepare import main
    (tmp_path / "vr1.json").write_text(json.dumps(VIDEO_R1))
    main(["--annotations", str(tmp_path / "vr1.json"), "--video_root", "/data/vr1",
          "--out", str(tmp_path / "o.jsonl")])
    rs = load_records(tmp_path / "o.jsonl")
    assert len(rs) == 5 and rs[1]["video"] == "/data/vr1/NeXT/clip2.mp4"


# -----------------------------------------------------------------------------
# SEED-Bench-R1 adapter

SB_TRAIN = [
    {"sample_id": 101, "question": "What is the next action to take?", "answer": "cut onion",
     "negative_answers": ["wash pan", "open fridge", "stir soup", "take knife", "close tap"],
     "task_goal": "make soup", "task_progress_metadata": [{"narration_text": "take onion"}],
     "video_source": "EpicKitchens", "video_basename": "P01_101.mp4",
     "current_observation_basename": "P01_101.png"},
    {"sample_id": 102, "question": "What is the next action to take?", "answer": "pour water",
     "negative_answers": ["a", "b", "c"], "task_progress_metadata": [],
     "video_source": "Ego4D", "video_basename": "e102.mp4",
     "current_observation_basename": "e102.png"},
]
SB_VAL = {"sample_id": "L2-5", "question": "Which action comes next?", "choice_a": "fold towel",
          "choice_b": "open door", "choice_c": "pick cup", "choice_d": "sit down",
          "golden_choice_idx": "C", "answer": "pick cup", "task_level": "L2",
          "task_progress_metadata": [{"narration_text": "walk"}], "video_source": "Ego4D",
          "video_basename": "v5.mp4", "current_observation_basename": "v5.png"}


def sb_file(tmp_path, rows, name="sb.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_convert_seedbench_training_rows(tmp_path):
    path = sb_file(tmp_path, SB_TRAIN)
    rs = convert_seedbench_r1(path, tmp_path / "sb", seed=0)
    r = rs[0]
    assert r["id"] == "seedbench_r1-101" and r["problem_type"] == "multiple_choice"
    assert r["question"] == "What is the next action to take?" and r["reasoning"] == ""
    assert r["video"] == str(tmp_path / "sb" / "videos" / "EpicKitchens" / "P01_101.mp4")
    assert r["meta"]["image"] == str(tmp_path / "sb" / "images" / "EpicKitchens" / "P01_101.png")
    assert r["meta"]["task_goal"] == "make soup" and "no_video" not in r["meta"]
    assert len(r["options"]) == 4 and len(set(r["options"])) == 4
    assert r["options"][option_letters(4).index(r["answer"])] == "cut onion"
    assert set(r["options"]) - {"cut onion"} <= set(SB_TRAIN[0]["negative_answers"])
    # a row without a clip (empty task_progress_metadata) uses the current observation image
    assert rs[1]["video"] == str(tmp_path / "sb" / "images" / "Ego4D" / "e102.png")
    assert rs[1]["meta"]["no_video"] is True
    assert sorted(rs[1]["options"]) == ["a", "b", "c", "pour water"]
    # the draw is deterministic per seed and changes with it
    assert convert_seedbench_r1(path, tmp_path / "sb", seed=0) == rs
    draws = {tuple(convert_seedbench_r1(path, tmp_path, seed=s)[0]["options"]) for s in range(8)}
    assert len(draws) > 1
    letters = {convert_seedbench_r1(path, tmp_path, seed=s)[0]["answer"] for s in range(16)}
    assert len(letters) >= 3  # the answer is shuffled, not always first


def test_convert_seedbench_validation_rows(tmp_path):
    rs = convert_seedbench_r1(sb_file(tmp_path, [SB_VAL]), "/data/sb")
    assert rs == [{
        "id": "seedbench_r1-L2-5", "video": "/data/sb/videos/Ego4D/v5.mp4",
        "question": "Which action comes next?",
        "options": ["fold towel", "open door", "pick cup", "sit down"], "answer": "C",
        "problem_type": "multiple_choice", "reasoning": "",
        "meta": {"source": "seedbench_r1", "sample_id": "L2-5", "video_source": "Ego4D",
                 "task_level": "L2", "task_progress_metadata": [{"narration_text": "walk"}],
                 "image": "/data/sb/images/Ego4D/v5.png"}}]


def test_seedbench_missing_keys_lists_missing_and_present(tmp_path):
    row = {k: v for k, v in SB_VAL.items() if k not in ("choice_d", "video_basename")}
    path = sb_file(tmp_path, [SB_TRAIN[0], row])
    with pytest.raises(ValueError) as e:
        convert_seedbench_r1(path, tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:2: missing keys ['video_basename', 'choice_d']; present keys [")
    assert "'choice_a'" in msg and "'golden_choice_idx'" in msg and "'sample_id'" in msg
    # a row in neither format names both sets of expected keys
    path = sb_file(tmp_path, [{"id": 1, "text": "hi"}], "other.jsonl")
    with pytest.raises(ValueError) as e:
        convert_seedbench_r1(path, tmp_path)
    assert str(e.value) == (f"{path}:1: missing keys ['sample_id', 'question', 'video_source', "
                            "'video_basename', 'answer', 'negative_answers', 'choice_a', "
                            "'choice_b', 'choice_c', 'choice_d', 'golden_choice_idx']; "
                            "present keys ['id', 'text']")


def test_seedbench_bad_lines(tmp_path):
    path = tmp_path / "sb.jsonl"
    path.write_text(json.dumps(SB_VAL) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"sb.jsonl:2: invalid JSON"):
        convert_seedbench_r1(path, tmp_path)
    path.write_text(json.dumps(dict(SB_VAL, golden_choice_idx="E")) + "\n")
    with pytest.raises(ValueError, match=r"sb.jsonl:1: answer 'E' is not an option letter"):
        convert_seedbench_r1(path, tmp_path)
    path.write_text(json.dumps(dict(SB_TRAIN[0], negative_answers=["x"])) + "\n")
    with pytest.raises(ValueError, match=r"sb.jsonl:1: negative_answers must be a list of >= 3"):
        convert_seedbench_r1(path, tmp_path)


def test_seedbench_cli(tmp_path):
    from data.seedbench_r1.prepare import main
    path = sb_file(tmp_path, SB_TRAIN + [SB_VAL])
    main(["--annotations", str(path), "--video_root", str(tmp_path), "--out",
          str(tmp_path / "o.jsonl"), "--seed", "3"])
    assert load_records(tmp_path / "o.jsonl") == convert_seedbench_r1(path, tmp_path, seed=3)
