"""A media data set: a checked manifest, and its samples' clips as the engine's ``BatchSource``.

Files are checked at load time: FFmpeg opens it, it has a video stream with a frame rate,
an audio stream if ``audio`` is among the modalities, at least ``frames * stride`` frames
within ``[start, end]``, and its last needed frame decodes (a file cut short still opens
when its index precedes the data, "faststart"; only decoding finds the frames missing).
With ``flow``, its optical flow must be in ``flow_dir`` (``flow.py``) with the same frame
count and rate. A bad file stops loading with a :class:`MediaError` that names it and says
what is wrong (``on_bad_sample: error``), or is left out and recorded in
``MediaDataset.skipped`` (``on_bad_sample: skip``).

``MediaData.batches`` runs a ``torch.utils.data.DataLoader`` with the engine's batches as
its ``batch_sampler`` and ``num_workers`` worker processes (one torch thread each, kept
from pass to pass), so the batches, their order and their augmentation match the
in-memory ``TensorData`` contract.
A file that fails to decode inside a worker surfaces as a :class:`MediaError` naming it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch

from ...core.spec import MediaSpec
from ..arrays import LabelledSamples
from .clips import ClipPlan, ClipSource, LogMel, audio_clips, flow_clips, plan_clips, video_clips
from .decode import count_decodable, decode_frames, video_info
from .flow import FlowIndex, load_flow_index
from .manifest import ManifestRow, MediaError, read_manifest

MODALITIES = ("video", "audio", "flow")


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
               train: bool, clips_per_sample: int = 1, seed: int = 0, pin_memory: bool = False) -> MediaData:
        """The samples ``indices`` as a ``BatchSource``. ``train``: whether ``batches(train=True)``
        augments (False: an evaluation source, always the centre clip and crop);
        ``clips_per_sample``: K clips per sample (the paper's video-level evaluation);
        ``pin_memory``: batches in page-locked memory, for a run on CUDA."""
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
                         flow_bound=self.flow.bound if self.flow is not None else 0.0, pin_memory=pin_memory)


def load_media_dataset(path: str | Path, spec: MediaSpec, modalities: list[str] | None = None) -> MediaDataset:
    """Read the manifest ``path`` (file or directory) and check every file it names.

    ``modalities`` defaults to video and audio, plus flow when ``spec.flow_dir`` is set.
    Bad files raise or are skipped per ``spec.on_bad_sample`` (module docstring).
    """
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


class _Failed:
    """A sample that failed to decode in a worker: carried to the main process as data, so
    the error arrives there as the worker's ``MediaError`` message, not a wrapped traceback."""

    def __init__(self, message: str):
        self.message = message


class _Clips(torch.utils.data.Dataset):
    """What the DataLoader's workers run: one item is one sample's clips for every modality,
    asked for as ``(position, augment, epoch)``, so that one set of persistent workers serves
    every pass over the source."""

    def __init__(self, data: MediaData):
        # MediaData's fields, not the MediaData itself: it holds the loader that holds this
        # object, and without a reference cycle its workers end as soon as it is dropped.
        self.clips, self.targets, self.modalities = data.clips, data.targets, data.modalities
        self.spec, self.clips_per_sample, self.seed, self.flow_bound = (data.spec, data.clips_per_sample, data.seed,
                                                                        data.flow_bound)
        self._log_mel = LogMel(data.spec)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: tuple[int, bool, int]) -> tuple[dict[str, torch.Tensor], torch.Tensor] | _Failed:
        position, augment, epoch = key
        clip = self.clips[position]
        try:
            plans = plan_clips(clip, self.spec, self.clips_per_sample, augment, self.seed, epoch)
            out = {}
            with av.open(clip.path) as container:
                if "video" in self.modalities:
                    out["video"] = video_clips(container, clip, plans, self.spec)
                if "audio" in self.modalities:
                    out["audio"] = audio_clips(container, plans, self._log_mel)
            if "flow" in self.modalities:
                out["flow"] = flow_clips(clip, plans, self.spec, self.flow_bound)
        except MediaError as e:
            return _Failed(str(e))
        except (av.FFmpegError, OSError, ValueError, RuntimeError, EOFError) as e:
            return _Failed(f"{clip.path}: cannot be decoded ({type(e).__name__}: {e}); the file changed or is "
                           "corrupt since it was checked at load time: re-encode or remove it")
        return out, self.targets[position]


class _Order:
    """A DataLoader's batch sampler whose batches are set before each pass (a persistent
    DataLoader iterates its one sampler anew at every pass)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, bool, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, bool, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


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
    """Clips of some samples of a ``MediaDataset``, as the engine's ``BatchSource``.

    With ``spec.num_workers`` > 0 its DataLoader's worker processes persist from pass to
    pass (each epoch, each evaluation), ``spec.prefetch_factor`` batches ahead each, and end
    when the source is dropped. ``pin_memory``: batches come in page-locked memory, which the
    engine copies to a GPU without blocking (set for a run on CUDA)."""

    clips: list[ClipSource]
    targets: torch.Tensor
    modalities: tuple[str, ...]
    spec: MediaSpec
    train: bool = False
    clips_per_sample: int = 1
    seed: int = 0
    flow_bound: float = 0.0
    pin_memory: bool = False
    _loader: torch.utils.data.DataLoader | None = field(default=None, init=False, repr=False)
    _busy: bool = field(default=False, init=False, repr=False)

    def __getstate__(self) -> dict:
        # worker processes do not travel: a copy (pickled to a Ray worker) starts its own
        return {**self.__dict__, "_loader": None, "_busy": False}

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def eval_batch_size(self) -> int:
        """Samples per evaluation batch: ``spec.eval_clip_batch`` clips, K per sample."""
        return max(1, self.spec.eval_clip_batch // self.clips_per_sample)

    def plan(self, position: int, *, train: bool, epoch: int) -> list[ClipPlan]:
        """The clips ``batches`` cuts from the sample at ``position`` (for inspection and tests)."""
        return plan_clips(self.clips[position], self.spec, self.clips_per_sample, train and self.train, self.seed, epoch)

    def _new_loader(self, persistent: bool) -> torch.utils.data.DataLoader:
        workers = self.spec.num_workers
        return torch.utils.data.DataLoader(
            _Clips(self), batch_sampler=_Order(), num_workers=workers, collate_fn=_collate,
            worker_init_fn=_worker_init if workers > 0 else None, pin_memory=self.pin_memory,
            persistent_workers=persistent, prefetch_factor=self.spec.prefetch_factor if workers > 0 else None)

    def batches(self, order: Sequence[torch.Tensor], *, train: bool, epoch: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """One ``(inputs, targets)`` per index tensor of ``order`` (``engine.BatchSource``):
        ``inputs[m]`` is (len(index) × K, *shape), the K clips of a sample consecutive."""
        augment = train and self.train
        keys = [[(int(i), augment, epoch) for i in index] for index in order]
        workers = self.spec.num_workers
        # A pass begun while another pass over this source is still open gets workers of its
        # own: restarting the persistent ones would cut the open pass short.
        reuse = workers > 0 and not self._busy
        if reuse:
            if self._loader is None:
                self._loader = self._new_loader(persistent=True)
            loader, self._busy = self._loader, True
        else:
            loader = self._new_loader(persistent=False)
        loader.batch_sampler.batches = keys
        batches = iter(loader)
        finished = False
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
                    finished = True
                    return
                if isinstance(batch, _Failed):
                    raise MediaError(batch.message)
                yield batch
        finally:
            if reuse:
                self._busy = False
            if not (reuse and finished):
                # stop the workers now, not whenever the garbage collector finds the iterator (an
                # exception's traceback keeps this frame alive); persistent ones left mid-pass go too
                shutdown = getattr(batches, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()
                if reuse:
                    self._loader = None
