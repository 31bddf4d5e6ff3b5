"""The config's values: every field's range, and what depends on the data set.

``validate`` checks what can be known from the config alone (types again, through
``schema``, then ranges and the method name); ``check_against_dataset`` checks what
depends on the data set's modalities. Choices need no check here: a ``Literal`` field
is checked by its type.
"""

from __future__ import annotations

import math
from typing import Any

from ...core.plan import BALANCING, parse_method
from ...core.spec import RunSpec
from .schema import ConfigError, check_types, field_error


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_int_min(path: str, value: Any, low: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        what = f"an int >= {low}" + (" or null" if optional else "")
        raise field_error(path, f"expected {what}, got {value!r}")


def _check_range(path: str, value: Any, what: str, ok: bool) -> None:
    if not (_is_number(value) and math.isfinite(value) and ok):
        raise field_error(path, f"expected {what}, got {value!r}")


def _check_nonempty(path: str, value: Any) -> None:
    if not (isinstance(value, str) and value.strip()):
        raise field_error(path, f"expected a non-empty string, got {value!r}")


def _check_method(spec: RunSpec, modalities: list[str] | None) -> None:
    method = spec.method
    kind, _, arg = method.partition(":")
    if kind == "uni":
        if not arg:
            raise field_error("method", f"{method!r} names no modality; write uni:<modality>")
        if modalities is not None and arg not in modalities:
            raise field_error(
                "method",
                f"{method!r} names modality {arg!r}, which the dataset lacks; "
                f"its modalities are {', '.join(modalities)}",
            )
    mods = [arg] if (kind == "uni" and modalities is None) else list(modalities or ())
    if modalities is None and kind in BALANCING:
        mods = ["_", "__"]  # the modality count is checked against the data set
    try:
        parse_method(method, mods, default_schedule=spec.blend.schedule)
    except ValueError as e:
        msg = str(e)
        raise field_error("method", msg[len("method "):] if msg.startswith("method ") else msg) from None


def _check_resources(path: str, resources: dict) -> None:
    for name, amount in resources.items():
        _check_range(f"{path}.{name}", amount, "a number >= 0", _is_number(amount) and amount >= 0)
    gpu = resources.get("GPU", 0)
    if gpu > 1 and not float(gpu).is_integer():
        # Ray places a task on a share of one GPU or on whole GPUs, never on 1.5 of them
        raise field_error(f"{path}.GPU", f"a share above 1 GPU must be a whole number of GPUs, got {gpu!r}; "
                                         f"give a fraction of one GPU (e.g. 0.5) or {int(gpu)} or {int(gpu) + 1}")


def validate(spec: RunSpec) -> None:
    """Check every field of ``spec`` for type and range; raise ``ConfigError`` naming it.

    Checks only what can be known without the dataset (``uni:<m>`` is accepted for any
    ``m`` here; ``check_against_dataset`` checks the modality).
    """
    if not isinstance(spec, RunSpec):
        raise ConfigError(f"expected a RunSpec, got {type(spec).__name__}")
    check_types(spec, "")

    d = spec.data
    _check_nonempty("data.path", d.path)
    if d.preset is not None:
        _check_nonempty("data.preset", d.preset)
    _check_int_min("data.preset_seed", d.preset_seed, 0)
    _check_range("data.heldout_fraction", d.heldout_fraction, "a number in (0, 1)",
                 _is_number(d.heldout_fraction) and 0 < d.heldout_fraction < 1)
    _check_int_min("data.subset_size", d.subset_size, 1, optional=True)
    _check_range("data.val_fraction", d.val_fraction, "a number in [0, 1)",
                 _is_number(d.val_fraction) and 0 <= d.val_fraction < 1)
    _check_range("data.test_fraction", d.test_fraction, "a number in [0, 1)",
                 _is_number(d.test_fraction) and 0 <= d.test_fraction < 1)
    if not d.val_fraction + d.test_fraction < 1:
        raise field_error(
            "data.test_fraction",
            f"data.val_fraction + data.test_fraction must be < 1 (something must be left "
            f"to train on), got {d.val_fraction!r} + {d.test_fraction!r}",
        )

    md = d.media
    for name in ("frames", "stride", "resize", "size", "sample_rate", "n_mels", "mel_frames", "eval_clips",
                 "eval_clip_batch"):
        _check_int_min(f"data.media.{name}", getattr(md, name), 1)
    if md.size > md.resize:
        raise field_error("data.media.size", f"the crop ({md.size}) is cut from frames whose short side is "
                                        f"data.media.resize ({md.resize}): lower size or raise resize")
    _check_int_min("data.media.num_workers", md.num_workers, 0)
    _check_int_min("data.media.prefetch_factor", md.prefetch_factor, 1)
    if md.flow_dir is not None:
        _check_nonempty("data.media.flow_dir", md.flow_dir)

    m = spec.model
    _check_nonempty("model.encoder", m.encoder)
    for name, enc in m.encoders.items():
        _check_nonempty(f"model.encoders.{name}", enc)
    _check_int_min("model.hidden_dim", m.hidden_dim, 1)
    _check_int_min("model.feature_dim", m.feature_dim, 1)
    _check_nonempty("model.fusion", m.fusion)
    _check_int_min("model.fusion_hidden_dim", m.fusion_hidden_dim, 0)
    if m.fusion_hidden_dim == 0 and m.fusion == "lmf":
        raise field_error("model.fusion_hidden_dim", "0 (a linear fused head) is not defined for fusion 'lmf', "
                                                     "whose fused vector has this width; give a width >= 1")
    _check_range("model.dropout", m.dropout, "a number in [0, 1)",
                 _is_number(m.dropout) and 0 <= m.dropout < 1)

    _check_range("model.fusion_dropout", m.fusion_dropout, "a number in [0, 1)",
                 _is_number(m.fusion_dropout) and 0 <= m.fusion_dropout < 1)

    bl = spec.baselines
    _check_range("baselines.dropout", bl.dropout, "a number in [0, 1)",
                 _is_number(bl.dropout) and 0 <= bl.dropout < 1)
    _check_int_min("baselines.pretrain_epochs", bl.pretrain_epochs, 1, optional=True)
    _check_int_min("baselines.patience", bl.patience, 1)

    o = spec.optim
    _check_range("optim.lr", o.lr, "a number > 0", _is_number(o.lr) and o.lr > 0)
    _check_range("optim.momentum", o.momentum, "a number in [0, 1)",
                 _is_number(o.momentum) and 0 <= o.momentum < 1)
    _check_range("optim.weight_decay", o.weight_decay, "a number >= 0",
                 _is_number(o.weight_decay) and o.weight_decay >= 0)

    t = spec.train
    _check_int_min("train.epochs", t.epochs, 1)
    _check_int_min("train.batch_size", t.batch_size, 1)
    _check_int_min("train.eval_batch_size", t.eval_batch_size, 1)
    _check_nonempty("train.device", t.device)
    _check_int_min("train.threads", t.threads, 1, optional=True)

    b = spec.blend
    _check_int_min("blend.warmup_epochs", b.warmup_epochs, 1)
    _check_int_min("blend.super_epoch", b.super_epoch, 1)
    _check_int_min("blend.probe_epochs", b.probe_epochs, 1, optional=True)
    _check_range("blend.eps", b.eps, "a number >= 0", _is_number(b.eps) and b.eps >= 0)
    _check_range("blend.floor", b.floor, "a number in [0, 1]",
                 _is_number(b.floor) and 0 <= b.floor <= 1)

    tr = spec.trainer
    _check_int_min("trainer.num_workers", tr.num_workers, 1)
    _check_int_min("trainer.max_failures", tr.max_failures, -1)
    if tr.resource_wait_s is not None:
        _check_range("trainer.resource_wait_s", tr.resource_wait_s, "a number of seconds >= 0 or null",
                     tr.resource_wait_s >= 0)
    _check_resources("trainer.resources_per_worker", tr.resources_per_worker)
    p = spec.probes
    _check_resources("probes.resources", p.resources)
    if p.resources.get("GPU", 0) > 0 and not tr.use_gpu:
        raise field_error("probes.resources.GPU",
                          f"probe trials on a GPU ({p.resources['GPU']!r} each) need the trainer on one: set "
                          "trainer.use_gpu: true, or leave GPU out of probes.resources")
    _check_int_min("probes.max_concurrent", p.max_concurrent, 1, optional=True)
    _check_range("probes.subset", p.subset, "a fraction of the train split in (0, 1] (1: all of T)",
                 _is_number(p.subset) and 0 < p.subset <= 1)

    _check_nonempty("tracking.project", spec.tracking.project)

    _check_balancing(spec)
    _check_method(spec, None)
    _check_overlap(spec)
    _check_int_min("seed", spec.seed, 0)
    if spec.name is not None:
        _check_nonempty("name", spec.name)


def _check_overlap(spec: RunSpec) -> None:
    """``probes.overlap`` needs rounds that something trains beside: online G-Blend (offline
    estimates once, before any training) with its probes on Ray Tune (``probes.mode: inline``
    runs them in rank 0, which then cannot train). Methods without rounds ignore it."""
    kind, _, schedule = spec.method.partition(":")
    if not spec.probes.overlap or kind != "gblend":
        return
    schedule = schedule or spec.blend.schedule
    if schedule != "online":
        raise field_error("probes.overlap", f"overlapped rounds need online G-Blend (blend.schedule: online, or method "
                                            f"gblend:online); method {spec.method!r} runs the offline schedule "
                                            f"(blend.schedule: {spec.blend.schedule}), one estimate before any "
                                            "training, so there is nothing to overlap it with: set probes.overlap: "
                                            "false")
    if spec.probes.mode != "tune":
        raise field_error("probes.overlap", f"overlapped rounds need probes.mode: tune (the probes run as Ray Tune "
                                            f"trials beside the trainer); probes.mode: {spec.probes.mode} runs them "
                                            "inside rank 0, which cannot train meanwhile: set probes.mode: tune or "
                                            "probes.overlap: false")


def check_engine(spec: RunSpec, inline: bool) -> None:
    """What the engine a command runs on cannot do: the in-process engine (``--inline``)
    runs a round's probes one after another in its own process, so ``probes.overlap``
    needs the Ray engine."""
    if inline and spec.probes.overlap and spec.method.partition(":")[0] == "gblend":
        raise field_error("probes.overlap", "the in-process engine (--inline) runs each round's probes in its own "
                                            "process, so nothing could train meanwhile: overlapped rounds need the "
                                            "Ray engine (drop --inline; --trial-engine ray), or set probes.overlap: "
                                            "false")


def _check_window(path: str, starts: Any, ends: Any) -> None:
    _check_int_min(f"{path}.modulation_starts", starts, 0)
    _check_int_min(f"{path}.modulation_ends", ends, 0, optional=True)
    if ends is not None and ends < starts:
        raise field_error(f"{path}.modulation_ends", f"the modulation window ends (epoch {ends}) before it starts "
                                                    f"({path}.modulation_starts = {starts})")


def _check_balancing(spec: RunSpec) -> None:
    """Ranges of ``balancing.*``, and what a method needs of the model."""
    b = spec.balancing
    _check_range("balancing.ogm.alpha", b.ogm.alpha, "a number > 0", _is_number(b.ogm.alpha) and b.ogm.alpha > 0)
    _check_window("balancing.ogm", b.ogm.modulation_starts, b.ogm.modulation_ends)
    _check_range("balancing.pmr.alpha", b.pmr.alpha, "a number >= 0", _is_number(b.pmr.alpha) and b.pmr.alpha >= 0)
    _check_range("balancing.pmr.momentum", b.pmr.momentum, "a number in [0, 1)",
                 _is_number(b.pmr.momentum) and 0 <= b.pmr.momentum < 1)
    _check_range("balancing.pmr.prototype_fraction", b.pmr.prototype_fraction, "a number in (0, 1]",
                 _is_number(b.pmr.prototype_fraction) and 0 < b.pmr.prototype_fraction <= 1)
    _check_window("balancing.pmr", b.pmr.modulation_starts, b.pmr.modulation_ends)
    _check_range("balancing.agm.alpha", b.agm.alpha, "a number > 0", _is_number(b.agm.alpha) and b.agm.alpha > 0)
    _check_window("balancing.agm", b.agm.modulation_starts, b.agm.modulation_ends)
    _check_range("balancing.mmpareto.gamma", b.mmpareto.gamma, "a number > 0",
                 _is_number(b.mmpareto.gamma) and b.mmpareto.gamma > 0)
    kind = spec.method.partition(":")[0]
    if kind in ("ogm_ge", "ogm") and b.ogm.scores == "linear" and (spec.model.fusion != "concat"
                                                                   or spec.model.fusion_hidden_dim != 0):
        raise field_error("balancing.ogm.scores",
                          "'linear' splits a linear fused head by modality (the official OGM-GE setting): it needs "
                          "model.fusion: concat and model.fusion_hidden_dim: 0, got model.fusion: "
                          f"{spec.model.fusion}, model.fusion_hidden_dim: {spec.model.fusion_hidden_dim}; or use "
                          "balancing.ogm.scores: heads")


def check_against_dataset(spec: RunSpec, modalities: list[str]) -> None:
    """Check the parts of ``spec`` that depend on the dataset's modalities."""
    modalities = list(modalities)
    for name in spec.data.modalities or ():
        if name not in modalities:
            raise field_error("data.modalities",
                         f"the dataset has no modality {name!r}; its modalities are {', '.join(modalities)}")
    if spec.data.modalities:
        modalities = list(spec.data.modalities)
    _check_method(spec, modalities)
    for field_name in ("encoders", "weights"):
        for name in getattr(spec.model, field_name):
            if name not in modalities:
                raise field_error(
                    f"model.{field_name}.{name}",
                    f"the dataset has no modality {name!r}; its modalities are {', '.join(modalities)}",
                )
