"""Small audio-visual mp4 files whose classes can be told apart by both modalities.

The media data layer (``data/media``) and its benchmark need real files —
H.264 video with AAC audio in an mp4, decoded by the same FFmpeg code paths as a
Kinetics or AudioSet clip — but no download. ``write_test_media`` encodes them with
PyAV in a few seconds.

What a file of class ``c`` (of ``C``) holds:

- **video**: a sinusoidal grating (stripes of period ``size / 4`` pixels) moving at
  ``size / 32`` pixels per frame in the class's direction ``θ_c = 2πc / C`` (class 0
  moves towards +x, so its optical flow has a positive x component), with a random phase,
  a random colour tint and Gaussian pixel noise per file, so that a class is the motion,
  not a fixed image. Frames are ``size`` pixels high and ``4/3 · size`` wide (even), so
  the short-side resize is exercised.
- **audio**: a tone at ``f_c``, geometrically spaced from 200 Hz to 0.4 × the sample rate
  (well apart in Mel bands), detuned by up to ±3 % per file, with a random phase and
  white noise at about -14 dB; mono AAC.

With ``multilabel=True`` each file draws a random non-empty subset of the classes and
shows the average of their gratings and the sum of their tones; the manifest then has a
``labels`` column (``;``-separated) instead of ``label``. A ``meta.yaml`` with the
ordered class names and the task is written next to ``manifest.csv``.
"""

from __future__ import annotations

import csv
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import yaml


def class_names(classes: int) -> list[str]:
    return [f"class{c}" for c in range(classes)]


def tone_hz(c: int, classes: int, sample_rate: int) -> float:
    """The tone of class ``c``: geometric from 200 Hz to 0.4 × ``sample_rate``."""
    top = 0.4 * sample_rate
    return 200.0 * (top / 200.0) ** (c / max(classes - 1, 1))


def direction(c: int, classes: int) -> tuple[float, float]:
    """The grating's motion (dx, dy) per unit speed for class ``c`` (image axes: y down)."""
    angle = 2 * math.pi * c / classes
    return math.cos(angle), math.sin(angle)


def _frames(members: list[int], classes: int, n: int, height: int, width: int,
            rng: np.random.Generator) -> np.ndarray:
    """(n, height, width, 3) uint8 RGB frames of the classes' moving gratings, mixed."""
    period = max(height / 4.0, 4.0)
    speed = max(height / 32.0, 1.0)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = np.arange(n, dtype=np.float32)[:, None, None]
    pattern = np.zeros((n, height, width), np.float32)
    for c in members:
        dx, dy = direction(c, classes)
        phase = rng.uniform(0, 2 * math.pi)
        along = xs * dx + ys * dy  # position along the direction of motion
        pattern += 0.5 + 0.5 * np.sin(2 * math.pi * (along - speed * t) / period + phase)
    pattern /= len(members)
    tint = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
    base = rng.uniform(0.0, 0.25, size=3).astype(np.float32)
    rgb = base + pattern[..., None] * tint * 0.7
    rgb += rng.normal(0.0, 0.03, size=rgb.shape).astype(np.float32)
    return (np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def _audio(members: list[int], classes: int, samples: int, sample_rate: int,
           rng: np.random.Generator) -> np.ndarray:
    t = np.arange(samples) / sample_rate
    wave = np.zeros(samples)
    for c in members:
        f = tone_hz(c, classes, sample_rate) * rng.uniform(0.97, 1.03)
        wave += np.sin(2 * math.pi * f * t + rng.uniform(0, 2 * math.pi))
    wave = 0.4 * wave / len(members) + rng.normal(0.0, 0.08, samples)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def write_clip(path: str | Path, frames: np.ndarray | None, fps: int, audio: np.ndarray | None = None,
               sample_rate: int = 16000, gop: int | None = None, faststart: bool = False) -> Path:
    """Encode RGB ``frames`` (n, h, w, 3) uint8 as H.264 (yuv420p, a keyframe every
    ``gop`` frames, default one per second) and mono float ``audio`` as AAC into ``path``.
    Either may be None (a file without that stream). ``faststart`` puts the index (moov)
    before the data, as streaming sites do: such a file cut short still opens, and only
    decoding finds the frames missing."""
    path = Path(path)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        vstream = astream = None
        if frames is not None:
            vstream = out.add_stream("libx264", rate=fps)
            vstream.width, vstream.height = int(frames.shape[2]), int(frames.shape[1])
            vstream.pix_fmt = "yuv420p"
            vstream.codec_context.gop_size = gop or fps
            vstream.codec_context.options = {"preset": "veryfast", "crf": "18"}  # veryfast keeps B-frames
        if audio is not None:
            astream = out.add_stream("aac", rate=sample_rate)
            astream.codec_context.layout = "mono"
        if vstream is not None:
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, fps)
                out.mux(vstream.encode(frame))
            out.mux(vstream.encode(None))
        if astream is not None:
            chunk = 1024  # the AAC frame size
            for i in range(0, len(audio), chunk):
                part = audio[i:i + chunk]
                frame = av.AudioFrame.from_ndarray(part[None, :], format="fltp", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = i
                frame.time_base = Fraction(1, sample_rate)
                out.mux(astream.encode(frame))
            out.mux(astream.encode(None))
    return path


def write_test_media(out_dir: str | Path, *, classes: int = 3, per_class: int = 8, seconds: float = 2.0,
                     fps: int = 12, size: int = 64, sample_rate: int = 16000, multilabel: bool = False,
                     seed: int = 0) -> Path:
    """Write ``classes * per_class`` mp4 files (see the module docstring), ``manifest.csv``
    and ``meta.yaml`` into ``out_dir``; return the manifest's path. Deterministic in ``seed``."""
    if classes < 1 or per_class < 1:
        raise ValueError(f"classes and per_class must be >= 1, got {classes} and {per_class}")
    root = Path(out_dir)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = class_names(classes)
    height = size
    width = 2 * round(size * 4 / 3 / 2)
    n_frames = max(round(seconds * fps), 1)
    n_samples = round(seconds * sample_rate)
    rows = []
    for c in range(classes):
        for j in range(per_class):
            if multilabel:
                members = sorted(int(m) for m in np.flatnonzero(rng.random(classes) < 0.4))
                members = members or [c]  # a non-empty subset; every class appears at least per_class times
                if c not in members and rng.random() < 0.5:
                    members = sorted({*members, c})
            else:
                members = [c]
            rel = f"videos/{names[c]}_{j:03d}.mp4"
            write_clip(root / rel, _frames(members, classes, n_frames, height, width, rng), fps,
                       _audio(members, classes, n_samples, sample_rate, rng), sample_rate)
            rows.append({"path": rel, ("labels" if multilabel else "label"): ";".join(names[m] for m in members)})
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {"name": root.name, "task": "multilabel" if multilabel else "multiclass", "classes": names}
    (root / "meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return manifest
