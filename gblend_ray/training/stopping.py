"""Early stopping on the held-out set V (the ``early_stop`` baseline).

The paper's Table 5 compares G-Blend with stopping naive late fusion early: overfitting
is what hurts the fused model, so a baseline stops when the fused head's loss on V has
not improved for ``patience`` epochs and keeps the model of the best epoch. V is the
same held-out set G-Blend measures its generalization on, so both see the same data.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn


class EarlyStopping:
    """Tracks a loss measured after every epoch; keeps the best epoch's parameters."""

    def __init__(self, model: nn.Module, measure: Callable[[], float], patience: int):
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        self.model = model
        self.measure = measure
        self.patience = patience
        self.best_value = float("inf")
        self.best_epoch = 0
        self.stopped_at: int | None = None
        self._best_state: dict | None = None

    def step(self, epoch: int) -> bool:
        """Measure after ``epoch`` (1-based); return True when training should stop."""
        value = self.measure()
        if value < self.best_value:
            self.best_value, self.best_epoch = value, epoch
            self._best_state = copy.deepcopy(self.model.state_dict())
        elif epoch - self.best_epoch >= self.patience:
            self.stopped_at = epoch
            return True
        return False

    def restore(self) -> None:
        """Put the best epoch's parameters back into the model."""
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)

    def summary(self) -> dict:
        return {"best_epoch": self.best_epoch, "best_val_loss": self.best_value, "stopped_at": self.stopped_at,
                "patience": self.patience}
