"""What a person watching a run sees.

On a terminal, each run has a progress bar over its epochs (tqdm) showing the weights in
force and the prediction head's validation metric; each G-Blend round is one line above
it. Written to a pipe or a file there is no bar: one line per round, and the caller
prints one per finished run. ``--verbose`` adds one line per epoch. The printer runs on
the driver (on Ray, the coordinator relays rank 0's epochs and the rounds to it), so its
lines reach the terminal while Ray's own output goes to the run's log.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


def _weights(weights: dict[str, float]) -> str:
    return " ".join(f"{h}={w:.3f}" for h, w in weights.items())


def epoch_summary(record: dict) -> tuple[dict[str, float], str, dict[str, float]]:
    """An epoch record's weights in force, its validation metric's name (top-1 or mAP)
    and that metric per head."""
    weights = {k.split("/", 1)[1]: v for k, v in record.items() if k.startswith("weights/")}
    name = "mAP" if any(k.endswith("/mAP") for k in record) else "top-1"
    val = {k.split("/")[1]: v for k, v in record.items() if k.startswith("val/") and k.endswith(("/top1", "/mAP"))}
    return weights, name, val


class ProgressPrinter:
    """One run's progress on ``stream`` (standard output): a bar where it is a terminal,
    lines for the rounds everywhere, a line per epoch when ``every_epoch``."""

    def __init__(self, name: str, epochs: int, *, every_epoch: bool = False, stream: TextIO | None = None):
        self.name, self.epochs, self.every_epoch = name, epochs, every_epoch
        self.stream = stream if stream is not None else sys.stdout
        self._rounds = 0
        self._seen_epoch = 0
        self._seen_rounds: set[int] = set()
        self._bar: tqdm | None = None

    def _say(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.stream)  # above the bar, which is redrawn below
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def _bar_at(self, epoch: int) -> tqdm | None:
        if self._bar is None and not self.every_epoch and _is_terminal(self.stream):
            self._bar = tqdm(total=self.epochs, initial=epoch, desc=self.name, unit="epoch", file=self.stream,
                             leave=False, dynamic_ncols=True,
                             bar_format="{desc} {bar:20} {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}")
        return self._bar

    def on_resume(self, epoch: int, history: list[dict], rounds: list[dict]) -> None:
        self._seen_epoch = max([epoch, *(r.get("epoch", 0) for r in history)])
        self._seen_rounds = {r["epoch"] for r in rounds}
        self._rounds = len(rounds)
        self._say(f"[{self.name}] resumed from the checkpoint at epoch {epoch} ({len(rounds)} round(s) recorded)")
        self._bar_at(self._seen_epoch)

    def on_round(self, record: dict) -> None:
        if record["epoch"] in self._seen_rounds:
            return
        self._seen_rounds.add(record["epoch"])
        self._rounds += 1
        notes = []
        if record.get("fallback"):
            notes.append(f"every G <= 0: kept the {record['fallback']} weights")
        if record.get("prediction_head_starved"):
            notes.append(f"prediction head starved, safeguard {record.get('safeguard')}")
        self._say(f"[{self.name}] super-epoch {self._rounds} from epoch {record['epoch']}: weights "
                  f"{_weights(record['weights'])}" + (f" ({'; '.join(notes)})" if notes else ""))

    def on_epoch(self, record: dict) -> None:
        if record["epoch"] <= self._seen_epoch:
            return
        advanced, self._seen_epoch = record["epoch"] - self._seen_epoch, record["epoch"]
        weights, metric, val = epoch_summary(record)
        shown = f"val {metric} {' '.join(f'{h}={v:.3f}' for h, v in val.items())}" if val else ""
        bar = self._bar_at(self._seen_epoch - advanced)
        if bar is not None:
            bar.update(advanced)
            bar.set_postfix_str(f"weights {_weights(weights)}  {shown}")  # drawn now: epochs are seconds apart
        elif self.every_epoch:
            self._say(f"[{self.name}] epoch {record['epoch']}/{self.epochs}"
                      + (f", super-epoch {self._rounds}" if self._rounds else "")
                      + f"  weights {_weights(weights)}" + (f"  {shown}" if shown else ""))

    def on_end(self, results: dict) -> None:
        """The bar goes; the finished run's line is its caller's (``gblend run``'s result,
        a compare's row), which knows where the results were written."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
