"""A run's checkpoint: the one writer and the one reader of its format.

A checkpoint is a directory holding ``state.pt``: a plain dict of the model's and the
optimizer's state dicts, the torch RNG state, and ``meta`` — the epoch, the loss weights
in force, the per-epoch history, fp16's loss-scaler state (``train.precision: fp16``) and
(for the final checkpoint) the run's results — as a JSON string. Everything in it is a tensor, a number, a string or a container of those,
so it is read with ``torch.load(weights_only=True)``: a checkpoint is data, and one
planted in a run directory by someone else cannot run code when a run resumes from it
or a probe restores it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

STATE_FILE = "state.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as one this module wrote."""


@dataclass
class TrainingState:
    """What a checkpoint holds; ``rng`` is ``torch.get_rng_state()`` at the save."""

    model: dict[str, torch.Tensor]
    optimizer: dict
    epoch: int
    rng: torch.Tensor
    weights: dict[str, float] | None = None
    history: list[dict] = field(default_factory=list)
    results: dict | None = None
    scaler: dict | None = None
    """``GradScaler.state_dict()`` (its scale and growth tracker), with fp16; else None."""


def save_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                    weights: dict[str, float] | None, history: list[dict], results: dict | None = None,
                    scaler: torch.amp.GradScaler | None = None) -> Path:
    """Write ``directory/state.pt`` atomically (a reader never sees half a file); return
    ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"epoch": epoch, "weights": weights, "history": history, "results": results,
            "scaler": scaler.state_dict() if scaler is not None else None}
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
             "meta": json.dumps(meta)}
    tmp = directory / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(directory / STATE_FILE)
    return directory


def load_checkpoint(directory: str | Path) -> TrainingState:
    """Read a checkpoint written by ``save_checkpoint``; anything but plain data is refused."""
    path = Path(directory) / STATE_FILE
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(raw["meta"])
        return TrainingState(model=raw["model"], optimizer=raw["optimizer"], epoch=int(meta["epoch"]),
                             rng=raw["rng"], weights=meta["weights"], history=meta["history"],
                             results=meta["results"], scaler=meta.get("scaler"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint here") from None
    except Exception as err:  # an unpickling refusal, a truncated file, a foreign dict
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a gblend checkpoint that loads as plain data with "
                              f"weights_only=True ({reason}); it was not written by this run: remove it, "
                              "or start the run over with --overwrite") from err
