"""What a person watching a run sees: one line per epoch and per G-Blend round.

On Ray the lines are printed by rank 0 and reach the driver's terminal through Ray's
worker-log forwarding, prefixed with the worker's name.
"""

from __future__ import annotations

import sys

from ..core.metrics import describe


def _say(line: str) -> None:
    # Straight to the process's stdout: Ray Train patches print() on its workers to also
    # log, which would show every line twice on the driver.
    stream = sys.__stdout__ or sys.stdout
    stream.write(line + "\n")
    stream.flush()


def _weights(weights: dict[str, float]) -> str:
    return " ".join(f"{h}={w:.3f}" for h, w in weights.items())


class ProgressPrinter:
    def __init__(self, name: str, epochs: int):
        self.name, self.epochs = name, epochs
        self._rounds = 0

    def on_round(self, record: dict) -> None:
        self._rounds += 1
        notes = []
        if record.get("fallback"):
            notes.append(f"every G <= 0: kept the {record['fallback']} weights")
        if record.get("prediction_head_starved"):
            notes.append(f"prediction head starved, safeguard {record.get('safeguard')}")
        _say(f"[{self.name}] super-epoch {self._rounds} from epoch {record['epoch']}: weights "
             f"{_weights(record['weights'])}" + (f" ({'; '.join(notes)})" if notes else ""))

    def on_epoch(self, record: dict) -> None:
        weights = {k.split("/", 1)[1]: v for k, v in record.items() if k.startswith("weights/")}
        val = {k.split("/")[1]: v for k, v in record.items() if k.startswith("val/") and k.endswith(("/top1", "/mAP"))}
        _say(f"[{self.name}] epoch {record['epoch']}/{self.epochs}"
             + (f", super-epoch {self._rounds}" if self._rounds else "")
             + f"  weights {_weights(weights)}"
             + (f"  val {'mAP' if any(k.endswith('/mAP') for k in record) else 'top-1'} {' '.join(f'{h}={v:.3f}' for h, v in val.items())}" if val else ""))

    def on_end(self, results: dict) -> None:
        _say(f"[{self.name}] done: test {describe(results['test'])} ({results['prediction_head']} head)")
