"""``gblend report``: paper-style tables and plots from finished run directories.

A *run directory* is what ``gblend run`` writes (``results.json``, ``trajectory.json``,
``config.yaml``), or a failed run (``error.txt`` and ``config.yaml``, no results). A
report root is one run directory, a ``gblend compare`` output, or a sweep holding run
directories at any depth; :func:`find_runs` collects them all.

Runs are grouped by (method, modalities) and summarised over seeds. :func:`write_report`
writes ``report.md`` (the table the paper would print: test top-1 as mean ± std over
seeds, top-5, seeds, the G-Blend weights as ``[video,audio,fused]=[...]``, failures),
``report.csv`` (the same rows, as numbers) and PNG plots:

- ``weights_<method>.png``: each head's weight at every estimation round (Fig. 5a);
- ``curves_<method>.png``: train and validation error per head over epochs (Fig. 4);
- ``per_class.png``: per-class test top-1 of the best G-Blend (else multi-modal) group
  minus the best uni-modal group's, classes sorted by gain (Fig. 6).

Only the standard library, numpy and matplotlib (Agg, imported when plotting) are used:
reporting must work on a machine that holds the results but not torch or Ray.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import LABELS, headline

__all__ = ["RunRecord", "find_runs", "summarize", "weights_string", "write_report", "method_kind"]

# Table order (the paper's): baselines first, G-Blend last; other kinds sit in between.
_KIND_RANK = {"uni": 0, "naive": 1, "aux": 2, "gblend": 4}
_OTHER_RANK = 3


@dataclass
class RunRecord:
    """One run directory. ``results`` is None for a failed run, whose ``error`` holds the
    message from ``error.txt``. ``modalities`` is the config's ``data.modalities``; empty
    means the run used all of the dataset's modalities."""

    path: Path
    method: str
    modalities: tuple[str, ...]
    seed: int | None
    results: dict | None
    trajectory: list[dict] = field(default_factory=list)
    error: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    """The run's config, flattened to dotted keys."""

    @property
    def ok(self) -> bool:
        return self.results is not None


def method_kind(method: str) -> str:
    """``uni``, ``naive``, ``aux``, ``gblend`` or whatever precedes the ``:``."""
    return method.partition(":")[0]


def _is_gblend(method: str) -> bool:
    return method_kind(method) == "gblend"


# --------------------------------------------------------------------------- reading


def _read_config_yaml(path: Path) -> dict:
    """A run's ``config.yaml`` (what a failed run leaves besides its error), or {}."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


# What tells runs of one table row apart without making them different rows.
_NOT_SETTINGS = ("seed", "method", "name", "data.modalities", "data.path", "data.preset", "tracking.")


def _load_run(path: Path) -> RunRecord | None:
    """The run in ``path``, or None when ``path`` holds no run's results or error."""
    results_file, error_file = path / "results.json", path / "error.txt"
    results: dict | None = None
    error: str | None = None
    if results_file.is_file():
        try:
            loaded = json.loads(results_file.read_text())
        except (OSError, ValueError) as err:
            # A truncated results.json (a run killed while writing) is a failure to show,
            # not a reason to lose the whole report.
            error = f"unreadable results.json: {err}"
        else:
            if isinstance(loaded, dict) and "method" in loaded and "test" in loaded:
                results = loaded
            elif not error_file.is_file():
                return None  # some other tool's results.json (e.g. a sweep's), not a run
    if error_file.is_file():
        try:
            error = error_file.read_text().strip() or "(empty error.txt)"
        except OSError as err:
            error = f"unreadable error.txt: {err}"
    if results is None and error is None:
        return None

    cfg = (results or {}).get("config") or _read_config_yaml(path / "config.yaml")
    method = (results or {}).get("method") or cfg.get("method") or "unknown"
    seed = (results or {}).get("seed", cfg.get("seed"))
    mods = (cfg.get("data") or {}).get("modalities")
    if isinstance(mods, str):
        mods = [mods]

    trajectory: list[dict] = []
    traj_file = path / "trajectory.json"
    if results is not None and traj_file.is_file():
        try:
            loaded = json.loads(traj_file.read_text())
            trajectory = loaded if isinstance(loaded, list) else []
        except (OSError, ValueError):
            trajectory = []  # the table does not need it; only the weight plot loses a run
    return RunRecord(path=path, method=str(method), modalities=tuple(str(m) for m in (mods or ())),
                     seed=seed if isinstance(seed, int) else None, results=results,
                     trajectory=trajectory, error=error, config=_flatten(cfg))


def find_runs(root: str | Path) -> list[RunRecord]:
    """Every run directory under ``root`` (``root`` included), in path order.

    A directory is a run if it holds a run's ``results.json`` or an ``error.txt``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such directory: {root}")
    runs = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()  # a stable, path-ordered listing whatever the file system's order
        run = _load_run(Path(dirpath))
        if run is not None:
            runs.append(run)
    return runs


# --------------------------------------------------------------------------- summary


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _setting(run: RunRecord, runs: list[RunRecord]) -> str:
    """The config values that vary across ``runs`` (other than seed, method and
    modalities), as ``key=value, ...``: runs that differ there are different rows (an
    optimizer or a fusion sweep)."""
    keys = {k for r in runs for k in r.config if not k.startswith(_NOT_SETTINGS)}
    varying = sorted(k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1)
    return ", ".join(f"{k}={run.config.get(k)}" for k in varying)


def summarize(runs: list[RunRecord]) -> list[dict]:
    """One row per (method, modalities), in table order (uni-modal, naive, aux, others, G-Blend).

    Each row: ``method``, ``modalities``, ``metric`` and ``companion`` (test top-1 and
    top-5; video-level top-1 and top-5 when several clips per video were evaluated; mAP
    and mAUC for a multi-label task: ``metrics.headline``), ``n_ok``, ``n_failed``,
    ``mean`` and ``std`` (population std) of the metric over the ok seeds as fractions,
    ``top5_mean`` (the companion's mean), ``seeds`` (of the ok runs), ``top1`` (the
    metric per ok seed), ``weights`` (mean final weight per head over
    the ok seeds, heads in the results' order), ``failed_seeds``, ``failed_paths``,
    ``errors`` (first line of each failure). With no ok run the numbers are None.
    """
    groups: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault((run.method, run.modalities, _setting(run, runs)), []).append(run)

    rows = []
    for (method, mods, setting), members in groups.items():
        ok = [r for r in members if r.ok]
        failed = [r for r in members if not r.ok]
        metric, companion = headline(ok[0].results["test"]) if ok else ("top1", "top5")
        top1 = [float(r.results["test"][metric]) for r in ok]
        top5 = [float(r.results["test"][companion]) for r in ok if companion in r.results["test"]]
        heads: list[str] = []
        for r in ok:
            heads += [h for h in r.results.get("final_weights", {}) if h not in heads]
        weights = {}
        for h in heads:
            vals = [float(r.results["final_weights"][h]) for r in ok if h in r.results.get("final_weights", {})]
            weights[h] = float(np.mean(vals))
        rows.append({
            "method": method,
            "modalities": mods,
            "setting": setting,
            "metric": metric,
            "companion": companion,
            "n_ok": len(ok),
            "n_failed": len(failed),
            "mean": float(np.mean(top1)) if top1 else None,
            "std": float(np.std(top1)) if top1 else None,
            "top5_mean": float(np.mean(top5)) if top5 else None,
            "seeds": [r.seed for r in ok],
            "top1": top1,
            "weights": weights,
            "failed_seeds": [r.seed for r in failed],
            "failed_paths": [r.path for r in failed],
            "errors": [_first_line(r.error) for r in failed],
        })
    # sorted() is stable, so groups of one kind keep their path order.
    return sorted(rows, key=lambda row: _KIND_RANK.get(method_kind(row["method"]), _OTHER_RANK))


def weights_string(weights: dict[str, float]) -> str:
    """The paper's notation: ``[video,audio,fused]=[0.630,0.014,0.356]``."""
    return f"[{','.join(weights)}]=[{','.join(f'{w:.3f}' for w in weights.values())}]"


# --------------------------------------------------------------------------- plots


def _label(method: str, mods: tuple[str, ...]) -> str:
    return f"{method} ({'+'.join(mods)})" if mods else method


def _slug(method: str, mods: tuple[str, ...]) -> str:
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


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, format="png")
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


# --------------------------------------------------------------------------- report


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def _mods_text(mods: tuple[str, ...]) -> str:
    return "+".join(mods) if mods else "all"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(root: str | Path, out: str | Path | None = None) -> dict[str, Path | list[Path]]:
    """Write ``report.md``, ``report.csv`` and the plots for the runs under ``root``.

    Files go to ``out`` (default ``root``). Returns ``{"md": path, "csv": path, "plots": [paths]}``.
    Raises ValueError when ``root`` is not a directory or holds no run.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"no such directory: {root}")
    runs = find_runs(root)
    if not runs:
        raise ValueError(f"no runs under {root}: expected directories with results.json or error.txt")
    out = Path(out) if out is not None else root
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(runs)
    by_group: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        if r.ok:
            by_group.setdefault((r.method, r.modalities, _setting(r, runs)), []).append(r)

    def label(key: tuple) -> str:
        return _label(key[0], key[1]) + (f" [{key[2]}]" if key[2] else "")

    def slug(key: tuple) -> str:
        return _slug(key[0], key[1]) + ("__" + hashlib.sha1(key[2].encode()).hexdigest()[:6] if key[2] else "")

    # ---- plots
    plots: list[Path] = []
    sections: list[tuple[str, Path, str]] = []  # (title, image, text under it)
    for row in rows:
        key = (row["method"], row["modalities"], row["setting"])
        ok_runs = by_group.get(key, [])
        if not ok_runs:
            continue
        if _is_gblend(row["method"]):
            p = plot_weights(ok_runs, label(key), out / f"weights_{slug(key)}.png")
            if p:
                plots.append(p)
                sections.append((f"G-Blend weights per round: {label(key)}", p, ""))
        p = plot_curves(ok_runs, label(key), out / f"curves_{slug(key)}.png")
        if p:
            plots.append(p)
            sections.append((f"Train and validation error: {label(key)}", p, ""))

    ok_rows = [row for row in rows if row["n_ok"]]
    unis = [row for row in ok_rows if method_kind(row["method"]) == "uni"]
    gblends = [row for row in ok_rows if _is_gblend(row["method"])]
    multis = gblends or [row for row in ok_rows if method_kind(row["method"]) != "uni"]
    if not unis:
        per_class_note = "Per-class plot skipped: no uni-modal run."
    elif not multis:
        per_class_note = "Per-class plot skipped: no multi-modal run."
    else:
        # max() keeps the first of equals, i.e. the earlier row in table order.
        best_multi = max(multis, key=lambda row: row["mean"])
        best_uni = max(unis, key=lambda row: row["mean"])
        mk = (best_multi["method"], best_multi["modalities"], best_multi["setting"])
        uk = (best_uni["method"], best_uni["modalities"], best_uni["setting"])
        p, per_class_note = plot_per_class((label(mk), by_group[mk]), (label(uk), by_group[uk]),
                                           out / "per_class.png")
        if p:
            plots.append(p)
            sections.append(("Per-class gain", p, per_class_note))

    # ---- report.md
    ok_metrics = {(row["metric"], row["companion"]) for row in ok_rows}
    main_label, companion_label = "metric", "companion metric"  # rows judged by different metrics
    if len(ok_metrics) == 1:
        ((m, c),) = ok_metrics
        main_label, companion_label = LABELS[m], LABELS[c]
    md = [
        "# G-Blend report",
        "",
        f"Source: `{root.resolve()}` ({len(runs)} run{'s' if len(runs) != 1 else ''}, "
        f"{sum(not r.ok for r in runs)} failed)",
        "",
        f"Test {main_label} and {companion_label} of each method's prediction head, mean ± std (population) "
        "over seeds. Weights: the final G-Blend (or learned, for uncertainty weighting) weight of each head.",
        "",
    ]
    with_setting = any(row["setting"] for row in rows)
    md += ["| method | modalities | " + ("setting | " if with_setting else "")
           + f"test {main_label} (%) | {companion_label} (%) | seeds ok/failed | weights |",
           "|---|---|" + ("---|" if with_setting else "") + "---|---|---|---|"]
    for row in rows:
        seeds = f"{row['n_ok']}/{row['n_failed']}" + (" FAILED" if row["n_failed"] else "")
        shown = _is_gblend(row["method"]) or row["method"] == "uncertainty"
        weights = weights_string(row["weights"]) if shown and row["weights"] else ""
        md.append(f"| {_md_cell(row['method'])} | {_md_cell(_mods_text(row['modalities']))} | "
                  + (f"{_md_cell(row['setting'])} | " if with_setting else "")
                  + f"{_pct(row['mean'], row['std'])} | {_pct(row['top5_mean'])} | {seeds} | {weights} |")
    failed = [r for r in runs if not r.ok]
    if failed:
        md += ["", "## Failed runs", ""]
        for r in failed:
            try:
                where = r.path.relative_to(root)
            except ValueError:
                where = r.path
            seed = "" if r.seed is None else f" seed {r.seed}"
            md.append(f"- FAILED {_md_cell(_label(r.method, r.modalities))}{seed} (`{where}`): "
                      f"{_md_cell(_first_line(r.error))}")
    md += ["", "## Plots", ""]
    for title, p, note in sections:
        md += [f"### {title}", ""] + ([note, ""] if note else []) + [f"![{title}]({p.name})", ""]
    if "per_class.png" not in {p.name for p in plots}:
        md += [per_class_note, ""]  # why Fig. 6 is missing
    md_path = out / "report.md"
    md_path.write_text("\n".join(md).rstrip() + "\n")

    # ---- report.csv
    heads: list[str] = []
    for row in rows:
        if _is_gblend(row["method"]):
            heads += [h for h in row["weights"] if h not in heads]
    fields = ["method", "modalities", "setting", "n_ok", "n_failed", "top1_mean", "top1_std", "top5_mean", "seeds",
              "top1_per_seed", "weights", *[f"weight_{h}" for h in heads], "failed_seeds", "errors"]
    csv_path = out / "report.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for row in rows:
            gb = _is_gblend(row["method"])
            w.writerow({
                "method": row["method"],
                "modalities": _mods_text(row["modalities"]),
                "setting": row["setting"],
                "n_ok": row["n_ok"],
                "n_failed": row["n_failed"],
                # repr-exact floats; an empty cell where no seed finished
                "top1_mean": "" if row["mean"] is None else repr(row["mean"]),
                "top1_std": "" if row["std"] is None else repr(row["std"]),
                "top5_mean": "" if row["top5_mean"] is None else repr(row["top5_mean"]),
                "seeds": ";".join(str(s) for s in row["seeds"]),
                "top1_per_seed": ";".join(repr(v) for v in row["top1"]),
                "weights": weights_string(row["weights"]) if gb and row["weights"] else "",
                **{f"weight_{h}": repr(row["weights"][h]) if gb and h in row["weights"] else "" for h in heads},
                "failed_seeds": ";".join("" if s is None else str(s) for s in row["failed_seeds"]),
                "errors": " | ".join(row["errors"]),
            })
    return {"md": md_path, "csv": csv_path, "plots": plots}


def main(argv: list[str] | None = None) -> int:
    """``python -m gblend_ray.report DIR [OUT]``."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2:
        print("usage: python -m gblend_ray.report DIR [OUT]", file=sys.stderr)
        return 2
    paths = write_report(*args)
    print(f"wrote {paths['md']}, {paths['csv']} and {len(paths['plots'])} plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
