"""Media datasets: a manifest of video files, clips decoded by PyAV in worker processes.

The paper trains on clips cut from Kinetics, mini-Sports and mini-AudioSet videos: 16 RGB
frames at 224 × 224, the audio of the same time span as a 100 × 40 log-Mel spectrogram,
and optical flow at the same frames (§4, "Implementation details"). This module reads
such data from files named in a manifest, checks every file before training starts (a
corrupt file found in epoch 20 of a cluster run costs the run), and serves clips to the
engine as a ``BatchSource`` (``engine.py``).

Manifest (``manifest.csv``; ``data.path`` is the CSV file or a directory holding it)::

    path,label,start,end,split
    videos/abseiling_001.mp4,abseiling,0,10,train
    /data/k400/val/x.mp4,juggling,,,val

- ``path``: the video, relative to the manifest's directory or absolute.
- ``label`` (multiclass: one class name) or ``labels`` (multi-label: class names
  separated by ``;``). One of the two columns, not both.
- ``start``, ``end`` (optional, seconds): the part of the file clips are cut from
  (default: the whole file). Both columns may be left empty on any row.
- ``split`` (optional): ``train``, ``val`` or ``test`` on every row (otherwise
  ``make_splits`` draws a stratified split).

An optional ``meta.yaml`` next to the manifest may give ``name``, ``classes`` (ordered;
the label ids follow this order) and ``task: multiclass|multilabel``. Without it the
classes are the sorted unique names and the task is multi-label iff the column is
``labels``. Manifest problems raise :class:`MediaError` naming the manifest, the row
(1-based, header excluded, with its line) and the field, and saying what to do.

Files are checked at load time: FFmpeg opens it, it has a video stream with a frame rate,
an audio stream if ``audio`` is among the modalities, at least ``frames * stride`` frames
within ``[start, end]``, and its last needed frame decodes (a file cut short still opens
when its index precedes the data, "faststart"; only decoding finds the frames missing).
With ``flow``, its optical flow must be in ``flow_dir`` (``flow.py``) with the same frame
count and rate. A bad file stops loading with a :class:`MediaError` that names it and says
what is wrong (``on_bad_sample: error``), or is left out and recorded in
``MediaDataset.skipped`` (``on_bad_sample: skip``).

Clips (per sample and modality, for a ``MediaData`` source):

- ``video`` (3, frames, size, size): ``frames`` frames ``stride`` apart, short side resized
  to ``resize`` (FFmpeg's swscale, bilinear), cropped to ``size``, scaled to [0, 1] and
  normalised with the Kinetics mean/std that torchvision's video ResNets were trained with.
  Train: a random clip start, a random crop and a horizontal flip with probability 1/2,
  drawn from ``(seed, epoch, sample index)`` so an epoch is reproducible whatever the worker
  count. Eval: the centre clip and the centre crop. With K clips per sample (the paper's
  video-level evaluation), K uniformly spaced starts from the first to the last possible
  (in training too, each clip then with its own random crop and flip).
- ``audio`` (1, n_mels, mel_frames): the audio of the clip's time span ``[t, t + frames *
  stride / fps)``, decoded from the same file, mixed to mono and resampled to
  ``sample_rate`` (swresample), then ``torchaudio.transforms.MelSpectrogram`` with a hop of
  ``ceil(window / mel_frames)`` samples and an FFT window of the next power of two of at
  least two hops and 25 ms (no longer than the window itself), then ``log(mel + 1e-6)``,
  padded (with ``log(1e-6)``) or trimmed to exactly ``mel_frames`` frames.
- ``flow`` (2, frames, size, size): the stored flow (``flow.py``) at the same frame indices,
  resized to the RGB frame's resized size (vectors scaled with it), the same crop and flip
  (a flip negates the x component), divided by the quantization bound so it lies in
  [-1, 1] (I3D's scaling).

``MediaData.batches`` runs a ``torch.utils.data.DataLoader`` with the engine's batches as
its ``batch_sampler`` and ``num_workers`` worker processes (one torch thread each), so the
batches, their order and their augmentation match the in-memory ``TensorData`` contract.
A file that fails to decode inside a worker surfaces as a :class:`MediaError` naming it.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np
import torch
import torch.nn.functional as F
import yaml

from .data import SPLIT_VALUES, TASKS, LabelledSamples
from .spec import MediaSpec

if TYPE_CHECKING:
    from .flow import FlowIndex

MANIFEST = "manifest.csv"
MODALITIES = ("video", "audio", "flow")
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
"""RGB mean of Kinetics-400, as torchvision's video ResNets (r3d_18, r2plus1d_18, mc3_18) normalise."""
KINETICS_STD = (0.22803, 0.22145, 0.216989)
_NORMALISE = ((np.arange(256)[None] / 255.0 - np.array(KINETICS_MEAN)[:, None])
              / np.array(KINETICS_STD)[:, None]).astype(np.float32)
"""(3, 256): channel c's normalised value of each 8-bit level."""
LOG_EPS = 1e-6
"""Added to the Mel power before the log, so that silence gives a finite value."""


class MediaError(ValueError):
    """A manifest, a media file or a flow file cannot be used; the message starts with the
    path of the offending file and says how to fix it."""


# ---------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row, resolved: ``row`` is 1-based without the header, ``line`` the CSV line."""

    row: int
    line: int
    path: Path
    labels: tuple[int, ...]
    start: float | None
    end: float | None
    split: str | None

    @property
    def key(self) -> str:
        """How the row is named in ``skipped``: the path, with its segment if it has one."""
        if self.start is None and self.end is None:
            return str(self.path)
        return f"{self.path}#t={'' if self.start is None else f'{self.start:g}'},{'' if self.end is None else f'{self.end:g}'}"


@dataclass
class Manifest:
    path: Path
    name: str
    task: str
    classes: list[str]
    rows: list[ManifestRow]


def resolve_manifest(path: str | Path) -> Path:
    """The manifest CSV that ``data.path`` names: the file itself or ``<dir>/manifest.csv``."""
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        if not (p / MANIFEST).is_file():
            raise MediaError(f"{p / MANIFEST}: no {MANIFEST} in this directory; write one with columns "
                             "path,label (see gblend_ray.media) or point data.path at the CSV file")
        return p / MANIFEST
    if not p.is_file():
        raise MediaError(f"{p}: manifest does not exist; point data.path at a manifest CSV or its directory")
    return p


def is_media_path(path: str | Path) -> bool:
    """Whether ``data.path`` names a media manifest (a ``.csv`` file, or a directory with a
    ``manifest.csv``) rather than an array dataset directory (``data.py``)."""
    p = Path(path).expanduser()
    return (p.is_file() and p.suffix.lower() == ".csv") or (p.is_dir() and (p / MANIFEST).is_file())


def _row_error(manifest: Path, row: int, line: int, fieldname: str, msg: str) -> MediaError:
    return MediaError(f"{manifest}: row {row} (line {line}), field {fieldname!r}: {msg}")


def _read_meta(meta_file: Path) -> dict[str, Any]:
    try:
        meta = yaml.safe_load(meta_file.read_text())
    except yaml.YAMLError as e:
        raise MediaError(f"{meta_file}: invalid YAML; fix the syntax:\n{e}") from e
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise MediaError(f"{meta_file}: top level must be a mapping (keys name, classes, task)")
    out: dict[str, Any] = {}
    if "task" in meta:
        if meta["task"] not in TASKS:
            raise MediaError(f"{meta_file}: field 'task' is {meta['task']!r}; use one of {list(TASKS)}")
        out["task"] = meta["task"]
    if "classes" in meta:
        classes = meta["classes"]
        if not isinstance(classes, list) or not classes or any(isinstance(c, (list, dict)) for c in classes):
            raise MediaError(f"{meta_file}: field 'classes' must be a non-empty list of names, got {classes!r}")
        classes = [str(c) for c in classes]  # YAML may have parsed names like 0 or yes
        if len(set(classes)) != len(classes):
            raise MediaError(f"{meta_file}: field 'classes' has duplicate names {classes}; make them unique")
        out["classes"] = classes
    if "name" in meta:
        out["name"] = str(meta["name"])
    return out


def _seconds(value: str, manifest: Path, row: int, line: int, fieldname: str) -> float | None:
    if value == "":
        return None
    try:
        t = float(value)
    except ValueError:
        raise _row_error(manifest, row, line, fieldname, f"{value!r} is not a number; give seconds "
                                                          "(e.g. 2.5) or leave it empty for the whole file") from None
    if not math.isfinite(t) or t < 0:
        raise _row_error(manifest, row, line, fieldname, f"{value!r} must be a finite number of seconds >= 0")
    return t


def read_manifest(path: str | Path) -> Manifest:
    """Parse and validate the manifest (format in the module docstring); files are not opened."""
    manifest = resolve_manifest(path)
    meta_file = manifest.parent / "meta.yaml"
    meta = _read_meta(meta_file) if meta_file.is_file() else {}
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            raw = [({(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in r.items()},
                    reader.line_num) for r in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise MediaError(f"{manifest}: cannot be read as a UTF-8 CSV file ({e}); save it as CSV "
                         "with a header row path,label") from e
    if "path" not in header:
        raise MediaError(f"{manifest}: no 'path' column (header is {header}); the first line must name "
                         "the columns, e.g. path,label")
    if ("label" in header) == ("labels" in header):
        what = "both 'label' and 'labels'" if "label" in header else "neither 'label' nor 'labels'"
        raise MediaError(f"{manifest}: has {what} column; use 'label' (one class per row) or 'labels' "
                         "(';'-separated classes per row), not both")
    column = "label" if "label" in header else "labels"
    if not raw:
        raise MediaError(f"{manifest}: has a header but no rows; add one row per video")
    task = meta.get("task", "multilabel" if column == "labels" else "multiclass")

    names: list[list[str]] = []
    for i, (r, line) in enumerate(raw, 1):
        value = r.get(column, "")
        parts = [p.strip() for p in value.split(";")] if column == "labels" else [value]
        if not value or any(not p for p in parts):
            raise _row_error(manifest, i, line, column, f"{value!r} is empty or has an empty class name; "
                                                        "give a class name" + (" list like a;b" if column == "labels" else ""))
        if column == "label" and ";" in value:
            raise _row_error(manifest, i, line, column, f"{value!r} names several classes; for multi-label "
                                                        "data name the column 'labels'")
        if task == "multiclass" and len(parts) > 1:
            raise _row_error(manifest, i, line, column, f"{value!r} names {len(parts)} classes but the task is "
                                                        f"multiclass ({meta_file}); give one class or set task: multilabel")
        names.append(parts)
    classes = meta.get("classes") or sorted({n for parts in names for n in parts})
    class_id = {c: k for k, c in enumerate(classes)}

    splits = [r.get("split", "") for r, _ in raw] if "split" in header else None
    if splits is not None and not any(splits):
        splits = None  # an empty column is no split
    rows = []
    for i, ((r, line), parts) in enumerate(zip(raw, names), 1):
        if not r.get("path"):
            raise _row_error(manifest, i, line, "path", "is empty; give the video's path "
                                                        "(relative to the manifest's directory or absolute)")
        for n in parts:
            if n not in class_id:
                raise _row_error(manifest, i, line, column, f"class {n!r} is not among the classes listed in "
                                                            f"{meta_file} ({classes}); add it there or fix the row")
        start = _seconds(r.get("start", ""), manifest, i, line, "start")
        end = _seconds(r.get("end", ""), manifest, i, line, "end")
        if end is not None and end <= (start or 0.0):
            raise _row_error(manifest, i, line, "end", f"{end:g} s is not after start ({start or 0:g} s); "
                                                       "fix the segment or leave end empty for the end of the file")
        split = None
        if splits is not None:
            split = splits[i - 1]
            if split not in SPLIT_VALUES:
                raise _row_error(manifest, i, line, "split", f"{split!r} is not one of {list(SPLIT_VALUES)}; "
                                                             "fill every row or drop the column for a generated split")
        file = Path(r["path"]).expanduser()
        file = file if file.is_absolute() else manifest.parent / file
        labels = tuple(sorted({class_id[n] for n in parts}))
        rows.append(ManifestRow(i, line, file.resolve(), labels, start, end, split))
    name = meta.get("name", manifest.parent.name)
    return Manifest(manifest, name, task, list(classes), rows)


# ---------------------------------------------------------------------------- decoding


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


# ---------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class ClipSource:
    """One sample's file as checked at load time: frames ``[first, stop)`` are usable."""

    path: str
    index: int
    """The sample's row in the dataset: seeds its augmentation."""
    info: VideoInfo
    first: int
    stop: int
    flow: str | None = None
    """Its flow file (``flow.py``) when the flow modality is loaded."""


def _check_spec(spec: MediaSpec) -> None:
    for name in ("frames", "stride", "resize", "size", "sample_rate", "n_mels", "mel_frames", "eval_clips",
                 "eval_clip_batch"):
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MediaError(f"data.media.{name} must be a positive int, got {value!r}")
    if spec.size > spec.resize:
        raise MediaError(f"data.media.size ({spec.size}) is larger than data.media.resize ({spec.resize}); "
                         "the crop is cut from frames whose short side is resize: lower size or raise resize")
    if not isinstance(spec.num_workers, int) or spec.num_workers < 0:
        raise MediaError(f"data.media.num_workers must be an int >= 0, got {spec.num_workers!r}")
    if spec.on_bad_sample not in ("error", "skip"):
        raise MediaError(f"data.media.on_bad_sample is {spec.on_bad_sample!r}; use 'error' or 'skip'")


def _check_file(row: ManifestRow, spec: MediaSpec, need_audio: bool,
                flow: FlowIndex | None, manifest_dir: Path) -> ClipSource | str:
    """The sample's ``ClipSource`` (index still 0), or why it cannot be used (a sentence that
    says what to do)."""
    path = row.path
    if not path.is_file():
        return "does not exist; fix the path (relative to the manifest's directory) or remove the row"
    span = spec.frames * spec.stride
    try:
        with av.open(str(path)) as container:
            try:
                info = video_info(container)
            except ValueError as e:
                return f"{e}; remove the row or re-encode the file"
            if need_audio and not info.has_audio:
                return ("has no audio stream but the audio modality is requested; remove the row, "
                        "or leave audio out of data.modalities")
            first = math.ceil((row.start or 0.0) * info.fps - 1e-6)
            stop = info.frames if row.end is None else min(info.frames, math.floor(row.end * info.fps + 1e-6))
            if stop - first < span:
                where = "" if row.start is None and row.end is None else f" within [{row.start or 0:g}, {'end' if row.end is None else f'{row.end:g}'}] s"
                return (f"is too short: {max(stop - first, 0)} frames{where} at {info.fps:g} fps, but one clip needs "
                        f"{span} (data.media.frames {spec.frames} × stride {spec.stride}); lower frames or stride, "
                        "or remove the row")
            found, _last = decode_frames(container, info, [stop - 1])
            if stop - 1 not in found and not info.declared:
                # the count was estimated from the duration: trust the decoder's count instead
                info = dataclasses.replace(info, frames=count_decodable(container, info))
                stop = min(stop, info.frames)
                found = {stop - 1: None} if stop - first >= span else {}
            if stop - 1 not in found:
                got = count_decodable(container, info)
                if not info.declared:
                    return (f"is too short or truncated: {max(got - first, 0)} frames decode within the row's "
                            f"segment but one clip needs {span}; re-encode it or remove the row")
                return (f"is truncated or corrupt: only {got} of the {info.frames} frames its header declares "
                        f"decode, and a clip may need frame {stop - 1}; re-download or re-encode it, or remove the row")
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as e:
        return (f"cannot be read by FFmpeg ({type(e).__name__}: {e}): the file is unreadable or truncated; "
                "re-download or re-encode it, or remove the row")
    flow_file = None
    if flow is not None:
        entry = flow.entry(path, manifest_dir)
        if entry is None:
            return (f"has no optical flow in {flow.root} (its flow_index.json does not list it); run "
                    "gblend extract-flow on this manifest into data.media.flow_dir")
        flow_file = str(flow.root / entry.file)
        if not Path(flow_file).is_file():
            return f"its flow file {flow_file} is missing; re-run gblend extract-flow into {flow.root}"
        if entry.frames < stop or abs(entry.fps - info.fps) > 1e-3:
            return (f"its flow in {flow_file} has {entry.frames} frames at {entry.fps:g} fps but the video needs "
                    f"{stop} at {info.fps:g} fps; the video changed since extraction: re-run gblend extract-flow")
    return ClipSource(str(path), 0, info, first, stop, flow_file)


@dataclass(eq=False)  # element-wise array equality makes a generated __eq__ useless
class MediaDataset(LabelledSamples):
    """A checked media manifest: labels, splits and per-sample files, decoded on demand.

    Has the fields ``make_splits`` reads (``task``, ``labels``, ``split``, ``num_classes``);
    ``modalities`` maps each loaded modality to its per-sample shape, and may be narrowed
    with ``dataclasses.replace``.
    """

    path: Path
    name: str
    task: str
    classes: list[str]
    labels: np.ndarray
    split: np.ndarray | None
    modalities: dict[str, tuple[int, ...]]
    spec: MediaSpec
    clips: list[ClipSource]
    skipped: dict[str, str] = field(default_factory=dict)
    """Files left out under ``on_bad_sample: skip``: manifest path (with ``#t=start,end``
    for a segment) → why."""
    flow: FlowIndex | None = None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.modalities)

    def source(self, indices: Sequence[int] | np.ndarray, modalities: Sequence[str] | None = None, *,
               train: bool, clips_per_sample: int = 1, seed: int = 0) -> MediaData:
        """The samples ``indices`` as a ``BatchSource``. ``train``: whether ``batches(train=True)``
        augments (False: an evaluation source, always the centre clip and crop);
        ``clips_per_sample``: K clips per sample (the paper's video-level evaluation)."""
        mods = list(self.modalities) if modalities is None else list(modalities)
        unknown = [m for m in mods if m not in self.modalities]
        if unknown or not mods:
            raise MediaError(f"{self.path}: modalities {unknown or mods} are not loaded for this dataset "
                             f"(it has {list(self.modalities)})")
        if clips_per_sample < 1:
            raise ValueError(f"clips_per_sample must be >= 1, got {clips_per_sample}")
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        dtype = torch.float32 if self.task == "multilabel" else torch.int64
        return MediaData([self.clips[int(i)] for i in idx], torch.as_tensor(self.labels[idx], dtype=dtype),
                         tuple(mods), self.spec, train=train, clips_per_sample=clips_per_sample, seed=seed,
                         flow_bound=self.flow.bound if self.flow is not None else 0.0)


def load_media_dataset(path: str | Path, spec: MediaSpec, modalities: list[str] | None = None) -> MediaDataset:
    """Read the manifest ``path`` (file or directory) and check every file it names.

    ``modalities`` defaults to video and audio, plus flow when ``spec.flow_dir`` is set.
    Bad files raise or are skipped per ``spec.on_bad_sample`` (module docstring).
    """
    _check_spec(spec)
    manifest = read_manifest(path)
    if modalities is None:
        modalities = ["video", "audio"] + (["flow"] if spec.flow_dir else [])
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise MediaError(f"{manifest.path}: modalities {unknown or modalities} are not media modalities; "
                         f"choose from {list(MODALITIES)}")
    flow = None
    if "flow" in modalities:
        if not spec.flow_dir:
            raise MediaError(f"{manifest.path}: the flow modality needs data.media.flow_dir, the output directory "
                             "of gblend extract-flow on this manifest")
        from .flow import load_flow_index

        flow = load_flow_index(spec.flow_dir)
    need_audio = "audio" in modalities
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        checked = list(pool.map(lambda r: _check_file(r, spec, need_audio, flow, manifest.path.parent),
                                manifest.rows))
    clips: list[ClipSource] = []
    kept: list[ManifestRow] = []
    skipped: dict[str, str] = {}
    for row, result in zip(manifest.rows, checked):
        if isinstance(result, str):
            if spec.on_bad_sample == "error":
                raise MediaError(f"{row.path}: {result} (manifest {manifest.path}, row {row.row}). "
                                 "Or set data.media.on_bad_sample: skip to leave bad files out.")
            skipped[row.key] = result
            continue
        clips.append(dataclasses.replace(result, index=len(clips)))
        kept.append(row)
    if not clips:
        raise MediaError(f"{manifest.path}: none of its {len(manifest.rows)} files is usable "
                         f"(first: {next(iter(skipped.items()))}); fix the files or the manifest")
    c = len(manifest.classes)
    if manifest.task == "multiclass":
        labels = np.array([r.labels[0] for r in kept], dtype=np.int64)
    else:
        labels = np.zeros((len(kept), c), np.float32)
        for i, r in enumerate(kept):
            labels[i, list(r.labels)] = 1.0
    split = np.array([r.split for r in kept], dtype=str) if kept[0].split is not None else None
    shapes = {"video": (3, spec.frames, spec.size, spec.size), "audio": (1, spec.n_mels, spec.mel_frames),
              "flow": (2, spec.frames, spec.size, spec.size)}
    return MediaDataset(manifest.path, manifest.name, manifest.task, manifest.classes, labels, split,
                        {m: shapes[m] for m in modalities}, spec, clips, skipped, flow)


# ---------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class ClipPlan:
    """What one clip is cut from: its first frame, frame indices, crop and flip, time span."""

    start: int
    frames: tuple[int, ...]
    top: int
    left: int
    flip: bool
    t_from: float
    t_to: float


def resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) with the short side scaled to ``short``, aspect kept."""
    if height <= width:
        return short, max(short, round(width * short / height))
    return max(short, round(height * short / width)), short


def _rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, index]))


def plan_clips(clip: ClipSource, spec: MediaSpec, k: int, augment: bool, seed: int, epoch: int) -> list[ClipPlan]:
    """The ``k`` clips of one sample (module docstring): deterministic in (seed, epoch, sample index)."""
    span = spec.frames * spec.stride
    lo, hi = clip.first, clip.stop - span
    rng = _rng(seed, epoch, clip.index)
    if k > 1:
        starts = [lo + round((hi - lo) * j / (k - 1)) for j in range(k)]
    elif augment:
        starts = [int(rng.integers(lo, hi + 1))]
    else:
        starts = [(lo + hi) // 2]
    h, w = resized_size(clip.info.height, clip.info.width, spec.resize)
    plans = []
    for s in starts:
        if augment:
            top, left, flip = int(rng.integers(0, h - spec.size + 1)), int(rng.integers(0, w - spec.size + 1)), bool(rng.random() < 0.5)
        else:
            top, left, flip = (h - spec.size) // 2, (w - spec.size) // 2, False
        t_from = clip.info.start_time + s / clip.info.fps
        plans.append(ClipPlan(s, tuple(s + j * spec.stride for j in range(spec.frames)), top, left, flip,
                              t_from, t_from + span / clip.info.fps))
    return plans


class _Failed:
    """A sample that failed to decode in a worker: carried to the main process as data, so
    the error arrives there as the worker's ``MediaError`` message, not a wrapped traceback."""

    def __init__(self, message: str):
        self.message = message


class _Clips(torch.utils.data.Dataset):
    """What the DataLoader's workers run: one item is one sample's clips for every modality."""

    def __init__(self, data: MediaData, augment: bool, epoch: int):
        self.data, self.augment, self.epoch = data, augment, epoch
        self._mels: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, position: int) -> tuple[dict[str, torch.Tensor], torch.Tensor] | _Failed:
        d = self.data
        clip = d.clips[position]
        try:
            plans = plan_clips(clip, d.spec, d.clips_per_sample, self.augment, d.seed, self.epoch)
            out = {}
            with av.open(clip.path) as container:
                if "video" in d.modalities:
                    out["video"] = self._video(container, clip, plans)
                if "audio" in d.modalities:
                    out["audio"] = self._audio(container, plans)
            if "flow" in d.modalities:
                out["flow"] = self._flow(clip, plans)
        except MediaError as e:
            return _Failed(str(e))
        except (av.FFmpegError, OSError, ValueError, RuntimeError, EOFError) as e:
            return _Failed(f"{clip.path}: cannot be decoded ({type(e).__name__}: {e}); the file changed or is "
                           "corrupt since it was checked at load time: re-encode or remove it")
        return out, d.targets[position]

    def _video(self, container: av.container.InputContainer, clip: ClipSource, plans: list[ClipPlan]) -> torch.Tensor:
        spec = self.data.spec
        h, w = resized_size(clip.info.height, clip.info.width, spec.resize)
        wanted = sorted({i for p in plans for i in p.frames})
        found, _ = decode_frames(container, clip.info, wanted,
                                 lambda f: f.reformat(width=w, height=h, format="rgb24").to_ndarray())
        missing = [i for i in wanted if i not in found]
        if missing:
            raise MediaError(f"{clip.path}: decoding stops before frame {missing[0]} of the {clip.info.frames} its "
                             "header declares (it decoded at load time: the file changed or is corrupt); "
                             "re-encode or remove it")
        s = spec.size
        out = np.empty((len(plans), 3, spec.frames, s, s), np.float32)
        for k, p in enumerate(plans):
            for t, i in enumerate(p.frames):
                crop = found[i][p.top:p.top + s, p.left:p.left + s]
                if p.flip:
                    crop = crop[:, ::-1]
                for c in range(3):  # uint8 -> normalised float by table look-up: one pass, no torch threads
                    out[k, c, t] = _NORMALISE[c][crop[..., c]]
        return torch.from_numpy(out)

    def _audio(self, container: av.container.InputContainer, plans: list[ClipPlan]) -> torch.Tensor:
        spec = self.data.spec
        sr = spec.sample_rate
        t0, t1 = min(p.t_from for p in plans), max(p.t_to for p in plans)
        wave = decode_audio(container, t0, t1, sr)
        out = []
        for p in plans:
            a = round((p.t_from - t0) * sr)
            n = round((p.t_to - p.t_from) * sr)
            piece = torch.from_numpy(np.ascontiguousarray(wave[a:a + n]))
            if len(piece) < n:
                piece = F.pad(piece, (0, n - len(piece)))
            out.append(self._log_mel(piece))
        return torch.stack(out)

    def _log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        spec = self.data.spec
        n = len(wave)
        mel = self._mels.get(n)
        if mel is None:
            import torchaudio.transforms as T

            # a 25-ms window at least (the usual speech/audio-event setting), two hops at least,
            # never longer than the clip's window itself (centre padding reflects at most n - 1)
            hop = max(1, math.ceil(n / spec.mel_frames))
            n_fft = 1 << max(math.ceil(math.log2(max(2 * hop, 0.025 * spec.sample_rate))), 4)
            n_fft = max(min(n_fft, 1 << max(int(math.log2(max(n, 2))), 1)), 2)
            mel = self._mels[n] = T.MelSpectrogram(sample_rate=spec.sample_rate, n_fft=n_fft, hop_length=hop,
                                                   n_mels=spec.n_mels, power=2.0)
        x = torch.log(mel(wave) + LOG_EPS)[None]  # (1, n_mels, frames)
        frames = x.shape[-1]
        if frames < spec.mel_frames:
            x = F.pad(x, (0, spec.mel_frames - frames), value=math.log(LOG_EPS))
        return x[..., : spec.mel_frames]

    def _flow(self, clip: ClipSource, plans: list[ClipPlan]) -> torch.Tensor:
        from .flow import read_flow

        spec = self.data.spec
        h, w = resized_size(clip.info.height, clip.info.width, spec.resize)
        wanted = sorted({i for p in plans for i in p.frames})
        flows = read_flow(clip.flow, wanted, self.data.flow_bound, size=(h, w))  # (2, T, h, w) pixels
        where = {i: j for j, i in enumerate(wanted)}
        out = []
        for p in plans:
            x = flows[:, [where[i] for i in p.frames], p.top:p.top + spec.size, p.left:p.left + spec.size]
            x = torch.from_numpy(np.ascontiguousarray(x)) / self.data.flow_bound
            if p.flip:
                x = x.flip(-1)
                x[0] = -x[0]  # a mirrored motion to the right is a motion to the left
            out.append(x)
        return torch.stack(out)


def _collate(items: list) -> tuple[dict[str, torch.Tensor], torch.Tensor] | _Failed:
    for item in items:
        if isinstance(item, _Failed):
            return item
    # numpy's concatenate: one thread, so the main process (num_workers=0) does not fight the trainer's threads
    inputs = {m: torch.from_numpy(np.concatenate([x[m].numpy() for x, _ in items])) for m in items[0][0]}
    return inputs, torch.stack([y for _, y in items])


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the workers are the parallelism; intra-op threads would oversubscribe


@dataclass(eq=False)
class MediaData:
    """Clips of some samples of a ``MediaDataset``, as the engine's ``BatchSource``."""

    clips: list[ClipSource]
    targets: torch.Tensor
    modalities: tuple[str, ...]
    spec: MediaSpec
    train: bool = False
    clips_per_sample: int = 1
    seed: int = 0
    flow_bound: float = 0.0

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def eval_batch_size(self) -> int:
        """Samples per evaluation batch: ``spec.eval_clip_batch`` clips, K per sample."""
        return max(1, self.spec.eval_clip_batch // self.clips_per_sample)

    def plan(self, position: int, *, train: bool, epoch: int) -> list[ClipPlan]:
        """The clips ``batches`` cuts from the sample at ``position`` (for inspection and tests)."""
        return plan_clips(self.clips[position], self.spec, self.clips_per_sample, train and self.train, self.seed, epoch)

    def batches(self, order: Sequence[torch.Tensor], *, train: bool, epoch: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """One ``(inputs, targets)`` per index tensor of ``order`` (``engine.BatchSource``):
        ``inputs[m]`` is (len(index) × K, *shape), the K clips of a sample consecutive."""
        dataset = _Clips(self, augment=train and self.train, epoch=epoch)
        workers = self.spec.num_workers
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=[[int(i) for i in index] for index in order], num_workers=workers,
            collate_fn=_collate, worker_init_fn=_worker_init if workers > 0 else None,
            pin_memory=torch.cuda.is_available())
        batches = iter(loader)
        try:
            while True:
                if workers == 0:
                    # decoding in this process: run the clip transforms on one thread, as a worker does
                    # (small tensors gain nothing from intra-op threads and lose much when cores are busy)
                    threads = torch.get_num_threads()
                    torch.set_num_threads(1)
                try:
                    batch = next(batches, None)
                finally:
                    if workers == 0:
                        torch.set_num_threads(threads)
                if batch is None:
                    return
                if isinstance(batch, _Failed):
                    raise MediaError(batch.message)
                yield batch
        finally:
            # stop the workers now, not whenever the garbage collector finds the iterator (an
            # exception's traceback keeps this frame alive)
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
