"""Video in and out with PyAV: reading a clip into sampled, resized frames, and writing frames to mp4.

Bad videos raise VideoError("<path>: <reason>").
"""

import math
import os

import av
import numpy as np

TEXT_DEMUXERS = ("tty", "txt")


class VideoError(ValueError):
    """A video that cannot be read. str(e) is always "<path>: <reason>"."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    @property
    def kind(self):
        """The reason without its details, e.g. "file not found"; load_samples counts by it."""
        return self.reason.split(" (")[0].split(":")[0]


# -----------------------------------------------------------------------------
# video in and out

def target_size(height, width, max_pixels=112 * 112, size_multiple=28):
    """(h, w): multiples of size_multiple, aspect kept, h * w <= max_pixels (Qwen's smart_resize,
    without the min_pixels floor except one multiple per side)."""
    f = size_multiple
    if max_pixels < f * f:
        raise ValueError(f"max_pixels={max_pixels} is below one {f}x{f} cell")
    h = max(f, round(height / f) * f)
    w = max(f, round(width / f) * f)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(f, math.floor(height / beta / f) * f)
        w = max(f, math.floor(width / beta / f) * f)
        while h * w > max_pixels:  # the max(f, .) floor can overshoot on extreme aspect ratios
            if h >= w:
                h -= f
            else:
                w -= f
    return h, w


def sample_indices(n, num_frames=8, fps=None, native_fps=None):
    """Frame indices to keep out of n decoded frames.

    Uniform: num_frames indices at the centres of num_frames equal segments (repeats when n is
    smaller). fps given: one frame every native_fps / fps frames from the start, thinned uniformly
    to at most num_frames.
    """
    if n <= 0:
        raise ValueError(f"cannot sample from n={n} frames")
    if fps is None:
        return [min(n - 1, int((k + 0.5) * n / num_frames)) for k in range(num_frames)]
    if not native_fps or native_fps <= 0:
        raise ValueError(f"fps sampling needs the video's native fps, got {native_fps}")
    step = native_fps / fps
    idx = [int(round(k * step)) for k in range(int(math.floor((n - 1) / step)) + 1)]
    idx = [i for i in idx if i < n] or [0]
    if len(idx) > num_frames:
        idx = [idx[int((k + 0.5) * len(idx) / num_frames)] for k in range(num_frames)]
    return idx


def _count_packets(path):
    """(number of video packets, native fps, frame count the header claims or 0)."""
    with av.open(path) as container:
        if not container.streams.video:
            raise VideoError(path, "no video stream")
        stream = container.streams.video[0]
        if container.format.name in TEXT_DEMUXERS:  # ffmpeg renders text files as "video"
            raise VideoError(path, f"not a video file (ffmpeg sees {container.format.name!r} "
                                   f"text, codec {stream.codec_context.name!r})")
        rate = stream.average_rate or stream.guessed_rate
        claimed = stream.frames or 0
        n = sum(1 for packet in container.demux(stream) if packet.size > 0)
    return n, (float(rate) if rate else None), claimed


def _decode(path, keep, max_pixels, size_multiple):
    """Decode every frame; return (total decoded, {index: (H, W, 3) uint8} for indices in keep)."""
    kept, n = {}, 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        size = None
        for frame in container.decode(stream):
            if n in keep:
                if size is None:
                    size = target_size(frame.height, frame.width, max_pixels, size_multiple)
                rgb = frame.reformat(width=size[1], height=size[0], format="rgb24",
                                     interpolation="AREA", threads=1)  # threads: determinism
                kept[n] = rgb.to_ndarray()
            n += 1
    return n, kept


def read_video(path, num_frames=8, fps=None, max_pixels=112 * 112, size_multiple=28):
    """Read a video into (T, H, W, 3) uint8 with PyAV.

    T = num_frames frames sampled uniformly over the clip, or (fps given) one frame per 1/fps
    seconds from the start, thinned uniformly to at most num_frames. Frames are resized keeping
    the aspect ratio so that H * W <= max_pixels and H, W are multiples of size_multiple.
    Missing, empty, truncated and non-video files raise VideoError("<path>: <reason>").
    """
    path = str(path)
    if not os.path.exists(path):
        raise VideoError(path, "file not found")
    if os.path.isdir(path):
        raise VideoError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "empty file (0 bytes)")
    try:
        n, native_fps, claimed = _count_packets(path)
        if n == 0:
            raise VideoError(path, "no decodable frames (0 video packets)")
        if claimed and n < claimed:
            raise VideoError(path, f"truncated or corrupt (header says {claimed} frames, "
                                   f"found {n})")
        keep = sample_indices(n, num_frames, fps, native_fps)
        n_dec, kept = _decode(path, set(keep), max_pixels, size_multiple)
        if n_dec == 0:
            raise VideoError(path, "no decodable frames")
        if n_dec != n:  # packets that decode to no frame (e.g. edit lists): sample again
            keep = sample_indices(n_dec, num_frames, fps, native_fps)
            n_dec, kept = _decode(path, set(keep), max_pixels, size_multiple)
    except VideoError:
        raise
    except av.FFmpegError as e:
        with open(path, "rb") as f:
            is_mp4 = f.read(12)[4:8] == b"ftyp"
        reason = "truncated or corrupt" if is_mp4 else "not a readable video"
        raise VideoError(path, f"{reason} ({type(e).__name__}: {e})") from e
    except (EOFError, OSError, RuntimeError) as e:
        raise VideoError(path, f"truncated or corrupt ({type(e).__name__}: {e})") from e
    return np.stack([kept[i] for i in keep])  # (T, H, W, 3)


def write_video(path, frames, fps=4, qp=12, codec="libx264"):
    """Write (T, H, W, 3) uint8 frames to an mp4: H.264 yuv420p via libx264, or MPEG-4 Part 2
    ("mpeg4") when asked or when this PyAV build has no libx264.

    yuv420p needs even H and W. Constant quantiser qp 12 is close to lossless: flat colours come
    back within a few levels; chroma is shared by each 2x2 pixel block, so colour edges smear by a
    pixel. Output bytes are deterministic: one thread everywhere and a constant qp (x264's crf
    mode, through its macroblock-tree lookahead, gave run-to-run different bytes here).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{path}: frames must be (T, H, W, 3) uint8, got {frames.shape} "
                         f"{frames.dtype}")
    t, h, w, _ = frames.shape
    if t == 0 or h % 2 or w % 2:
        raise ValueError(f"{path}: need T >= 1 and even H, W for yuv420p, got {frames.shape}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = _video_stream(container, fps, qp, codec)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for f in frames:
            # swscale with several threads gave run-to-run different yuv bytes here: use one
            yuv = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p",
                                                                          threads=1)
            for packet in stream.encode(yuv):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _video_stream(container, fps, qp, codec):
    if codec not in ("libx264", "mpeg4"):
        raise ValueError(f"codec must be 'libx264' or 'mpeg4', got {codec!r}")
    try:
        if codec != "libx264":
            raise ValueError(codec)
        stream = container.add_stream("libx264", rate=fps)
        stream.options = {"qp": str(qp), "preset": "veryfast", "threads": "1"}
    except (av.FFmpegError, ValueError):  # asked for mpeg4, or PyAV built without libx264
        stream = container.add_stream("mpeg4", rate=fps)
        stream.options = {"qscale": str(max(1, qp // 6))}
    stream.thread_count = 1
    return stream
