"""video.py: PyAV reading (sampling, resizing, bad files) and writing."""

import av
import numpy as np
import pytest

from video import VideoError, read_video, sample_indices, target_size, write_video


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
