"""Video clips for tests and load: a valid moving square, and short, degenerate or lying ones.

Every clip is an MP4 made here with OpenCV (no files are shipped). The degenerate ones
are what a careless or hostile client sends: a single frame, a clip shorter than one of
Qwen's temporal patches, a container whose header says zero duration or zero fps, a
header whose frame count or durations the stream contradicts, odd frame sizes. Each is
made by writing a valid clip and, for the lying ones, overwriting one 32-bit field of
one MP4 box (``patched``).
"""

from __future__ import annotations

import base64
import os
import struct
import tempfile
from collections.abc import Callable


def mp4_bytes(
    seed: int = 0, frames: int = 8, size: tuple[int, int] = (224, 224), fps: float = 4.0
) -> bytes:
    """A deterministic clip: a still noise background and a bright square that moves a
    step per frame (so consecutive frames differ in a few places only)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    width, height = size
    background = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    side, step = max(1, height // 4), max(1, (width - height // 4) // max(1, frames - 1))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "clip.mp4")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        for i in range(frames):
            frame = background.copy()
            frame[height // 3 : height // 3 + side, i * step : i * step + side] = (255, 255, 0)
            writer.write(frame)
        writer.release()
        with open(path, "rb") as file:
            return file.read()


def data_url(clip: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(clip).decode()


def patched(clip: bytes, box: bytes, offset: int, value: int) -> bytes:
    """``clip`` with the big-endian 32-bit field ``offset`` bytes after ``box``'s name set
    to ``value`` (the first such box: the movie's or the video track's)."""
    at = clip.index(box) + len(box) + offset
    return clip[:at] + struct.pack(">I", value) + clip[at + 4 :]


# Field offsets after the box name: mvhd and mdhd hold version+flags (4), creation and
# modification times (4 + 4), the timescale (ticks per second), then the duration; stts
# holds version+flags (4), its entry count (4), then each entry's sample count and delta.
TIMESCALE, DURATION, STTS_COUNT, STTS_DELTA = 12, 16, 8, 12

# name -> (what it is, how to make it)
DEGENERATE: dict[str, tuple[str, Callable[[], bytes]]] = {
    "one frame": ("a clip of a single frame", lambda: mp4_bytes(frames=1)),
    "two frames": (
        "two frames: one temporal patch of Qwen's (the shortest clip Qwen can take whole)",
        lambda: mp4_bytes(frames=2),
    ),
    "three frames": (
        "an odd frame count: half a temporal patch left over",
        lambda: mp4_bytes(frames=3),
    ),
    "zero fps": (
        "the track's timescale is 0 (no frame rate can be derived)",
        lambda: patched(mp4_bytes(), b"mdhd", TIMESCALE, 0),
    ),
    "zero duration": (
        "the movie's and the track's durations are 0",
        lambda: patched(patched(mp4_bytes(), b"mvhd", DURATION, 0), b"mdhd", DURATION, 0),
    ),
    "frame count lies": (
        "the sample table claims 1000 frames; the stream holds 8",
        lambda: patched(mp4_bytes(), b"stts", STTS_COUNT, 1000),
    ),
    "zero frame delta": (
        "every frame lasts 0 ticks: the header's fps and duration contradict the stream",
        lambda: patched(mp4_bytes(), b"stts", STTS_DELTA, 0),
    ),
    "duration lies": (
        "the track claims a duration of about 3 days at 4 fps; the stream holds 2 s",
        lambda: patched(mp4_bytes(), b"mdhd", DURATION, 10**9),
    ),
    "odd size": (
        "225 x 223 pixels (odd, not a multiple of the patch)",
        lambda: mp4_bytes(size=(225, 223)),
    ),
    "tiny frames": ("8 x 6 pixels, smaller than one patch", lambda: mp4_bytes(size=(8, 6))),
    "thin frames": (
        "16 x 1024 pixels, far from square",
        lambda: mp4_bytes(frames=4, size=(16, 1024)),
    ),
}
