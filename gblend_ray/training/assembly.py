"""Run assembly: the set-up, probes, round decisions and plan walk every engine shares.

The in-process runner (``runner.py``), the Ray Train worker loop and the Ray Tune probe
trials (``distributed/``) all start a run with ``assemble`` (threads → data → method →
model → optimizer → stopper), run a head's probe with ``run_head_probe``, turn a round's
probe results into weights with ``decide``, and walk the method's segments with
``train_plan``, which trains through ``engine.train_epochs``. So the engines cannot
disagree about a run's initial parameters, its probes or its super-epochs: with one
worker and the same seed they give the same weights. They also compute alike: the run's
``Compute`` (``train.precision``, ``train.channels_last``) reaches its training, its
evaluations and every probe from here, and a CUDA out-of-memory error in any of them is
re-raised here naming the trainer or the probe's head (``compute.GPUMemoryError``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..core.plan import FINETUNE, FUSED, Method, Segment, fixed_weights, lr_at, parse_method, plan_segments
from ..core.rounds import applied_at, decide_round, estimation_summary
from ..core.spec import RunSpec
from ..data.loading import AnyDataset, RunData, prepare_data, select_modalities
from ..data.sources import BatchSource, seeded_subset
from ..storage.rundir import RESULTS, TRAJECTORY, RunDir
from .balancing import balancing_rule
from .compute import FP32, Compute, compute_of, explain_out_of_memory, memory_fixes, to_channels_last
from .encoders import adopt_encoders, user_encoders
from .engine import evaluate, make_optimizer, metrics_of, per_class_top1, predict, train_epochs
from .fusion import adopt_fusions, user_fusions
from .model import MultiHeadNet, build_model, load_encoder_weights
from .objective import StepRule
from .probe import ProbeResult, probe_seed, run_probe
from .stopping import EarlyStopping


class RunObserver(Protocol):
    """What a run tells the outside (tracking, progress), on the process that drives the
    run. Implemented in the interfaces layer (``tracking.RunTracker``, ``progress``).

    ``on_resume`` comes first when a run resumes from the checkpoint at ``epoch``, with
    the epochs and rounds recorded up to there (an observer adds what it missed); after
    it, records of epochs and rounds it has seen may come again."""

    def on_resume(self, epoch: int, history: list[dict], rounds: list[dict]) -> None: ...
    def on_epoch(self, record: dict) -> None: ...
    def on_round(self, record: dict) -> None: ...
    def on_end(self, results: dict) -> None: ...


@dataclass
class Assembly:
    """A run, set up: its data, method, model, optimizer, early-stopping monitor, plan and,
    for a balancing method, the engine's step rule that makes its updates; how it computes
    and, with fp16, its gradient scaler (one for the whole run, so the loss scale found in
    one segment carries into the next)."""

    spec: RunSpec
    data: RunData
    method: Method
    model: MultiHeadNet
    optimizer: torch.optim.Optimizer
    stopper: EarlyStopping | None
    segments: list[Segment]
    rule: StepRule | None = None
    compute: Compute = FP32
    scaler: torch.amp.GradScaler | None = None


def extensions(spec: RunSpec | None = None) -> dict[str, dict]:
    """The encoders and fusions a user's code registered in this process (those ``spec``
    uses, when given). Every process that assembles the run (a Ray Train worker, a probe
    trial, a sweep trial) must have them: they travel pickled, by value when defined in a
    script or a notebook, by reference (the module must be importable there: the job's
    working directory or ``runtime_env``'s ``py_modules``) when defined in a module."""
    encoders, fusions = user_encoders(), user_fusions()
    if spec is not None:
        used = {spec.model.encoder, *spec.model.encoders.values()}
        encoders = {n: b for n, b in encoders.items() if n in used}
        fusions = {n: b for n, b in fusions.items() if n == spec.model.fusion}
    return {"encoders": encoders, "fusions": fusions}


def adopt_extensions(ext: dict[str, dict] | None) -> None:
    """Register in this process what ``extensions()`` gave on the driver."""
    if ext:
        adopt_encoders(ext.get("encoders") or {})
        adopt_fusions(ext.get("fusions") or {})


def assemble(spec: RunSpec, dataset: AnyDataset | None = None, device: str | torch.device = "cpu") -> Assembly:
    """Set a run up in this process: ``train.threads``, its data (``dataset`` as the driver
    loaded it, or ``data.path``), its method, the seeded initial model on ``device``, the
    optimizer over the parameters the method trains, the early-stopping monitor, the
    method's segments and its step rule (``balancing.balancing_rule``). With
    ``train.channels_last`` the model's kernels are channels-last before the optimizer
    takes them."""
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    data = prepare_data(spec, dataset, device=device)
    method = method_of(spec, data.dataset)
    compute = compute_of(spec)
    model = new_model(spec, data.dataset, method).to(device)
    if compute.channels_last:
        to_channels_last(model)
    optimizer = make_optimizer(trained_parameters(model, method), spec.optim)
    rule = balancing_rule(spec, method, model, data.dataset.num_classes, data.dataset.task)
    return Assembly(spec, data, method, model, optimizer, early_stopping(spec, method, model, data.heldout),
                    segments_of(spec, method), rule, compute, compute.grad_scaler(torch.device(device)))


def new_model(spec: RunSpec, dataset: AnyDataset, method: Method | None = None) -> MultiHeadNet:
    """The run's initial model: the same parameters for the same seed, in every engine.
    Method ``dropout`` puts ``baselines.dropout`` on the fused head's input; method
    ``uncertainty`` adds the learned loss weights."""
    model_spec = spec.model
    if method is not None and method.kind == "dropout":
        model_spec = dataclasses.replace(model_spec, fusion_dropout=spec.baselines.dropout)
    torch.manual_seed(spec.seed)
    return build_model(model_spec, dataset.shapes(), dataset.num_classes,
                       learned_weights=method is not None and method.kind == "uncertainty")


def method_of(spec: RunSpec, dataset: AnyDataset) -> Method:
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


def early_stopping(spec: RunSpec, method: Method, model: MultiHeadNet, heldout: BatchSource) -> EarlyStopping | None:
    """The ``early_stop`` baseline's monitor: the fused head's loss on V after every epoch."""
    if method.kind != "early_stop":
        return None
    compute = compute_of(spec)
    return EarlyStopping(model, lambda: evaluate(model, heldout, [FUSED], spec.train.eval_batch_size,
                                                 compute)[FUSED]["loss"], spec.baselines.patience)


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


# ------------------------------------------------------------------------------ rounds


def run_head_probe(spec: RunSpec, model: MultiHeadNet, data: RunData, head: str, *, head_index: int, epoch: int,
                   probe_epochs: int) -> ProbeResult:
    """Algorithm 1 for one head from the checkpoint in ``model`` (trained in place: pass a
    copy), seeded by the run's seed, the boundary and the head, so every engine runs the
    same probe. With ``probes.subset`` < 1 it trains on that fraction of T, one subset per
    boundary for every head. It computes as the run does (``train.precision``,
    ``train.channels_last``)."""
    train = seeded_subset(data.train, spec.probes.subset, probe_seed(spec.seed, epoch, -1))
    with explain_out_of_memory(f"the probe of head {head!r} (round at epoch {epoch})",
                               memory_fixes(spec, probe=True)):
        return run_probe(model, head, train=train, train_subset=data.train_subset, heldout=data.heldout,
                         optim=spec.optim, epochs=probe_epochs, start_epoch=epoch,
                         seed=probe_seed(spec.seed, epoch, head_index), metric=spec.blend.metric,
                         batch_size=spec.train.batch_size, lr_at=lr_schedule(spec), compute=compute_of(spec))


def run_probes(spec: RunSpec, model: MultiHeadNet, data: RunData, segment: Segment) -> dict[str, ProbeResult]:
    """Algorithm 1 at ``segment.start``: every head's probe, one after another, each on
    its own copy of ``model``."""
    return {head: run_head_probe(spec, copy.deepcopy(model), data, head, head_index=index, epoch=segment.start,
                                 probe_epochs=segment.probe_epochs)
            for index, head in enumerate(model.head_names)}


def decide(spec: RunSpec, method: Method, segment: Segment, results: dict[str, ProbeResult],
           previous: dict[str, float] | None) -> tuple[dict[str, float], dict]:
    """The round's weights and trajectory record from its probes' results (``heads`` in
    the order of ``results``). The record's ``applied`` says where its weights take effect:
    the boundary's first step (Algorithm 3), or, with ``probes.overlap``, null until the
    trainer records the step it switched at (``Coordinator.record_training``)."""
    weights, record = decide_round(
        {h: r.measurement for h, r in results.items()}, spec.blend, epoch=segment.start,
        probe_epochs=segment.probe_epochs, prediction_head=method.prediction_head, previous=previous,
        probe_info={h: r.info() for h, r in results.items()},
    )
    record["applied"] = None if spec.probes.overlap else applied_at(segment.start, 0)
    return weights, record


# ------------------------------------------------------------------------------ the plan


def train_plan(
    a: Assembly,
    model: torch.nn.Module,
    weights_for: Callable[[Segment], dict[str, float]],
    *,
    segments: list[Segment] | None = None,
    rank: int = 0,
    world_size: int = 1,
    on_epoch: Callable[[dict], None] | None = None,
    monitor: Callable[[], dict] | None = None,
    pretrained_dir: Path | None = None,
    switch: Callable[[int, int], dict[str, float] | None] | None = None,
) -> list[dict]:
    """Train ``segments`` (default: all of the run's) of ``a`` under the weights
    ``weights_for`` gives each; ``model`` is ``a.model`` or its DDP wrapper. Returns
    per-epoch records (with ``monitor()``'s measurements merged in, when given). A
    ``finetune`` segment first loads the pre-trained encoders (``load_pretrained``,
    files in ``pretrained_dir``) and restarts the learning-rate schedule; the run's
    early-stopping monitor ends it early and puts the best epoch's model back.

    ``switch(epoch, step)`` (overlapped rounds) is asked before every step and may return
    the weights to train with from that step on. An epoch record's ``weights/<head>`` are
    those its last step trained with; an epoch in which they changed also says from which
    of its steps (``weights_from_step``; the steps before had the previous record's)."""
    spec, stopper = a.spec, a.stopper
    history: list[dict] = []
    # A probe inside a segment (in-process, probes.mode: inline) has named itself already.
    with explain_out_of_memory("the trainer" + (f" (rank {rank})" if world_size > 1 else ""),
                               memory_fixes(spec, probe=False)):
        for segment in a.segments if segments is None else segments:
            if segment.phase == FINETUNE:
                if pretrained_dir is None:
                    raise ValueError("method pretrain needs a directory for the pre-trained encoders")
                load_pretrained(a.model, a.optimizer, pretrained_dir)
            weights = weights_for(segment)
            tag = {f"weights/{h}": w for h, w in weights.items()}
            switched: dict[int, int] = {}  # epoch -> the step its last switch of weights happened at

            def switch_at(epoch: int, step: int, tag: dict = tag, switched: dict = switched) -> dict[str, float] | None:
                new = switch(epoch, step)
                if new is not None:
                    tag.clear()
                    tag.update({f"weights/{h}": w for h, w in new.items()})
                    switched[epoch] = step
                return new

            def note(record: dict, tag: dict = tag, switched: dict = switched) -> bool:
                moved = {"weights_from_step": switched[record["epoch"] - 1]} if record["epoch"] - 1 in switched else {}
                history.append({**record, **tag, **moved, **(monitor() if monitor is not None else {})})
                if on_epoch is not None:
                    on_epoch(history[-1])
                return stopper is not None and stopper.step(record["epoch"])

            train_epochs(
                model, a.data.train, a.optimizer, weights, segment.epochs, start_epoch=segment.start,
                batch_size=spec.train.batch_size, seed=spec.seed,
                lr_at=lr_schedule(spec, segment.start if segment.phase == FINETUNE else 0),
                full_heads=full_heads(spec, a.method), rank=rank, world_size=world_size, on_epoch=note,
                rule=a.rule, compute=a.compute, scaler=a.scaler,
                switch_weights=switch_at if switch is not None else None,
            )
            if stopper is not None and stopper.stopped_at is not None:
                break
    if stopper is not None:
        stopper.restore()
    return history


def epoch_metrics(model: MultiHeadNet, data: RunData, compute: Compute = FP32) -> dict[str, float]:
    """Every head's loss and top-1 (multi-label: mAP) on T' (``train/``) and V
    (``val/``): the per-epoch train and validation curves (the paper's Fig. 4)."""
    out = {}
    for split, part in (("train", data.train_subset), ("val", data.heldout)):
        for head, m in evaluate(model, part, compute=compute).items():
            out.update({f"{split}/{head}/{k}": m[k] for k in ("loss", "top1", "mAP") if k in m})
    return out


def trained_rounds(trajectory: list[dict]) -> list[dict]:
    """The rounds whose weights some step trained with: every round but an overlapped
    run's last one when the run ended before it arrived (``applied`` null). A record
    without ``applied`` (written before it was recorded) counts as trained with."""
    return [r for r in trajectory if r.get("applied", True) is not None]


def final_results(a: Assembly, trajectory: list[dict], history: list[dict], seconds: float) -> dict:
    """``results.json``: every head's test metrics, the prediction head's under ``test``."""
    spec, model, data, method = a.spec, a.model, a.data, a.method
    with explain_out_of_memory("the trainer (evaluating the test split)", memory_fixes(spec, probe=False)):
        predictions = predict(model, data.test, batch_size=spec.train.eval_batch_size, compute=a.compute)
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
        "final_weights": (trained[-1]["weights"] if (trained := trained_rounds(trajectory))
                          else model.learned_weights() or fixed_weights(method, model.modalities)),
        "early_stopping": a.stopper.summary() if a.stopper is not None else None,
        "estimation": estimation_summary(trajectory) if method.kind == "gblend" else None,
        "skipped": dict(getattr(data.dataset, "skipped", {})),
        "splits": data.splits.sizes(),
        "history": history,
        "seconds": seconds,
        "config": asdict(spec),
    }


def write_run(run: RunDir, results: dict, trajectory: list[dict]) -> None:
    """A finished run's ``trajectory.json`` and ``results.json``, then its status."""
    run.write_json(TRAJECTORY, trajectory)
    run.write_json(RESULTS, results)
    run.mark("finished")
