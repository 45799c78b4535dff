"""video.py: PyAV reading (sampling, resizing, bad files) and writing."""

from fractions import Fraction

import av
import numpy as np
import pytest

from machinery import video
from machinery.video import VideoError, read_video, sample_times, target_size, write_video


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


def write_clip(path, times_ms=None, n=16, rate=8, codec="libx264", fmt=None, rotation=0, sar=None,
               gop=12, options=None, h=64, w=160):
    """Frame i shows i in binary (10 blocks of 16 px, white = 1); pts from times_ms (a ms time
    base) or i / rate. Returns the path."""
    custom_times = times_ms is not None
    times_ms = times_ms or [round(1000 * i / rate) for i in range(n)]
    with av.open(str(path), "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream(codec, rate=1000 if custom_times else rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"g": str(gop), "threads": "1"}
        stream.thread_count = 1
        if rotation:
            stream.set_display_rotation(rotation)
        if sar:
            stream.codec_context.sample_aspect_ratio = sar
        for i, t in enumerate(times_ms):
            img = np.zeros((h, w, 3), np.uint8)
            img[h // 2:, : w // 2] = (255, 0, 0)
            for bit in range(10):
                img[:16, 16 * bit:16 * bit + 16] = 255 * (i >> bit & 1)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_number(img):
    """The number write_clip drew, read back from a (resized) frame."""
    bw = img.shape[1] / 10
    return sum(1 << bit for bit in range(10)
               if img[3:10, int(bw * bit + bw / 4):int(bw * bit + 3 * bw / 4), 1].mean() > 128)


# -----------------------------------------------------------------------------
# reading

def test_round_trip_uniform_sampling(clip):
    v, times = read_video(clip, num_frames=8)
    assert v.shape == (8, 112, 112, 3) and v.dtype == np.uint8
    # centres of 8 equal segments of 2 s at 8 fps: 0.125, 0.375, ... -> frames 1, 3, ..., 15
    assert [marker_frame(f) for f in v] == list(range(1, 16, 2))
    assert times.tolist() == [i / 8 for i in range(1, 16, 2)]
    assert np.abs(v[:, 50:74, 50:74].astype(int) - (255, 0, 0)).max() <= 6  # colour survives
    v4, _ = read_video(clip, num_frames=4)
    assert [marker_frame(f) for f in v4] == [2, 6, 10, 14]
    v32, times = read_video(clip, num_frames=32)  # more than the clip has: frames repeat in order
    assert [marker_frame(f) for f in v32] == [i // 2 for i in range(32)]
    assert times.tolist() == [i // 2 / 8 for i in range(32)]


def test_fps_sampling(clip):
    # 16 frames at 8 fps = 2 s; 2 fps -> one frame every 0.5 s -> 0, 4, 8, 12
    v, times = read_video(clip, num_frames=16, fps=2)
    assert [marker_frame(f) for f in v] == [0, 4, 8, 12] and times.tolist() == [0, 0.5, 1, 1.5]
    v, _ = read_video(clip, num_frames=16, fps=8)
    assert [marker_frame(f) for f in v] == list(range(16))
    v, times = read_video(clip, num_frames=64, fps=32)  # faster than the clip: each frame once
    assert [marker_frame(f) for f in v] == list(range(16)) and times.tolist() == [i / 8 for i in range(16)]
    v, _ = read_video(clip, num_frames=2, fps=8)  # capped at num_frames, spread uniformly
    assert [marker_frame(f) for f in v] == [4, 12]


def test_sample_times_by_hand():
    assert sample_times(0.0, 10.0, 5) == [1, 3, 5, 7, 9]
    assert sample_times(1.0, 4.0, 100, fps=1) == [1, 2, 3]
    assert sample_times(0.0, 3.0, 100, fps=3) == [k / 3 for k in range(9)]
    assert sample_times(0.0, 3.0, 3, fps=3) == [1 / 3, 4 / 3, 7 / 3]  # 9 thinned to 3
    with pytest.raises(ValueError):
        sample_times(0.0, 1.0, 4, fps=0)


# bursts of frames with gaps: the average rate (10 frames in 1.64 s) puts frames in the wrong places
VFR_MS = [0, 40, 80, 400, 440, 480, 1000, 1040, 1080, 1600]


@pytest.mark.parametrize("ext,codec", [("mkv", "libx264"), ("mp4", "libx264"), ("webm", "libvpx-vp9")])
def test_variable_frame_rate_by_timestamps(tmp_path, ext, codec):
    path = write_clip(tmp_path / f"vfr.{ext}", VFR_MS, codec=codec, gop=4)
    v, times = read_video(path, num_frames=4)
    # the clip ends at 1.64 s; segment centres 0.205, 0.615, 1.025, 1.435 s: the frames on screen
    # then started at 0.08, 0.48, 1.0, 1.08 s (by index: 2, 5, 6, 8; the average rate says 1, 3, 6, 8)
    assert [frame_number(f) for f in v] == [2, 5, 6, 8]
    assert times == pytest.approx([0.08, 0.48, 1.0, 1.08], abs=1e-6)
    v, times = read_video(path, num_frames=16, fps=2)  # 0, 0.5, 1.0, 1.5 s
    assert [frame_number(f) for f in v] == [0, 5, 6, 8]
    assert times == pytest.approx([0.0, 0.48, 1.0, 1.08], abs=1e-6)


def test_raw_stream_timed_by_its_codec_rate(tmp_path, monkeypatch):
    path = write_clip(tmp_path / "raw.h264", n=20, rate=10, fmt="h264")  # 2 s, no timestamps
    monkeypatch.setattr(video, "_warned_linear", False)
    with pytest.warns(UserWarning, match="raw.h264: cannot seek"):
        v, times = read_video(path, num_frames=4)
    assert [frame_number(f) for f in v] == [2, 7, 12, 17]
    assert times == pytest.approx([0.2, 0.7, 1.2, 1.7])


def test_rotation_and_pixel_aspect(tmp_path):
    # write_clip's red block sits in the lower-left quarter of the 64 x 160 frame
    v, _ = read_video(write_clip(tmp_path / "ccw.mp4", n=2, rotation=90), 1, max_pixels=10**6)
    assert v.shape == (1, 168, 56, 3)  # a quarter turn counter-clockwise: lower-left -> lower-right
    assert v[0, -10, -10, 0] > 200 and v[0, -10, 24, 0] < 50 and v[0, 10, -10, 0] < 50
    v, _ = read_video(write_clip(tmp_path / "cw.mkv", n=2, rotation=-90), 1, max_pixels=10**6)
    assert v.shape == (1, 168, 56, 3)  # clockwise: lower-left -> upper-left
    assert v[0, 10, 10, 0] > 200 and v[0, -10, 10, 0] < 50
    v, _ = read_video(write_clip(tmp_path / "sar.mp4", n=2, sar=Fraction(2, 1)), 1, max_pixels=10**6)
    assert v.shape == (1, 56, 308, 3)  # pixels twice as wide as high: 64 x 320 on screen
    assert v[0, -10, 150, 0] > 200 and v[0, -10, 170, 0] < 50


def test_seeking_reads_the_frames_of_a_full_decode(tmp_path, monkeypatch):
    path = write_clip(tmp_path / "long.mp4", n=400, rate=25, gop=25)  # 16 s, a keyframe every 1 s
    with av.open(str(path)) as c:  # reference: every frame, with its time, in one pass
        every = [(f.time, f.reformat(width=168, height=56, format="rgb24", interpolation="AREA",
                                     threads=1).to_ndarray()) for f in c.decode(video=0)]
    starts = np.array([t for t, _ in every])
    decoded = []
    real = video._decoded
    monkeypatch.setattr(video, "_decoded", lambda *a, **k: (decoded.append(f) or f for f in real(*a, **k)))
    counts = []
    for num_frames, fps in ((16, None), (5, None), (16, 0.25)):
        decoded.clear()
        v, times = read_video(path, num_frames=num_frames, fps=fps)
        targets = sample_times(0.0, 16.0, num_frames, fps)
        want = np.searchsorted(starts, np.array(targets) + 1e-6, side="right") - 1
        assert [frame_number(f) for f in v] == want.tolist()
        assert np.array_equal(v, np.stack([every[i][1] for i in want]))
        assert times.tolist() == starts[want].tolist()
        counts.append(len(decoded))
    # targets 1 s apart: decoded on; 3.2 s apart: a seek and up to 1 s of frames each; 4 s apart,
    # on keyframes: a seek and a frame or two each
    assert counts[0] > 350 and counts[1] < 100 and counts[2] < 30, counts


def test_audio_longer_than_the_video_is_not_truncation(tmp_path):
    path = tmp_path / "audio_longer.mkv"  # 2 s of video, 4 s of audio: the container says 4 s
    with av.open(str(path), "w") as container:
        video_stream = container.add_stream("libx264", rate=10)
        video_stream.width, video_stream.height, video_stream.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        for i in range(20):
            image = np.full((48, 64, 3), 10 * i, np.uint8)
            for packet in video_stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video_stream.encode():
            container.mux(packet)
        for k in range(4 * 16000 // 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, 1024 * k
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    _, times = read_video(path, num_frames=4)
    assert times == pytest.approx([0.2, 0.7, 1.2, 1.7])


def test_damage_inside_an_mp4_costs_frames_not_the_clip(tmp_path):
    path = tmp_path / "noisy.mp4"
    noise = np.random.default_rng(0).integers(0, 256, (30, 64, 160, 3), dtype=np.uint8)
    write_video(path, noise, fps=10)  # noise: the packets (mdat) fill nearly all of the file
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2048] = bytes(2048)
    (tmp_path / "damaged.mp4").write_bytes(bytes(data))
    v, times = read_video(tmp_path / "damaged.mp4", num_frames=6, max_pixels=10**6)
    assert v.shape == (6, 56, 168, 3) and times.tolist() == [0.2, 0.7, 1.2, 1.7, 2.2, 2.7]


@pytest.mark.parametrize("ext,codec,options", [
    ("mkv", "libx264", None), ("webm", "libvpx-vp9", None),
    ("mp4", "libx264", {"movflags": "frag_keyframe+empty_moov"})])
def test_truncated_containers_raise(tmp_path, ext, codec, options):
    path = write_clip(tmp_path / f"whole.{ext}", n=40, rate=10, codec=codec, gop=5, options=options)
    v, times = read_video(path, num_frames=4)
    assert [frame_number(f) for f in v] == [5, 15, 25, 35]
    data = path.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[:len(data) * 6 // 10])
    with pytest.raises(VideoError, match="truncated or corrupt"):
        read_video(cut, num_frames=4)


def test_max_pixels_resize(tmp_path):
    frames = np.zeros((4, 224, 336, 3), np.uint8)
    frames[:, :, :168] = (0, 255, 0)  # left half green
    write_video(tmp_path / "wide.mp4", frames)
    v, _ = read_video(tmp_path / "wide.mp4", num_frames=4, max_pixels=112 * 112)
    # beta = sqrt(224*336/12544) = 2.449 -> h = floor(3.27)*28 = 84, w = floor(4.90)*28 = 112
    assert v.shape == (4, 84, 112, 3)
    assert v[0, 40, 20, 1] > 240 and v[0, 40, 90, 1] < 15  # content scaled, not cropped
    v, _ = read_video(tmp_path / "wide.mp4", num_frames=2, max_pixels=10**6)  # within budget: kept
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
    v, _ = read_video(tmp_path / "m.mp4", num_frames=8)
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
