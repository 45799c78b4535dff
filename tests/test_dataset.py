"""dataset.py: record validation, load_samples' skip rule, adapters."""

import json

import numpy as np
import pytest

from machinery import dataset
from machinery.dataset import (convert_seedbench_r1, convert_video_r1, format_question, load_records,
                     load_samples, option_letters, read_records_or_exit, write_records)
from machinery.video import write_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "clip.mp4"
    write_video(path, np.zeros((4, 56, 56, 3), np.uint8), fps=8)
    return path


# -----------------------------------------------------------------------------
# records

def rec(i, video="v.mp4", **kw):
    r = {"id": f"r{i}", "video": video, "question": "Which way?", "options": ["left", "right"],
         "answer": "B", "problem_type": "multiple_choice", "reasoning": "It goes right.",
         "meta": {"difficulty": 0.5}}
    r.update(kw)
    return r


def stored(records):
    """Records without the "where" (file:line) that load_records adds for messages."""
    return [{k: v for k, v in r.items() if k != "where"} for r in records]


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
    (json.dumps(rec(9, problem_type="numerical", options=[], answer="three")),
     "numerical answer 'three' is not a number"),
    (json.dumps(rec(9, problem_type="regression", options=[], answer="nan")), "is not a number"),
    (json.dumps(rec(9, problem_type="free_form", options=[], answer=" ")), "free_form answer is empty"),
    (json.dumps(rec(9, meta={"image": 3})), "meta.image must be a path"),
])
def test_malformed_lines_name_file_and_line(tmp_path, bad, msg):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(rec(0)) + "\n" + json.dumps(rec(1)) + "\n" + bad + "\n")
    with pytest.raises(ValueError) as e:
        load_records(path)
    assert str(e.value).startswith(f"{path}:3: ") and msg in str(e.value), str(e.value)


def test_non_utf8_line_and_empty_split(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(rec(0)).encode() + b"\n" + b'{"id": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=rf"{path}:2: not UTF-8 text \(byte 0xe9 at column 12\)"):
        load_records(path)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SystemExit, match=r"empty.jsonl: no records \(an empty split\)"):
        read_records_or_exit(tmp_path / "empty.jsonl")


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
    assert stored(load_records(tmp_path / "sub" / "d.jsonl")) == rs
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
    assert stored(load_records(tmp_path / "out.jsonl")) == rs


@pytest.mark.parametrize("change,msg", [
    ({"problem_type": "essay"}, "item 0: problem_type 'essay' is not one of"),
    ({"solution": "<answer>E</answer>"}, "item 0: answer 'E' is not an option letter"),
    ({"options": ["A. x", "C. y"]}, "item 0: option 1 'C. y' should start with 'B'"),
    ({"path": None}, "item 0: missing keys ['path']; present keys"),
    ({"problem": None}, "item 0: problem must be a non-empty string, got None"),
    ({"solution": 3}, "item 0: solution must be a non-empty string, got 3"),
    ({"options": "A. x B. y"}, "item 0: options must be a list of strings, got 'A. x B. y'"),
    ({"problem_type": "numerical", "solution": "<answer>many</answer>"},
     "item 0: numerical answer 'many' is not a number"),
])
def test_convert_video_r1_errors(tmp_path, change, msg):
    item = dict(VIDEO_R1[0], **change)
    item = {k: v for k, v in item.items() if v is not None or k == "problem"}
    (tmp_path / "vr1.json").write_text(json.dumps([item]))
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(")):
        convert_video_r1(tmp_path / "vr1.json", tmp_path)


def test_video_r1_bad_items_skipped_by_the_cli(tmp_path, capsys):
    from data.video_r1.prepare import main
    items = [VIDEO_R1[0], dict(VIDEO_R1[1], problem=None), dict(VIDEO_R1[2], solution=7),
             dict(VIDEO_R1[0], problem_id=8, options="A. x\nB. y"), "not an item"]
    (tmp_path / "vr1.json").write_text(json.dumps(items))
    main(["--annotations", str(tmp_path / "vr1.json"), "--video_root", str(tmp_path), "--out", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    for i in (1, 2, 3, 4):
        assert f"skipped {tmp_path}/vr1.json: item {i}: " in err
    assert f"{tmp_path}/vr1.json: skipped 4 of 5 items" in err
    assert [r["id"] for r in load_records(tmp_path / "o.jsonl")] == ["video_r1-7"]
    (tmp_path / "latin1.json").write_bytes('[{"problem": "caf\xe9"}]'.encode("latin-1"))
    with pytest.raises(SystemExit, match=r"cannot convert: .*latin1.json: not UTF-8 text \(byte 0xe9 at offset 17\)"):
        main(["--annotations", str(tmp_path / "latin1.json"), "--video_root", str(tmp_path), "--out", str(tmp_path / "x.jsonl")])
    (tmp_path / "bad.json").write_text(json.dumps([{"problem": None}]))
    with pytest.raises(SystemExit, match=r"bad.json: no usable item \(1 skipped\)"):
        main(["--annotations", str(tmp_path / "bad.json"), "--video_root", str(tmp_path), "--out", str(tmp_path / "x.jsonl")])


def test_video_r1_cli(tmp_path):
    from data.video_r1.prepare import main
    (tmp_path / "vr1.json").write_text(json.dumps(VIDEO_R1))
    (tmp_path / "vr1").mkdir()
    main(["--annotations", str(tmp_path / "vr1.json"), "--video_root", str(tmp_path / "vr1"),
          "--out", str(tmp_path / "o.jsonl")])
    rs = load_records(tmp_path / "o.jsonl")
    assert len(rs) == 5 and rs[1]["video"] == str(tmp_path / "vr1" / "NeXT" / "clip2.mp4")


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


def test_seedbench_bad_rows_skipped_with_file_and_line(tmp_path):
    rows = [SB_VAL, dict(SB_VAL, sample_id="n1", video_source=None), dict(SB_VAL, sample_id="n2", question=5),
            dict(SB_VAL, sample_id="n3", current_observation_basename=["a.png"])]
    skipped = []
    records = convert_seedbench_r1(sb_file(tmp_path, rows), tmp_path, skipped=skipped)
    assert [r["id"] for r in records] == ["seedbench_r1-L2-5"]
    assert skipped == [f"{tmp_path}/sb.jsonl:2: video_source must be a non-empty string, got None",
                       f"{tmp_path}/sb.jsonl:3: question must be a non-empty string, got 5",
                       f"{tmp_path}/sb.jsonl:4: current_observation_basename must be a string, got ['a.png']"]


def test_seedbench_cli(tmp_path):
    from data.seedbench_r1.prepare import main
    path = sb_file(tmp_path, SB_TRAIN + [SB_VAL])
    main(["--annotations", str(path), "--video_root", str(tmp_path), "--out",
          str(tmp_path / "o.jsonl"), "--seed", "3"])
    assert stored(load_records(tmp_path / "o.jsonl")) == convert_seedbench_r1(path, tmp_path, seed=3)
