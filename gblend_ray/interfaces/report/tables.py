"""The report's tables: one row per (method, modalities, setting) summarised over seeds,
as ``report.md`` and ``report.csv``.

Rows come in the paper's order: baselines first, G-Blend last, other kinds between. A
balancing method's row also shows its own per-step quantities, as the run's history logged
them per epoch under the method's namespace (``ogm_ge/k/<modality>``, ``pmr/rho/<modality>``,
``agm/kappa/<modality>``, ``mmpareto/cos/<modality>``, ...): each one's mean over the epochs
and seeds (``quantities``); ``plots.plot_quantities`` draws them per epoch.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ...core.metrics import LABELS, headline
from ...core.plan import BALANCING
from ...core.rounds import estimation_summary
from ...storage.location import Location, resolve
from .runs import RunRecord, group_runs, is_gblend, method_kind

# Table order (the paper's): baselines first, G-Blend last; other kinds sit in between.
_KIND_RANK = {"uni": 0, "naive": 1, "aux": 2, "gblend": 4}
_OTHER_RANK = 3


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


# ------------------------------------------------------------------ balancing quantities

_PERCENT = ("slowed", "proto_loss", "conflict", "clipped")
"""Quantities that are a share of the epoch's steps (shown as %)."""


def _split(key: str, namespace: str) -> tuple[str, str] | None:
    """``(quantity, modality)`` of a history key in ``namespace`` (modality "" for a
    quantity of the whole step, e.g. ``agm/clipped``), or None."""
    parts = key.split("/")
    if parts[0] != namespace or len(parts) not in (2, 3):
        return None
    return (parts[1], parts[2] if len(parts) == 3 else "")


def series(runs: list[RunRecord]) -> dict[tuple[str, str], list[dict[int, float]]]:
    """Per (quantity, modality): each run's value at every epoch of its history."""
    out: dict[tuple[str, str], list[dict[int, float]]] = {}
    for r in runs:
        if not r.ok or method_kind(r.method) not in BALANCING:
            continue
        per_run: dict[tuple[str, str], dict[int, float]] = {}
        for record in r.results.get("history") or []:
            for key, value in record.items():
                where = _split(key, method_kind(r.method))
                if where is not None and isinstance(value, (int, float)):
                    per_run.setdefault(where, {})[int(record.get("epoch", 0))] = float(value)
        for where, by_epoch in per_run.items():
            out.setdefault(where, []).append(by_epoch)
    return out


def quantities(runs: list[RunRecord]) -> dict[str, dict[str, float]]:
    """Per quantity, per modality: the mean over every epoch of every ok run (seeds)."""
    out: dict[str, dict[str, float]] = {}
    for (q, m), per_run in series(runs).items():
        values = [v for by_epoch in per_run for v in by_epoch.values()]
        if values:
            out.setdefault(q, {})[m] = float(np.mean(values))
    return out


def quantities_text(q: dict[str, dict[str, float]]) -> str:
    """``k [video,audio]=[0.42,1.00]; slowed [video,audio]=[97%,0%]``; "" without any."""
    parts = []
    for name, by_modality in q.items():
        shown = [f"{100 * v:.0f}%" if name in _PERCENT else f"{v:.3g}" for v in by_modality.values()]
        mods = [m for m in by_modality if m]
        parts.append(f"{name} [{','.join(mods)}]=[{','.join(shown)}]" if mods else f"{name} {shown[0]}")
    return "; ".join(parts)


# ------------------------------------------------------------------ rows


def summarize(runs: list[RunRecord]) -> list[dict]:
    """One row per (method, modalities), in table order (uni-modal, naive, aux, others, G-Blend).

    Each row: ``method``, ``modalities``, ``metric`` and ``companion`` (test top-1 and
    top-5; video-level top-1 and top-5 when several clips per video were evaluated; mAP
    and mAUC for a multi-label task: ``metrics.headline``), ``n_ok``, ``n_failed``,
    ``mean`` and ``std`` (population std) of the metric over the ok seeds as fractions,
    ``top5_mean`` (the companion's mean), ``seeds`` (of the ok runs), ``top1`` (the
    metric per ok seed), ``weights`` (mean final weight per head over
    the ok seeds, heads in the results' order), ``failed_seeds``, ``failed_paths``,
    ``errors`` (first line of each failure), and for G-Blend what the rounds estimated
    (``core.rounds.estimation_summary`` of each ok run): ``rounds``, ``fallback_rounds``,
    ``safeguard_rounds`` (summed over seeds), ``no_estimate_seeds`` (seeds whose every
    round fell back), and for a balancing method its per-step quantities, each averaged over
    the epochs and seeds (``quantities``: ``{quantity: {modality: mean}}``, see
    ``balancing.py``). With no ok run the numbers are None.
    """
    rows = []
    for (method, mods, setting), members in group_runs(runs).items():
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
        estimates = [(r.seed, estimation_summary(r.trajectory)) for r in ok if is_gblend(method)]
        estimates = [(seed, e) for seed, e in estimates if e is not None]
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
            "rounds": sum(e["rounds"] for _, e in estimates),
            "fallback_rounds": sum(e["rounds"] - e["estimated"] for _, e in estimates),
            "safeguard_rounds": sum(e["safeguard_rewrote"] for _, e in estimates),
            "no_estimate_seeds": [seed for seed, e in estimates if e["status"] == "none"],
            "quantities": quantities(ok),
        })
    # sorted() is stable, so groups of one kind keep their path order.
    return sorted(rows, key=lambda row: _KIND_RANK.get(method_kind(row["method"]), _OTHER_RANK))


def weights_string(weights: dict[str, float]) -> str:
    """The paper's notation: ``[video,audio,fused]=[0.630,0.014,0.356]``."""
    return f"[{','.join(weights)}]=[{','.join(f'{w:.3f}' for w in weights.values())}]"


def estimate_text(row: dict) -> str:
    """A G-Blend row's estimation in words: seeds without any estimate (every round fell
    back), rounds that fell back, rounds the safeguard rewrote; "" for other rows."""
    if not row.get("rounds"):
        return ""
    parts = []
    if row["no_estimate_seeds"]:
        parts.append(f"NO ESTIMATE in {len(row['no_estimate_seeds'])}/{row['n_ok']} seeds (every G <= 0)")
    if row["fallback_rounds"]:
        parts.append(f"{row['fallback_rounds']}/{row['rounds']} rounds fell back")
    if row["safeguard_rounds"]:
        parts.append(f"safeguard rewrote {row['safeguard_rounds']}/{row['rounds']} rounds")
    return "; ".join(parts) or f"all {row['rounds']} rounds estimated"


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def _mods_text(mods: tuple[str, ...]) -> str:
    return "+".join(mods) if mods else "all"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def label(method: str, mods: tuple[str, ...], setting: str = "") -> str:
    """A row's name in titles: the method, its modalities and its setting."""
    return (f"{method} ({'+'.join(mods)})" if mods else method) + (f" [{setting}]" if setting else "")


def markdown(root: Path | Location, runs: list[RunRecord], rows: list[dict], sections: list[tuple[str, Path, str]],
             notes: list[str], left_out: list[RunRecord] = (), sweep: list[dict] | None = None) -> str:
    """``report.md``: the table, the failed runs, then each plot under its title (and
    ``notes`` on plots that could not be drawn). ``left_out``: G-Blend runs without an
    estimate that the report was asked to leave out, named under the table. ``sweep``:
    the rows of a sweep's ``sweep.json``, for its best trial and its early-stopped ones."""
    ok_metrics = {(row["metric"], row["companion"]) for row in rows if row["n_ok"]}
    main_label, companion_label = "metric", "companion metric"  # rows judged by different metrics
    if len(ok_metrics) == 1:
        ((m, c),) = ok_metrics
        main_label, companion_label = LABELS[m], LABELS[c]
    md = [
        "# G-Blend report",
        "",
        f"Source: `{resolve(root).uri}` ({len(runs)} run{'s' if len(runs) != 1 else ''}, "
        f"{sum(not r.ok for r in runs)} failed)",
        "",
        f"Test {main_label} and {companion_label} of each method's prediction head, mean ± std (population) "
        "over seeds. Weights: the final G-Blend (or learned, for uncertainty weighting) weight of each head. "
        "Method quantities: a balancing method's per-step quantities, mean over epochs and seeds "
        "(OGM-GE: ratio ρ, coefficient k, share of steps slowed; PMR: ρ and share of steps with the prototype "
        "loss; AGM: κ and score; MMPareto: cosine, weight of the fused gradient, share of conflicting steps).",
        "",
    ]
    with_setting = any(row["setting"] for row in rows)
    md += ["| method | modalities | " + ("setting | " if with_setting else "")
           + f"test {main_label} (%) | {companion_label} (%) | seeds ok/failed | weights | estimate | "
           "method quantities |",
           "|---|---|" + ("---|" if with_setting else "") + "---|---|---|---|---|---|"]
    for row in rows:
        seeds = f"{row['n_ok']}/{row['n_failed']}" + (" FAILED" if row["n_failed"] else "")
        shown = is_gblend(row["method"]) or row["method"] == "uncertainty"
        weights = weights_string(row["weights"]) if shown and row["weights"] else ""
        md.append(f"| {_md_cell(row['method'])} | {_md_cell(_mods_text(row['modalities']))} | "
                  + (f"{_md_cell(row['setting'])} | " if with_setting else "")
                  + f"{_pct(row['mean'], row['std'])} | {_pct(row['top5_mean'])} | {seeds} | {weights} | "
                  f"{_md_cell(estimate_text(row))} | {_md_cell(quantities_text(row.get('quantities') or {}))} |")
    if left_out:
        md += ["", f"Left out: {len(left_out)} G-Blend run(s) without an estimate (every round fell back): "
               + ", ".join(f"{label(r.method, r.modalities)} seed {r.seed}" for r in left_out) + "."]
    md += sweep_lines(sweep or [])
    failed = [r for r in runs if not r.ok]
    if failed:
        md += ["", "## Failed runs", ""]
        for r in failed:
            where = str(r.path).removeprefix(str(root).rstrip("/") + "/")
            seed = "" if r.seed is None else f" seed {r.seed}"
            md.append(f"- FAILED {_md_cell(label(r.method, r.modalities))}{seed} (`{where}`): "
                      f"{_md_cell(_first_line(r.error))}")
    md += ["", "## Plots", ""]
    for title, p, note in sections:
        md += [f"### {title}", ""] + ([note, ""] if note else []) + [f"![{title}]({p.name})", ""]
    for note in notes:
        md += [note, ""]
    return "\n".join(md).rstrip() + "\n"



def sweep_lines(trials: list[dict]) -> list[str]:
    """A sweep's section of ``report.md``: its best trial by the sweep's metric (with the
    test metrics of that trial) and the trials its scheduler stopped early."""
    best = next((t for t in trials if t.get("best")), None)
    stopped = [t for t in trials if t.get("status") == "stopped"]
    if best is None and not stopped:
        return []
    md = ["", "## Sweep", ""]
    if best is not None:
        metric = next(k for k in best if k.startswith("val/"))
        tested = ", ".join(f"{LABELS.get(k, k)} {100 * v:.1f}%" for k, v in best["test"].items() if k != "loss")
        chosen = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["overrides"].items())
        md.append(f"Best trial by {metric} (validation, last epoch): `{chosen}`: {metric} {best[metric]:.4f}; "
                  f"test {tested}.")
    if stopped:
        md += ["", f"Stopped early by the scheduler ({len(stopped)}, not failed):", ""]
        md += [f"- `{', '.join(f'{k}={v}' for k, v in t['overrides'].items())}` at epoch {t.get('epochs')}"
               for t in stopped]
    return md


def write_csv(rows: list[dict], path: Path | Location) -> Path | Location:
    """``report.csv``: the rows as numbers (repr-exact floats), a column per G-Blend head's weight."""
    heads: list[str] = []
    for row in rows:
        if is_gblend(row["method"]):
            heads += [h for h in row["weights"] if h not in heads]
    fields = ["method", "modalities", "setting", "n_ok", "n_failed", "top1_mean", "top1_std", "top5_mean", "seeds",
              "top1_per_seed", "weights", *[f"weight_{h}" for h in heads], "failed_seeds", "errors", "rounds",
              "fallback_rounds", "safeguard_rounds", "no_estimate_seeds", "quantities"]
    f = io.StringIO(newline="")
    # one string, written once: the report may go to object storage
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for row in rows:
        gb = is_gblend(row["method"])
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
            "rounds": row["rounds"] if gb else "",
            "fallback_rounds": row["fallback_rounds"] if gb else "",
            "safeguard_rounds": row["safeguard_rounds"] if gb else "",
            "no_estimate_seeds": ";".join(str(s) for s in row["no_estimate_seeds"]),
            "quantities": quantities_text(row.get("quantities") or {}),
        })
    resolve(path).write_text(f.getvalue())
    return path
