"""
Time read_video on a long clip against a short one (PyAV, CPU): the reader seeks, so its cost should
grow with the frames asked for, not with the clip's length.

    python scripts/bench_video.py                         # 10-minute 720p clip, made once in /tmp/video_bench
    python scripts/bench_video.py --minutes=2 --repeats=3

The clips are H.264 at 25 fps with x264's default keyframe interval (250 frames, 10 s): moving bars
and a counter bar, every frame different; the long one is a 20 s piece copied end to end. Times are
the best of `repeats` reads (PyAV's decoder threads: "AUTO", as read_video sets them).
"""
import os
import sys
import time

import av
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project's modules
from machinery.configurator import configure
from machinery.video import read_video

# -----------------------------------------------------------------------------
minutes = 10.0
short_seconds = 10.0
height, width, rate = 720, 1280, 25
frames_asked = (8, 16)        # the num_frames values to time, e.g. --frames_asked="(8,)"
repeats = 2
unit_seconds = 20.0           # the long clip is this piece, encoded once, copied end to end
clip_dir = "/tmp/video_bench"
# -----------------------------------------------------------------------------


def make_clip(path, seconds):
    """An H.264 mp4 of `seconds` at `rate` fps, height x width, made once (reused if present): a
    unit_seconds piece is encoded, then its packets are copied end to end with shifted timestamps
    (each copy starts with a keyframe), so a 10-minute clip takes a unit's encoding time."""
    if os.path.exists(path):
        return path
    piece = min(seconds, unit_seconds)
    unit = encode_unit(path + ".unit.mp4", piece)
    tmp = path + ".part.mp4"
    with av.open(unit) as src, av.open(tmp, "w") as dst:
        src_stream = src.streams.video[0]
        stream = dst.add_stream_from_template(src_stream)
        packets = [p for p in src.demux(src_stream) if p.size]
        span = round(piece / src_stream.time_base)
        for copy in range(int(round(seconds / piece))):
            for p in packets:
                out = av.Packet(bytes(p))
                out.pts, out.dts, out.duration = p.pts + copy * span, p.dts + copy * span, p.duration
                out.is_keyframe, out.time_base, out.stream = p.is_keyframe, p.time_base, stream
                dst.mux(out)
    os.replace(tmp, path)
    return path


def encode_unit(path, seconds):
    """Moving bars and a counter bar that grows each frame, so that every frame differs."""
    if os.path.exists(path):
        return path
    x = np.arange(width)
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(int(round(seconds * rate))):
            frame = np.empty((height, width, 3), np.uint8)
            frame[:] = ((x + 7 * i) % 256).astype(np.uint8)[None, :, None]
            frame[:40, :(i % width)] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def best_time(path, num_frames):
    """(wall, CPU) seconds of the fastest of `repeats` reads; CPU time (all threads of this process)
    is the steadier number on a shared machine."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        read_video(path, num_frames=num_frames, max_pixels=252 * 252)
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
    return best


def main():
    configure(globals(), sys.argv[1:])
    os.makedirs(clip_dir, exist_ok=True)
    clips = {f"{seconds:g} s": make_clip(os.path.join(clip_dir, f"bench_{seconds:g}s_{height}p.mp4"), seconds)
             for seconds in (short_seconds, minutes * 60)}
    print(f"av {av.__version__}, {height}p H.264 at {rate} fps")
    print("| clip | " + " | ".join(f"{n} frames: wall / CPU" for n in frames_asked) + " |")
    print("|---|" + "---|" * len(frames_asked))
    for name, path in clips.items():
        times = [best_time(path, n) for n in frames_asked]
        print(f"| {name} | " + " | ".join(f"{w:.2f} s / {c:.2f} s" for w, c in times) + " |")


if __name__ == "__main__":
    main()
