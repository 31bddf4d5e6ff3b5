"""A run's data: its data set loaded (an array dataset or a media manifest), its
modalities chosen, and the sources T, T', V and test cut from it.

Every engine starts a run's data here, so that the in-process runner, the Ray trainer
workers and the probe trials see the same splits for the same seed.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.spec import RunSpec
from . import realdata
from .arrays import Dataset, DatasetError, check_new_directory, load_dataset, write_whole
from .media.dataset import MediaDataset, load_media_dataset
from .media.manifest import is_media_path
from .sources import BatchSource, TensorData
from .splits import Splits, check_splits, make_splits
from .synthetic import PRESETS, generate_preset

logger = logging.getLogger("gblend_ray.data")

AnyDataset = Dataset | MediaDataset


@dataclass
class RunData:
    """The dataset cut into the sources a run needs: T, T', V and test. Arrays become
    tensors in memory; a media manifest becomes clip sources decoded by worker
    processes, the test source with ``data.media.eval_clips`` clips per video."""

    dataset: AnyDataset
    splits: Splits
    train: BatchSource
    train_subset: BatchSource
    heldout: BatchSource
    test: BatchSource


def ensure_dataset(spec: RunSpec) -> AnyDataset:
    """Load ``data.path`` (an array dataset or a media manifest), first writing the
    synthetic preset or real data set ``data.preset`` names there if the directory does not
    exist yet; keep the modalities ``data.modalities`` names."""
    path = Path(spec.data.path)
    if is_media_path(path):
        dataset = load_media_dataset(path, spec.data.media, spec.data.modalities)
    else:
        if spec.data.preset and not (path / "meta.yaml").exists():
            check_new_directory(path, f"data.preset {spec.data.preset!r}",
                                note="has no meta.yaml, so it is not a dataset, but it ")
            try:
                write_preset(spec.data.preset, path, spec.data.preset_seed)
            except (DatasetError, OSError):
                # Processes that each load their data (a Tuner's trials) race to write it; the
                # one that lost finds the winner's set whole (``write_whole``) and reads it.
                if not (path / "meta.yaml").is_file():
                    raise
        dataset = select_modalities(load_dataset(path), spec.data.modalities)
    return dataset


def write_preset(name: str, path: Path, seed: int) -> Path:
    """Write the synthetic preset or the real data set ``name`` to ``path``, whole
    (``write_whole``)."""
    if name in PRESETS:
        logger.info("writing synthetic preset %r to %s", name, path)
        return write_whole(path, f"data.preset {name!r}", lambda where: generate_preset(name, where, seed=seed))
    if name in realdata.DATASETS:
        logger.info("writing real data set %r to %s", name, path)
        return realdata.make_dataset(name, path, seed=seed)
    raise ValueError(f"data.preset: unknown {name!r}; synthetic presets are {sorted(PRESETS)}, "
                     f"real data sets {sorted(realdata.DATASETS)}")


def run_splits(spec: RunSpec, dataset: AnyDataset) -> Splits:
    """The run's T, V, T' and test (seeded by the run's seed), checked (``check_splits``):
    an unusable split fails here, before any epoch trains; a weak one is logged."""
    d = spec.data
    splits = make_splits(dataset, heldout_fraction=d.heldout_fraction, subset_size=d.subset_size,
                         seed=spec.seed, val_fraction=d.val_fraction, test_fraction=d.test_fraction)
    for warning in check_splits(dataset, splits):
        logger.warning("%s", warning)
    return splits


def select_modalities(dataset: AnyDataset, modalities: list[str] | None) -> AnyDataset:
    if not modalities:
        return dataset
    missing = [m for m in modalities if m not in dataset.modalities]
    if missing:
        raise ValueError(f"data.modalities names {missing}, which the dataset at {dataset.path} lacks; "
                         f"its modalities are {list(dataset.modalities)}")
    return dataclasses.replace(dataset, modalities={m: dataset.modalities[m] for m in modalities})


def prepare_data(spec: RunSpec, dataset: AnyDataset | None = None, device: str | torch.device = "cpu") -> RunData:
    """The run's sources, from ``dataset`` (as the driver loaded it) or from ``data.path``:
    arrays as tensors on ``device``; clips decoded into pinned memory when ``device`` is a
    GPU, so that the engine's copy there does not block."""
    dataset = select_modalities(dataset or ensure_dataset(spec), spec.data.modalities)
    d = spec.data
    splits = run_splits(spec, dataset)

    if isinstance(dataset, MediaDataset):
        pin = torch.device(device).type == "cuda"

        def clips(idx: np.ndarray, train: bool = False, k: int = 1) -> BatchSource:
            return dataset.source(idx, train=train, clips_per_sample=k, seed=spec.seed, pin_memory=pin)

        return RunData(dataset, splits, clips(splits.train, train=True), clips(splits.train_subset),
                       clips(splits.heldout), clips(splits.test, k=d.media.eval_clips))

    def tensors(idx: np.ndarray) -> TensorData:
        return TensorData.from_arrays(dataset.modalities, dataset.labels, idx, device)

    return RunData(dataset, splits, tensors(splits.train), tensors(splits.train_subset),
                   tensors(splits.heldout), tensors(splits.test))
