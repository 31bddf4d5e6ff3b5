"""The in-process runner: one whole run without Ray.

It walks the method's plan (``plan.plan_segments``), runs each G-Blend round's probes
one after another, and trains every segment with ``engine.train_epochs``. It is the
reference the Ray engine is tested against (same seed and config → same weights) and
the ``--inline`` mode. ``train_plan`` is the part the Ray worker loop shares: it walks
the segments and asks a callback for each segment's weights.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol
from pathlib import Path

import numpy as np
import torch

from .data import Dataset, Splits, load_dataset, make_splits
from .engine import BatchSource, TensorData, evaluate, make_optimizer, metrics_of, per_class_top1, predict, train_epochs
from .media import MediaDataset, is_media_path, load_media_dataset
from .model import MultiHeadNet, build_model, load_encoder_weights
from .plan import FINETUNE, FUSED, Method, Segment, fixed_weights, lr_at, parse_method, plan_segments
from .probe import ProbeResult, probe_seed, run_probe
from .rounds import decide_round
from .spec import RunSpec
from .stopping import EarlyStopping
from .synthetic import generate_preset

logger = logging.getLogger("gblend_ray.runner")


class RunObserver(Protocol):
    """What a run tells the outside (tracking, progress): called on the process that
    trains (rank 0 on Ray). Implemented in the interfaces layer (``tracking.RunTracker``)."""

    def on_epoch(self, record: dict) -> None: ...
    def on_round(self, record: dict) -> None: ...
    def on_end(self, results: dict) -> None: ...


@dataclass
class RunData:
    """The dataset cut into the sources a run needs: T, T', V and test. Arrays become
    tensors in memory; a media manifest becomes clip sources decoded by worker
    processes, the test source with ``data.media.eval_clips`` clips per video."""

    dataset: Dataset | MediaDataset
    splits: Splits
    train: BatchSource
    train_subset: BatchSource
    heldout: BatchSource
    test: BatchSource


def ensure_dataset(spec: RunSpec) -> Dataset | MediaDataset:
    """Load ``data.path`` (an array dataset or a media manifest), first writing the
    synthetic preset there if one is named and the directory does not exist yet; keep
    the modalities ``data.modalities`` names."""
    path = Path(spec.data.path)
    if is_media_path(path):
        dataset = load_media_dataset(path, spec.data.media, spec.data.modalities)
    else:
        if spec.data.preset and not (path / "meta.yaml").exists():
            logger.info("writing synthetic preset %r to %s", spec.data.preset, path)
            generate_preset(spec.data.preset, path, seed=spec.data.preset_seed)
        dataset = select_modalities(load_dataset(path), spec.data.modalities)
    if dataset.task == "multilabel" and spec.blend.metric != "loss":
        raise ValueError(f"{dataset.path} is a multi-label task: set blend.metric: loss "
                         "(top-1 accuracy is not defined for it)")
    return dataset


def select_modalities(dataset: Dataset, modalities: list[str] | None) -> Dataset:
    if not modalities:
        return dataset
    missing = [m for m in modalities if m not in dataset.modalities]
    if missing:
        raise ValueError(f"data.modalities names {missing}, which the dataset at {dataset.path} lacks; "
                         f"its modalities are {list(dataset.modalities)}")
    return dataclasses.replace(dataset, modalities={m: dataset.modalities[m] for m in modalities})


def prepare_data(spec: RunSpec, dataset: Dataset | None = None, device: str = "cpu") -> RunData:
    dataset = select_modalities(dataset or ensure_dataset(spec), spec.data.modalities)
    d = spec.data
    splits = make_splits(dataset, heldout_fraction=d.heldout_fraction, subset_size=d.subset_size,
                         seed=spec.seed, val_fraction=d.val_fraction, test_fraction=d.test_fraction)

    if isinstance(dataset, MediaDataset):
        def clips(idx: np.ndarray, train: bool = False, k: int = 1) -> BatchSource:
            return dataset.source(idx, train=train, clips_per_sample=k, seed=spec.seed)

        return RunData(dataset, splits, clips(splits.train, train=True), clips(splits.train_subset),
                       clips(splits.heldout), clips(splits.test, k=d.media.eval_clips))

    def tensors(idx: np.ndarray) -> TensorData:
        return TensorData.from_arrays(dataset.modalities, dataset.labels, idx, device)

    return RunData(dataset, splits, tensors(splits.train), tensors(splits.train_subset),
                   tensors(splits.heldout), tensors(splits.test))


def new_model(spec: RunSpec, dataset: Dataset, method: Method | None = None) -> MultiHeadNet:
    """The run's initial model: the same parameters for the same seed, in every engine.
    Method ``dropout`` puts ``baselines.dropout`` on the fused head's input; method
    ``uncertainty`` adds the learned loss weights."""
    model_spec = spec.model
    if method is not None and method.kind == "dropout":
        model_spec = dataclasses.replace(model_spec, fusion_dropout=spec.baselines.dropout)
    torch.manual_seed(spec.seed)
    return build_model(model_spec, dataset.shapes(), dataset.num_classes,
                       learned_weights=method is not None and method.kind == "uncertainty")


def method_of(spec: RunSpec, dataset: Dataset) -> Method:
    dataset = select_modalities(dataset, spec.data.modalities)
    return parse_method(spec.method, list(dataset.modalities), default_schedule=spec.blend.schedule)


def segments_of(spec: RunSpec, method: Method) -> list[Segment]:
    b = spec.blend
    return plan_segments(method, spec.train.epochs, b.warmup_epochs, b.super_epoch, b.probe_epochs,
                         spec.baselines.pretrain_epochs)


def lr_schedule(spec: RunSpec, offset: int = 0) -> Callable[[int], float]:
    """The learning rate at an epoch; ``offset`` restarts the schedule there (fine-tuning)."""
    o = spec.optim
    return lambda epoch: lr_at(epoch - offset, o.lr, o.lr_schedule, spec.train.epochs)


def early_stopping(spec: RunSpec, method: Method, model: MultiHeadNet, heldout: TensorData) -> EarlyStopping | None:
    """The ``early_stop`` baseline's monitor: the fused head's loss on V after every epoch."""
    if method.kind != "early_stop":
        return None
    return EarlyStopping(model, lambda: evaluate(model, heldout, [FUSED], spec.train.eval_batch_size)[FUSED]["loss"],
                         spec.baselines.patience)


def load_pretrained(model: MultiHeadNet, optimizer: torch.optim.Optimizer, directory: Path) -> dict[str, Path]:
    """End of a ``pretrain`` run's uni-modal phase: save every encoder's state dict to
    ``directory/<modality>.pt`` and load it back into the fused model's encoder with
    ``load_encoder_weights`` (the files can start other runs as ``model.weights``), then
    clear the optimizer's state so fine-tuning starts fresh (as a separately trained
    model would be loaded into a new one). The fusion head is still at its
    initialisation: with weight 0 it got no gradient in the uni-modal phase."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for m in model.modalities:
        paths[m] = directory / f"{m}.pt"
        torch.save(model.encoders[m].state_dict(), paths[m])
    for m, path in paths.items():
        load_encoder_weights(model.encoders[m], str(path), m)
    optimizer.state.clear()
    return paths


def trained_parameters(model: MultiHeadNet, method: Method) -> list:
    """A uni-modal run owns only its branch; every other method trains the whole network.
    Learned loss weights are a group of their own without weight decay (which would pull
    every weight towards 1) and without SGD momentum: with it each s_i overshoots its
    fixed point exp(−s_i) = 1/(2 L_i) and the losses swing with it (quickstart, seed 0:
    test top-1 57.0 with momentum 0.9, 64.5 without)."""
    if method.kind == "uni":
        return model.parameters_of(method.modality)
    if model.log_vars is not None:
        learned = {id(p) for p in model.log_vars.parameters()}
        return [{"params": [p for p in model.parameters() if id(p) not in learned]},
                {"params": list(model.log_vars.parameters()), "weight_decay": 0.0, "momentum": 0.0}]
    return list(model.parameters())


def full_heads(spec: RunSpec, method: Method) -> tuple[str, ...]:
    """Heads whose own parameters train at full weight (the ``head_train`` safeguard)."""
    if method.kind == "gblend" and spec.blend.safeguard == "head_train":
        return (FUSED,)
    return ()


def run_probes(spec: RunSpec, model: MultiHeadNet, data: RunData, segment: Segment) -> dict[str, ProbeResult]:
    """Algorithm 1 at ``segment.start``: every head's probe, one after another, each on
    its own copy of ``model``."""
    return {
        head: run_probe(
            copy.deepcopy(model), head, train=data.train, train_subset=data.train_subset,
            heldout=data.heldout, optim=spec.optim, epochs=segment.probe_epochs,
            start_epoch=segment.start, seed=probe_seed(spec.seed, segment.start, index),
            metric=spec.blend.metric, batch_size=spec.train.batch_size, lr_at=lr_schedule(spec),
        )
        for index, head in enumerate(model.head_names)
    }


def decide(spec: RunSpec, method: Method, segment: Segment, results: dict[str, ProbeResult],
           previous: dict[str, float] | None) -> tuple[dict[str, float], dict]:
    """The round's weights and trajectory record from its probes' results."""
    return decide_round(
        {h: r.measurement for h, r in results.items()}, spec.blend, epoch=segment.start,
        probe_epochs=segment.probe_epochs, prediction_head=method.prediction_head, previous=previous,
        probe_info={h: r.info() for h, r in results.items()},
    )


def train_plan(
    spec: RunSpec,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TensorData,
    method: Method,
    segments: list[Segment],
    weights_for: Callable[[Segment], dict[str, float]],
    *,
    rank: int = 0,
    world_size: int = 1,
    on_epoch: Callable[[dict], None] | None = None,
    monitor: Callable[[], dict] | None = None,
    stopper: EarlyStopping | None = None,
    pretrained_dir: Path | None = None,
) -> list[dict]:
    """Train every segment under the weights ``weights_for`` gives it; return per-epoch
    records (with ``monitor()``'s measurements merged in, when given). The in-process
    runner and the Ray worker loop both walk a run with this. A ``finetune`` segment
    first loads the pre-trained encoders (``load_pretrained``, files in
    ``pretrained_dir``) and restarts the learning-rate schedule; ``stopper`` ends the
    run early and puts the best epoch's model back."""
    history: list[dict] = []
    core = getattr(model, "module", model)  # under DDP, the MultiHeadNet
    for segment in segments:
        if segment.phase == FINETUNE:
            if pretrained_dir is None:
                raise ValueError("method pretrain needs a directory for the pre-trained encoders")
            load_pretrained(core, optimizer, pretrained_dir)
        weights = weights_for(segment)
        tag = {f"weights/{h}": w for h, w in weights.items()}

        def note(record: dict, tag: dict = tag) -> bool:
            history.append({**record, **tag, **(monitor() if monitor is not None else {})})
            if on_epoch is not None:
                on_epoch(history[-1])
            return stopper is not None and stopper.step(record["epoch"])

        train_epochs(
            model, data, optimizer, weights, segment.epochs, start_epoch=segment.start,
            batch_size=spec.train.batch_size, seed=spec.seed,
            lr_at=lr_schedule(spec, segment.start if segment.phase == FINETUNE else 0),
            full_heads=full_heads(spec, method), rank=rank, world_size=world_size, on_epoch=note,
        )
        if stopper is not None and stopper.stopped_at is not None:
            break
    if stopper is not None:
        stopper.restore()
    return history


def epoch_metrics(model: MultiHeadNet, data: RunData) -> dict[str, float]:
    """Every head's loss and top-1 (multi-label: mAP) on T' (``train/``) and V
    (``val/``): the per-epoch train and validation curves (the paper's Fig. 4)."""
    out = {}
    for split, part in (("train", data.train_subset), ("val", data.heldout)):
        for head, m in evaluate(model, part).items():
            out.update({f"{split}/{head}/{k}": m[k] for k in ("loss", "top1", "mAP") if k in m})
    return out


def final_results(spec: RunSpec, model: MultiHeadNet, data: RunData, method: Method,
                  trajectory: list[dict], history: list[dict], seconds: float,
                  stopper: EarlyStopping | None = None) -> dict:
    """``results.json``: every head's test metrics, the prediction head's under ``test``."""
    predictions = predict(model, data.test, batch_size=spec.train.eval_batch_size)
    heads = {h: metrics_of(p, data.test.clips_per_sample) for h, p in predictions.items()}
    return {
        "method": method.name,
        "seed": spec.seed,
        "prediction_head": method.prediction_head,
        "test": heads[method.prediction_head],
        "heads": heads,
        "classes": list(data.dataset.classes),
        "per_class": (per_class_top1(predictions, data.dataset.num_classes)
                      if data.dataset.task == "multiclass" else None),
        "final_weights": (trajectory[-1]["weights"] if trajectory
                          else model.learned_weights() or fixed_weights(method, model.modalities)),
        "early_stopping": stopper.summary() if stopper is not None else None,
        "skipped": dict(getattr(data.dataset, "skipped", {})),
        "splits": data.splits.sizes(),
        "history": history,
        "seconds": seconds,
        "config": asdict(spec),
    }


def run_inline(spec: RunSpec, out_dir: str | Path | None = None, dataset: Dataset | None = None,
               observer: RunObserver | None = None) -> dict:
    """Run one experiment in this process; write ``results.json`` and ``trajectory.json``
    to ``out_dir`` when given. Returns the results (with the trajectory under its key)."""
    began = time.perf_counter()
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    data = prepare_data(spec, dataset, spec.train.device)
    method = method_of(spec, data.dataset)
    model = new_model(spec, data.dataset, method).to(spec.train.device)
    optimizer = make_optimizer(trained_parameters(model, method), spec.optim)
    stopper = early_stopping(spec, method, model, data.heldout)
    trajectory: list[dict] = []

    def weights_for(segment: Segment) -> dict[str, float]:
        if not segment.estimates:
            return fixed_weights(method, model.modalities, segment.phase)
        previous = trajectory[-1]["weights"] if trajectory else None
        weights, record = decide(spec, method, segment, run_probes(spec, model, data, segment), previous)
        trajectory.append(record)
        if observer is not None:
            observer.on_round(record)
        logger.info("epoch %d: weights %s", segment.start, {h: round(w, 3) for h, w in weights.items()})
        return weights

    with tempfile.TemporaryDirectory(prefix="gblend-pretrained-") as scratch:
        history = train_plan(spec, model, optimizer, data.train, method, segments_of(spec, method), weights_for,
                             monitor=lambda: epoch_metrics(model, data),
                             on_epoch=observer.on_epoch if observer is not None else None, stopper=stopper,
                             pretrained_dir=Path(out_dir) / "pretrained" if out_dir is not None else Path(scratch))
    results = final_results(spec, model, data, method, trajectory, history, time.perf_counter() - began, stopper)
    if observer is not None:
        observer.on_end(results)
    if out_dir is not None:
        write_run(out_dir, results, trajectory)
    return {**results, "trajectory": trajectory}


def write_run(out_dir: str | Path, results: dict, trajectory: list[dict]) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False))
    (out / "trajectory.json").write_text(json.dumps(trajectory, indent=2, allow_nan=False))
