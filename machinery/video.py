"""Video in and out with PyAV: reading a clip into sampled, resized frames, and writing frames to mp4.

Bad videos raise VideoError("<path>: <reason>").
"""

import itertools
import math
import os
import warnings

import av
import numpy as np

TEXT_DEMUXERS = ("tty", "txt")
SEEK_AHEAD = 2.0  # seconds: a target further past the decoder than this is reached by seeking
TIME_EPS = 1e-6  # seconds: timestamps this close count as equal


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


def sample_times(start, end, num_frames=8, fps=None):
    """Target times (seconds) in [start, end): the centres of num_frames equal segments, or (fps
    given) start + k / fps, thinned uniformly to at most num_frames."""
    if fps is None:
        return [start + (k + 0.5) * (end - start) / num_frames for k in range(num_frames)]
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    times = [start + k / fps for k in range(max(1, math.ceil((end - start) * fps - 1e-9)))]
    if len(times) > num_frames:
        times = [times[int((k + 0.5) * len(times) / num_frames)] for k in range(num_frames)]
    return times


def _decoded(container, stream, seconds=None, lost=None):
    """Frames from the keyframe at or before `seconds` (None: where the demuxer is) to the end.
    A packet the decoder rejects (damage inside the file) loses its frames, not the clip; it is
    counted into `lost` (a set of pts) when given (see _check_damage)."""
    if seconds is not None:
        container.seek(int(seconds / stream.time_base), stream=stream, backward=True)
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.InvalidDataError:
            if lost is not None:
                lost.add(packet.pts)
            continue


class _SeekFailed(Exception):
    pass


def _seek_before(container, stream, t, start, lost=None):
    """Decoded frames from a keyframe that starts at or before t. Containers may index keyframes
    by decode time, which runs ahead of presentation time with B-frames: when a seek lands after
    t, seek again further back."""
    back = 0.0
    while True:
        frames = _decoded(container, stream, max(start, t - back), lost)
        first = next(frames, None)
        if first is not None and first.time is not None and first.time <= t + TIME_EPS:
            return itertools.chain([first], frames)
        if t - back <= start:
            raise _SeekFailed(f"a seek to {t:.3f} s gave a first frame at "
                              f"{first and first.time} s")
        back = max(SEEK_AHEAD, 2 * back)


def _on_screen(container, stream, targets, seek, start, rate, lost=None):
    """[(frame, time)] on screen at each target time (sorted, seconds): the last frame starting at
    or before it. seek: a target more than SEEK_AHEAD s past the decoder is reached by seeking to
    the keyframe before it; otherwise the stream is decoded once from where the demuxer is. Frames
    without timestamps (raw streams, never seeked) are timed by index / rate."""
    picked, cur, ahead, index = [], None, None, 0
    frames = iter(()) if seek else _decoded(container, stream, lost=lost)
    for t in targets:
        if ahead is not None and ahead[1] > t + TIME_EPS:  # still on screen
            picked.append(cur)
            continue
        here = (ahead or cur or (None, -math.inf))[1]
        if seek and t - here > SEEK_AHEAD:
            frames, cur, ahead = _seek_before(container, stream, t, start, lost), None, None
        elif ahead is not None:
            cur, ahead = ahead, None
        for frame in frames:
            time = frame.time if frame.time is not None else index / rate
            index += 1
            if time > t + TIME_EPS:
                ahead = (frame, time)
                break
            cur = (frame, time)
        picked.append(cur)
    return picked


def _claimed_end(container, stream):
    """End of the video in seconds as the file says: the stream's duration, or its DURATION tag
    (mkv / webm, "00:01:02.500000000"), else the container's (which may include a longer audio)."""
    start = float((stream.start_time or 0) * stream.time_base)
    if stream.duration:
        return start + float(stream.duration * stream.time_base)
    if stream.metadata.get("DURATION", "").count(":") == 2:
        h, m, s = stream.metadata["DURATION"].split(":")
        return start + int(h) * 3600 + int(m) * 60 + float(s)
    if container.duration:
        return ((container.start_time or 0) + container.duration) / av.time_base
    return None


def _packet_end(path, packets, time_base):
    """Presentation end (seconds) of the latest of these packets, None when none has a pts. A
    packet cut short (a file truncated inside it, e.g. a fragmented mp4) raises VideoError."""
    end = None
    for p in packets:
        if p.is_corrupt:
            raise VideoError(path, f"truncated or corrupt (the packet at {float(p.pts * time_base):.2f} s "
                                   f"is cut short)")
        if p.pts is not None:
            end = max(end or 0.0, float((p.pts + (p.duration or 0)) * time_base))
    return end


def _plan(container, path):
    """(stream, first frame, start s, end s, seekable): end from the last packets, found by a seek
    near the claimed end; a full demux pass only where there is no claimed end to seek to."""
    if not container.streams.video:
        raise VideoError(path, "no video stream")
    stream = container.streams.video[0]
    if container.format.name in TEXT_DEMUXERS:  # ffmpeg renders text files as "video"
        raise VideoError(path, f"not a video file (ffmpeg sees {container.format.name!r} "
                               f"text, codec {stream.codec_context.name!r})")
    stream.thread_type = "AUTO"
    first = next(_decoded(container, stream), None)
    if first is None:
        raise VideoError(path, "no decodable frames")
    if first.time is None:  # a raw stream: no timestamps; time frames by the codec's rate
        _warn_linear_once(path, "no timestamps")
        with av.open(path) as c:
            n = sum(1 for p in c.demux(c.streams.video[0]) if p.size)
        return stream, first, 0.0, n / _rate(stream), False
    claimed = _claimed_end(container, stream)
    end = None
    if claimed is not None:
        container.seek(int(claimed / stream.time_base), stream=stream, backward=True)
        end = _packet_end(path, container.demux(stream), stream.time_base)
    seekable = end is not None
    if end is None:
        with av.open(path) as c:
            end = _packet_end(path, c.demux(c.streams.video[0]), stream.time_base)
    if claimed is not None and end < claimed - max(0.5, 0.02 * (claimed - first.time)):
        raise VideoError(path, f"truncated or corrupt (the header says the video ends at "
                               f"{claimed:.2f} s, its last frame ends at {end:.2f} s)")
    return stream, first, first.time, max(end, first.time + 1e-3), seekable


def _rate(stream):
    rate = stream.codec_context.framerate or stream.guessed_rate or stream.average_rate
    return float(rate) if rate else 25.0


def _warn_linear_once(path, why):
    global _warned_linear
    if not _warned_linear:
        _warned_linear = True
        warnings.warn(f"{path}: cannot seek ({why}); decoding from the start instead (slower with "
                      f"long clips; said once, for the first such file)", stacklevel=2)


_warned_linear = False


def _to_rgb(frame, height, width, turns):
    """(H, W, 3) uint8, resized to (height, width) after `turns` counter-clockwise quarter turns."""
    h, w = (width, height) if turns % 2 else (height, width)
    rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA",
                         threads=1).to_ndarray()  # threads: determinism
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def read_video(path, num_frames=8, fps=None, max_pixels=112 * 112, size_multiple=28):
    """Read a video with PyAV: (frames (T, H, W, 3) uint8, times (T,) float64 seconds).

    Frames are sampled by presentation time: num_frames targets at the centres of equal segments
    of the clip, or (fps given) one every 1/fps seconds from the first frame, thinned uniformly to
    at most num_frames; each target gets the frame on screen at that time. Frames repeat only when
    more are asked than the clip has (under fps sampling never: a frame is kept once). times[k] is
    frame k's presentation time from the clip's first frame. Far-apart targets are reached by
    seeking to the keyframe before them, so the cost grows with T, not the clip's length; a file
    that cannot be seeked in is decoded from the start (a warning says so once).
    Rotation tags and non-square pixels are applied, then frames are resized keeping the display
    aspect ratio so that H * W <= max_pixels and H, W are multiples of size_multiple.
    Missing, empty, truncated and non-video files raise VideoError("<path>: <reason>"), and so does a
    clip whose packets failed to decode over most of the sampled times (see _check_damage).
    Truncation is found where the file says how long it is (a duration in the header, a packet cut
    short); a fragmented mp4 cut exactly at a fragment boundary says neither (each fragment is
    complete and carries its own length) and reads as a complete, shorter clip.
    """
    path = str(path)
    if not os.path.exists(path):
        raise VideoError(path, "file not found")
    if os.path.isdir(path):
        raise VideoError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "empty file (0 bytes)")
    try:
        with av.open(path) as container:
            stream, first, start, end, seekable = _plan(container, path)
            targets = sample_times(start, end, num_frames, fps)
            lost = set()
            picked = _pick(path, container, stream, targets, start, seekable, lost)
            if lost:
                _check_damage(path, targets, picked, lost, _rate(stream))
            if fps is not None:  # sampling faster than the clip's own rate keeps each frame once
                picked = [p for i, p in enumerate(picked) if i == 0 or p[1] != picked[i - 1][1]]
            turns = round(getattr(first, "rotation", 0) / 90) % 4  # counter-clockwise
            width = first.width * float(stream.codec_context.sample_aspect_ratio or 1)
            h, w = (width, first.height) if turns % 2 else (first.height, width)
            size = target_size(h, w, max_pixels, size_multiple)
            arrays = {time: _to_rgb(frame, *size, turns) for frame, time in picked}
    except VideoError:
        raise
    except av.FFmpegError as e:
        with open(path, "rb") as f:
            is_mp4 = f.read(12)[4:8] == b"ftyp"
        reason = "truncated or corrupt" if is_mp4 else "not a readable video"
        raise VideoError(path, f"{reason} ({type(e).__name__}: {e})") from e
    except (EOFError, OSError, RuntimeError) as e:
        raise VideoError(path, f"truncated or corrupt ({type(e).__name__}: {e})") from e
    frames = np.stack([arrays[time] for _, time in picked])  # (T, H, W, 3)
    return frames, np.array([time - start for _, time in picked])


def _pick(path, container, stream, targets, start, seekable, lost=None):
    """The (frame, time) on screen at each target: by seeking where it works, else linearly."""
    rate = _rate(stream)
    if seekable:
        try:
            return _on_screen(container, stream, targets, True, start, rate, lost)
        except (_SeekFailed, av.FFmpegError) as e:
            _warn_linear_once(path, e)
    with av.open(path) as c:  # decoded frames keep their own buffers after the file is closed
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        return _on_screen(c, s, targets, False, start, rate, lost)


STALE_INTERVALS = 1.5  # a sampled frame that started this many frame intervals before its time is stale
MAX_STALE = 0.5        # more than this fraction of stale sampled frames, after packets failed: rejected


def _check_damage(path, targets, picked, lost, rate):
    """After packets failed to decode: the frame on screen at a target time is the last good one
    before it, so a long damaged stretch returns copies of one picture. A sampled frame that started
    more than STALE_INTERVALS frame intervals (1 / rate) before its target is stale; more than
    MAX_STALE of them rejects the clip (VideoError "damaged"), fewer are kept with a warning naming
    the file. Clips whose packets all decode are never judged this way: a frame held on screen by
    the file itself is not damage."""
    gaps = [t - time for t, (_, time) in zip(targets, picked)]
    stale = sum(g > STALE_INTERVALS / rate for g in gaps)
    what = (f"{len(lost)} packets failed to decode, and {stale} of the {len(targets)} sampled frames repeat an "
            f"earlier picture (up to {max(gaps):.2f} s old)")
    if stale > MAX_STALE * len(targets):
        raise VideoError(path, f"damaged: {what}; more than {MAX_STALE:.0%} of them rejects the clip")
    if stale:
        warnings.warn(f"{path}: {what}; kept (at most {MAX_STALE:.0%} may)", stacklevel=3)


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
