"""The report's plots, drawn on bare Agg figures (no pyplot state): the weight trajectory
per head (the paper's Fig. 5a), train and validation error per head over epochs (Fig. 4),
the per-class gain of the best multi-modal row over the best uni-modal one (Fig. 6), and a
balancing method's per-epoch quantities (``tables.series``).
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np

from ...storage.location import Location, resolve
from .runs import RunRecord
from .tables import series as balancing_series


def slug(method: str, mods: tuple[str, ...]) -> str:
    # ':' as `gblend compare` writes it (gblend_online); anything else unsafe in a file name → '-'.
    text = method.replace(":", "_") + (f"__{'-'.join(mods)}" if mods else "")
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", text)


def _new_figure(ncols: int = 1, width: float = 6.0):
    # A bare Figure on the Agg canvas: no pyplot, so no global backend switch and no
    # figure kept alive in pyplot's registry of open figures.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path | Location) -> Path | Location:
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    resolve(path).write_bytes(buffer.getvalue())
    return path


def _heads_of(runs: list[RunRecord]) -> list[str]:
    heads: list[str] = []
    for r in runs:
        for h in list((r.results or {}).get("heads", {})) + list((r.results or {}).get("final_weights", {})):
            if h not in heads:
                heads.append(h)
    return heads


def _mean_by_epoch(series: list[dict[int, float]]) -> tuple[list[int], list[float]]:
    """Mean over seeds at each epoch any seed has (seeds may differ in their rounds)."""
    epochs = sorted({e for s in series for e in s})
    return epochs, [float(np.mean([s[e] for s in series if e in s])) for e in epochs]


def _last_epoch(runs: list[RunRecord]) -> int | None:
    ends = [r.results["history"][-1].get("epoch") for r in runs if r.results.get("history")]
    ends = [e for e in ends if isinstance(e, (int, float))]
    return int(max(ends)) if ends else None


def plot_weights(runs: list[RunRecord], label: str, path: Path) -> Path | None:
    """Each head's weight per estimation round, mean over seeds (Fig. 5a); None with no data."""
    heads = _heads_of(runs)
    per_head: dict[str, list[dict[int, float]]] = {h: [] for h in heads}
    source = "round"
    for r in runs:
        for h in heads:
            s = {int(rd["epoch"]): float(rd["weights"][h]) for rd in r.trajectory
                 if "epoch" in rd and h in rd.get("weights", {})}
            if s:
                per_head[h].append(s)
    if not any(per_head.values()):
        # No rounds recorded (e.g. a trajectory lost): the per-epoch weights in the history
        # are the same weights, one point per epoch.
        source = "epoch"
        for r in runs:
            for h in heads:
                s = {int(e["epoch"]): float(e[f"weights/{h}"]) for e in r.results.get("history", [])
                     if f"weights/{h}" in e}
                if s:
                    per_head[h].append(s)
    if not any(per_head.values()):
        return None

    end = _last_epoch(runs)
    fig = _new_figure()
    ax = fig.add_subplot()
    for h in heads:
        if not per_head[h]:
            continue
        xs, ys = _mean_by_epoch(per_head[h])
        # A weight holds until the next round: draw steps, carried on to the last epoch so
        # that a single (offline) round still shows as a line.
        line_x, line_y = list(xs), list(ys)
        if end is not None and end > xs[-1]:
            line_x.append(end)
            line_y.append(ys[-1])
        (ln,) = ax.plot(line_x, line_y, drawstyle="steps-post", label=h)
        ax.plot(xs, ys, "o", color=ln.get_color())
    ax.set_xlabel("epoch" + (" (estimation rounds marked)" if source == "round" else ""))
    ax.set_ylabel("weight")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"G-Blend weights: {label} (mean over {len(runs)} seed{'s' if len(runs) != 1 else ''})")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_curves(runs: list[RunRecord], label: str, path: Path) -> Path | None:
    """Train and validation error (1 − top-1) per head over epochs, mean over seeds (Fig. 4)."""
    heads = _heads_of(runs)
    # Heads that never had weight only sit at chance (their encoders may train, they do not):
    # plotting them would bury the curves that matter. Without weights in the history, keep all.
    weighted = [h for h in heads if any(float(e.get(f"weights/{h}", 0.0)) > 0
                                        for r in runs for e in r.results.get("history", []))]
    has_weights = any(f"weights/{h}" in e for r in runs for e in r.results.get("history", []) for h in heads)
    if has_weights:
        heads = weighted
    pred = {r.results.get("prediction_head") for r in runs}
    curves: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for split in ("train", "val"):
        for h in heads:
            series = []
            for r in runs:
                s = {int(e["epoch"]): 1.0 - float(e[f"{split}/{h}/top1"]) for e in r.results.get("history", [])
                     if e.get(f"{split}/{h}/top1") is not None and "epoch" in e}
                if s:
                    series.append(s)
            if series:
                curves[(split, h)] = _mean_by_epoch(series)
    if not curves:
        return None

    fig = _new_figure(ncols=2, width=5.0)
    axes = fig.subplots(1, 2, sharey=True)
    colors = {h: f"C{i}" for i, h in enumerate(_heads_of(runs))}
    for ax, split, title in zip(axes, ("train", "val"), ("train error", "validation error")):
        for h in heads:
            if (split, h) in curves:
                xs, ys = curves[(split, h)]
                ax.plot(xs, ys, marker=".", color=colors[h], label=h + (" (prediction)" if h in pred else ""))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("error (1 − top-1)")
    fig.suptitle(f"{label}: error per head (mean over {len(runs)} seed{'s' if len(runs) != 1 else ''})")
    return _save(fig, path)


def _per_class_mean(runs: list[RunRecord]) -> tuple[list[str], np.ndarray] | None:
    """Classes and the mean over seeds of the prediction head's per-class test top-1."""
    classes = None
    vals = []
    for r in runs:
        res = r.results
        row = (res.get("per_class") or {}).get(res.get("prediction_head"))
        if not row or not res.get("classes"):
            continue
        if classes is None:
            classes = list(res["classes"])
        if list(res["classes"]) != classes or len(row) != len(classes):
            continue
        vals.append([math.nan if v is None else float(v) for v in row])
    if classes is None or not vals:
        return None
    with np.errstate(all="ignore"):
        arr = np.array(vals, dtype=float)
        # A class missing in every seed stays NaN (nanmean warns, hence the errstate/filter).
        counts = np.sum(~np.isnan(arr), axis=0)
        mean = np.where(counts > 0, np.nansum(arr, axis=0) / np.maximum(counts, 1), math.nan)
    return classes, mean


def plot_per_class(multi: tuple[str, list[RunRecord]], uni: tuple[str, list[RunRecord]],
                   path: Path, n_labels: int = 5) -> tuple[Path | None, str]:
    """Per-class test top-1 of ``multi`` minus ``uni``, sorted by gain (Fig. 6).

    Returns (path or None, a note for the report).
    """
    a, b = _per_class_mean(multi[1]), _per_class_mean(uni[1])
    if a is None or b is None:
        which = multi[0] if a is None else uni[0]
        return None, f"Per-class plot skipped: no per-class test accuracy for {which}."
    if a[0] != b[0]:
        return None, f"Per-class plot skipped: {multi[0]} and {uni[0]} have different class lists."
    classes = np.array(a[0], dtype=object)
    gain = a[1] - b[1]
    keep = ~np.isnan(gain)  # a class absent from the test split of either group has no gain
    classes, gain = classes[keep], gain[keep]
    if gain.size == 0:
        return None, "Per-class plot skipped: no class has test accuracy in both groups."
    order = np.argsort(-gain, kind="stable")
    classes, gain = classes[order], gain[order] * 100.0
    n = gain.size

    fig = _new_figure(width=max(6.0, min(14.0, 0.25 * n + 4)))
    ax = fig.add_subplot()
    x = np.arange(n)
    ax.bar(x, gain, color=["tab:green" if g >= 0 else "tab:red" for g in gain], width=0.8)
    ax.axhline(0, color="black", lw=0.8)
    k = min(n_labels, max(1, n // 3))
    # The k largest gains (left end) and losses (right end); only real gains/losses.
    labelled = sorted({i for i in range(k) if gain[i] > 0} | {n - 1 - i for i in range(k) if gain[n - 1 - i] < 0})
    span = float(np.max(np.abs(gain))) or 1.0
    for i in labelled:
        up = gain[i] >= 0
        ax.annotate(str(classes[i]), (x[i], gain[i]), xytext=(0, 3 if up else -3), textcoords="offset points",
                    ha="center", va="bottom" if up else "top", rotation=90, fontsize=8)
    ax.set_ylim(-span * 1.6 if gain.min() < 0 else -span * 0.1, span * 1.6 if gain.max() > 0 else span * 0.1)
    ax.set_xticks([])
    ax.set_xlabel(f"{n} classes, sorted by gain")
    ax.set_ylabel("Δ test top-1 (points)")
    ax.set_title(f"per-class test top-1: {multi[0]} − {uni[0]}")
    ax.grid(axis="y", alpha=0.3)
    better = int(np.sum(gain > 0))
    return _save(fig, path), (f"Per-class test top-1, {multi[0]} minus {uni[0]}: better on {better} "
                              f"of {n} classes, worse on {int(np.sum(gain < 0))}.")


def plot_quantities(runs: list[RunRecord], label: str, path: Path) -> Path | None:
    """Each quantity of a balancing row over the epochs (mean over seeds), one panel per
    quantity, one line per modality; None for a row without any."""
    data = balancing_series(runs)
    names = list(dict.fromkeys(q for q, _ in data))
    if not names:
        return None
    fig = _new_figure(ncols=len(names), width=4.0)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        for (q, m), per_run in data.items():
            if q == name:
                epochs, mean = _mean_by_epoch(per_run)
                ax.plot(epochs, mean, marker="o", label=m or name)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.suptitle(f"{label}: per-epoch quantities (mean over seeds)")
    return _save(fig, path)
