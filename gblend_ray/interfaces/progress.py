"""What a person watching a run sees: one line per epoch and per G-Blend round.

It runs on the driver (on Ray, the coordinator relays rank 0's epochs and the rounds to
it), so its lines reach the terminal while Ray's own output goes to the run's log.
"""

from __future__ import annotations

import sys

from ..core.metrics import describe


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _weights(weights: dict[str, float]) -> str:
    return " ".join(f"{h}={w:.3f}" for h, w in weights.items())


class ProgressPrinter:
    def __init__(self, name: str, epochs: int):
        self.name, self.epochs = name, epochs
        self._rounds = 0
        self._seen_epoch = 0
        self._seen_rounds: set[int] = set()

    def on_resume(self, epoch: int, history: list[dict], rounds: list[dict]) -> None:
        self._seen_epoch = max([epoch, *(r.get("epoch", 0) for r in history)])
        self._seen_rounds = {r["epoch"] for r in rounds}
        self._rounds = len(rounds)
        _say(f"[{self.name}] resumed from the checkpoint at epoch {epoch} ({len(rounds)} round(s) recorded)")

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
        _say(f"[{self.name}] super-epoch {self._rounds} from epoch {record['epoch']}: weights "
             f"{_weights(record['weights'])}" + (f" ({'; '.join(notes)})" if notes else ""))

    def on_epoch(self, record: dict) -> None:
        if record["epoch"] <= self._seen_epoch:
            return
        self._seen_epoch = record["epoch"]
        weights = {k.split("/", 1)[1]: v for k, v in record.items() if k.startswith("weights/")}
        val = {k.split("/")[1]: v for k, v in record.items() if k.startswith("val/") and k.endswith(("/top1", "/mAP"))}
        _say(f"[{self.name}] epoch {record['epoch']}/{self.epochs}"
             + (f", super-epoch {self._rounds}" if self._rounds else "")
             + f"  weights {_weights(weights)}"
             + (f"  val {'mAP' if any(k.endswith('/mAP') for k in record) else 'top-1'} {' '.join(f'{h}={v:.3f}' for h, v in val.items())}" if val else ""))

    def on_end(self, results: dict) -> None:
        _say(f"[{self.name}] done: test {describe(results['test'])} ({results['prediction_head']} head)")
