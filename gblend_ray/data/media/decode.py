"""Decoding video files with PyAV (FFmpeg): a stream's facts, frames by index, audio by time.

Frame ``i`` of a stream is the frame whose timestamp is ``start_pts + i / fps``: decoding
seeks to the keyframe before the first wanted frame and reads forward, so a clip costs a
seek and the frames up to its last, not the whole file. The manifest's files are checked
with these functions at load time and decoded with them in the DataLoader's workers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import av
import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    """What decoding needs to know about a file's video stream."""

    fps: float
    frames: int
    """Frame count the container declares (or duration × fps where it declares none)."""
    width: int
    height: int
    start_pts: int
    """The video stream's first timestamp: frame i is at ``start_pts + i / fps`` seconds."""
    time_base: float
    start_time: float
    """``start_pts`` in seconds; audio windows are aligned to it."""
    has_audio: bool
    declared: bool = True
    """Whether ``frames`` is the container's own count; an estimate from the duration may be
    off by a frame or two, so a shortfall then is not taken for truncation."""


def video_info(container: av.container.InputContainer) -> VideoInfo:
    """The first video stream's rate, frame count and size; raises ``ValueError`` if it has none."""
    if not container.streams.video:
        raise ValueError("has no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        raise ValueError("its video stream declares no frame rate")
    fps = float(rate)
    tb = float(stream.time_base)
    start_pts = stream.start_time if stream.start_time is not None else 0
    frames = int(stream.frames or 0)
    declared = frames > 0
    if not declared:
        if stream.duration:
            frames = round(stream.duration * tb * fps)
        elif container.duration:
            frames = round(container.duration / 1_000_000 * fps)
    width, height = stream.codec_context.width, stream.codec_context.height
    if not width or not height:
        raise ValueError("its video stream has no frame size")
    return VideoInfo(fps, frames, width, height, start_pts, tb, start_pts * tb, bool(container.streams.audio),
                     declared)


def _frame_index(frame: av.VideoFrame, info: VideoInfo) -> int:
    pts = frame.pts if frame.pts is not None else frame.dts
    return round((pts - info.start_pts) * info.time_base * info.fps)


def _seek(container: av.container.InputContainer, stream: av.stream.Stream, seconds: float) -> None:
    target = math.floor(seconds / float(stream.time_base)) + (stream.start_time or 0)
    container.seek(max(target, 0), stream=stream, backward=True, any_frame=False)


def decode_frames(container: av.container.InputContainer, info: VideoInfo, wanted: Sequence[int],
                  convert: Any = None) -> tuple[dict[int, Any], int | None]:
    """Frames at the frame indices ``wanted`` (``convert``-ed, default the ``av.VideoFrame``)
    and the index of the last frame decoded.

    Seeks to the keyframe before the first wanted frame and decodes forward, seeking again
    only towards a later wanted frame more than two seconds ahead (a seek re-decodes from a
    keyframe, which may lie far back: long-GOP files have one every few seconds). A frame
    missing from the stream (variable rate) is replaced by the next one decoded. Indices the
    stream ends before are absent from the result: the caller decides what that means.
    """
    stream = container.streams.video[0]
    todo = sorted({int(i) for i in wanted})
    convert = convert or (lambda f: f)
    found: dict[int, Any] = {}
    gap = max(2 * info.fps, 8)
    frames = None
    pos: int | None = None  # index of the last frame decoded since the last seek
    sought: int | None = None  # the target of the last seek: never seek twice towards one frame
    last: int | None = None
    rewound = False
    i = 0
    while i < len(todo):
        target = todo[i]
        if frames is None or (target != sought and pos is not None and target - pos > gap):
            _seek(container, stream, info.start_time + target / info.fps)
            frames, pos, sought = container.decode(stream), None, target
        frame = next(frames, None)
        if frame is None:
            break
        idx = _frame_index(frame, info)
        if pos is None and idx > target and not rewound:
            # the seek landed past the target (no keyframe before it in the index): start over
            _seek(container, stream, info.start_time)
            frames, rewound = container.decode(stream), True
            continue
        pos = last = idx
        if idx >= target:
            value = convert(frame)
            while i < len(todo) and todo[i] <= idx:
                found[todo[i]] = value
                i += 1
    return found, last


def count_decodable(container: av.container.InputContainer, info: VideoInfo) -> int:
    """How many frames decode from the start before the stream ends or fails (for messages)."""
    stream = container.streams.video[0]
    n = 0
    try:
        _seek(container, stream, info.start_time)
        for _ in container.decode(stream):
            n += 1
    except (av.FFmpegError, ValueError, OSError):
        pass
    return n


def decode_audio(container: av.container.InputContainer, t_from: float, t_to: float, sample_rate: int) -> np.ndarray:
    """Mono float32 samples of ``[t_from, t_to)`` (absolute stream seconds) at ``sample_rate``,
    zero-padded where the stream has no audio."""
    stream = container.streams.audio[0]
    n = round((t_to - t_from) * sample_rate)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    _seek(container, stream, max(t_from, 0.0))
    chunks: list[np.ndarray] = []
    first: float | None = None
    for frame in container.decode(stream):
        if frame.time is None or not frame.sample_rate:
            continue
        end = frame.time + frame.samples / frame.sample_rate
        if end <= t_from:
            continue
        if first is None:
            first = frame.time
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        if end >= t_to:
            break
    chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    out = np.zeros(n, np.float32)
    if first is None or not chunks:
        return out
    samples = np.concatenate(chunks)
    offset = round((t_from - first) * sample_rate)
    if offset < 0:  # the stream starts after t_from: silence before it
        piece = samples[: n + offset]
        out[-offset: -offset + len(piece)] = piece
    else:
        piece = samples[offset: offset + n]
        out[: len(piece)] = piece
    return out


def resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) with the short side scaled to ``short``, aspect kept."""
    if height <= width:
        return short, max(short, round(width * short / height))
    return max(short, round(height * short / width)), short
