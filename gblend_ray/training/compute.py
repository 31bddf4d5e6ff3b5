"""How the engine computes on its device: autocast precision, fp16's gradient scaler, the
memory format of convolutions and their inputs, host→device copies, and what running out
of GPU memory says.

``Compute`` is ``train.precision`` and ``train.channels_last`` as the engine reads them.
Every engine function takes one, and ``assembly`` hands the same one to the main run, its
evaluations and every probe, so they all compute alike. fp32, the default, adds nothing
to a step: no autocast, no scaler, no copy; its results are those of the engine before
these options existed.

Autocast follows the model's device type, so bf16 (and fp16: CPU autocast supports it in
torch 2.14, and ``torch.amp.GradScaler("cpu")`` exists) runs on a CPU too; that is how CI
tests it. The parameters, their gradients and the optimizer state stay fp32.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.spec import PRECISIONS, Precision, RunSpec

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Compute:
    """``precision`` (``train.precision``) and ``channels_last`` (``train.channels_last``)."""

    precision: Precision = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """``torch.autocast`` on ``device``'s type with the precision's dtype; nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        """fp16's loss scaler on ``device``'s type; None otherwise (bf16 has fp32's exponent
        range, so its gradients do not underflow and need no scaling)."""
        return torch.amp.GradScaler(device.type) if self.precision == "fp16" else None


FP32 = Compute()


def compute_of(spec: RunSpec) -> Compute:
    return Compute(spec.train.precision, spec.train.channels_last)


def memory_format_for(t: torch.Tensor) -> torch.memory_format | None:
    """``channels_last_3d`` for a 5-D tensor (a Conv3d kernel, a batch of clips), ``channels_last``
    for a 4-D one (a Conv2d kernel, a batch of spectrograms), None for anything else."""
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.dim())


@torch.no_grad()
def to_channels_last(model: nn.Module) -> nn.Module:
    """Every 4-D and 5-D parameter and buffer of ``model`` in its channels-last format, in place.

    Per tensor rather than ``model.to(memory_format=...)``, which takes one format for the
    whole model: a run's video backbone is 5-D and its audio backbone 4-D. Call it before the
    optimizer holds any state and before DDP wraps the model; the parameters stay the same
    objects, so an optimizer made before still holds them."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        fmt = memory_format_for(t)
        if fmt is not None:
            t.data = t.data.contiguous(memory_format=fmt)
    return model


def to_device(device: torch.device, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """``x`` on ``device``; without blocking the host when that is a GPU (the copy is
    asynchronous from pinned memory, which the media loaders use there); in channels-last
    format with ``channels_last`` when ``x`` is 4-D or 5-D."""
    fmt = memory_format_for(x) if channels_last else None
    kwargs = {"memory_format": fmt} if fmt is not None else {}
    return x.to(device, non_blocking=device.type == "cuda", **kwargs)


# ------------------------------------------------------------------------------ out of memory


class GPUMemoryError(ValueError):
    """A CUDA out-of-memory error in the run's terms: who ran out (the trainer, the probe of
    a head), how much it asked for, and which settings to change. A ``ValueError``: a
    setting to change, so a sweep does not retry the run as it would a lost node."""


_ASKED = re.compile(r"Tried to allocate ([0-9.]+ ?[KMGTP]?i?B)")


def out_of_memory_message(err: BaseException, who: str, fixes: Sequence[str]) -> str:
    text = str(err).strip()
    asked = _ASKED.search(text)
    first = text.splitlines()[0] if text else type(err).__name__
    return (f"{who} ran out of GPU memory: it asked for {asked.group(1) if asked else 'more than was free'} "
            f"({first}). To fit: " + "; ".join(fixes) + ".")


@contextlib.contextmanager
def explain_out_of_memory(who: str, fixes: Sequence[str]) -> Iterator[None]:
    """Re-raise a ``torch.cuda.OutOfMemoryError`` inside as a ``GPUMemoryError`` saying ``who``
    ran out and ``fixes``; one already explained (a probe inside the trainer's plan) passes."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as err:
        raise GPUMemoryError(out_of_memory_message(err, who, fixes)) from err


def memory_fixes(spec: RunSpec, *, probe: bool) -> list[str]:
    """What to change when the trainer (``probe=False``) or a probe runs out of GPU memory."""
    t, p = spec.train, spec.probes
    gpu_probes = p.mode == "tune" and p.resources.get("GPU", 0) > 0
    fixes = []
    if probe and gpu_probes:
        fixes.append(f"give each probe trial a larger GPU share, probes.resources.GPU (now {p.resources['GPU']:g}), "
                     f"or lower probes.max_concurrent (now {p.max_concurrent}), so that fewer probes share a GPU")
    elif probe and p.mode == "inline":
        fixes.append("the probe runs beside the trainer's model (probes.mode: inline): probe trials on GPU shares "
                     "of their own (probes.mode: tune, probes.resources.GPU) leave the trainer's GPU to it")
    fixes.append(f"a smaller train.batch_size (now {t.batch_size}); for evaluation, a smaller "
                 f"data.media.eval_clip_batch (now {spec.data.media.eval_clip_batch}) or train.eval_batch_size "
                 f"(now {t.eval_batch_size})")
    if t.precision == "fp32":
        fixes.append("train.precision: bf16 (about half the activation memory)")
    if not probe and gpu_probes:
        fixes.append(f"probe trials share the GPU with the trainer (probes.resources.GPU "
                     f"{p.resources['GPU']:g} each): a larger share or a lower probes.max_concurrent leaves "
                     "more of it to the trainer")
    return fixes
