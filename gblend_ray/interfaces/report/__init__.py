"""``gblend report``: paper-style tables and plots from finished run directories.

Runs (``runs.py``) are grouped by (method, modalities, setting) and summarised over seeds
(``tables.py``). :func:`write_report` writes ``report.md`` (the table the paper would
print: test top-1 as mean ± std over seeds, top-5, seeds, the G-Blend weights as
``[video,audio,fused]=[...]``, failures), ``report.csv`` (the same rows, as numbers) and
PNG plots (``plots.py``):

- ``weights_<method>.png``: each head's weight at every estimation round (Fig. 5a);
- ``curves_<method>.png``: train and validation error per head over epochs (Fig. 4);
- ``quantities_<method>.png``: a balancing method's per-step quantities per epoch;
- ``per_class.png``: per-class test top-1 of the best G-Blend (else multi-modal) group
  minus the best uni-modal group's, classes sorted by gain (Fig. 6).

Only the standard library, numpy and matplotlib (Agg, imported when plotting) are used:
reporting must work on a machine that holds the results but not torch or Ray.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ...core.rounds import estimation_summary
from ...storage.location import Location, resolve
from .plots import plot_curves, plot_per_class, plot_quantities, plot_weights, slug
from .runs import GroupKey, RunRecord, find_runs, group_runs, is_gblend, method_kind
from .tables import label, markdown, summarize, weights_string, write_csv

__all__ = ["RunRecord", "find_runs", "summarize", "weights_string", "write_report", "method_kind"]

Section = tuple[str, Path, str]
"""A plot in ``report.md``: its title, its image and the text under it."""


def _file_slug(key: GroupKey) -> str:
    method, mods, setting = key
    return slug(method, mods) + ("__" + hashlib.sha1(setting.encode()).hexdigest()[:6] if setting else "")


def _row_plots(rows: list[dict], groups: dict[GroupKey, list[RunRecord]], out: Path) -> list[Section]:
    """Each row's weight trajectory (G-Blend rows) and train/validation curves."""
    sections: list[Section] = []
    for row in rows:
        key = (row["method"], row["modalities"], row["setting"])
        runs = groups.get(key, [])
        if not runs:
            continue
        name = label(*key)
        if is_gblend(row["method"]):
            p = plot_weights(runs, name, out / f"weights_{_file_slug(key)}.png")
            if p:
                sections.append((f"G-Blend weights per round: {name}", p, ""))
        p = plot_curves(runs, name, out / f"curves_{_file_slug(key)}.png")
        if p:
            sections.append((f"Train and validation error: {name}", p, ""))
        p = plot_quantities(runs, name, out / f"quantities_{_file_slug(key)}.png")
        if p:
            sections.append((f"Balancing quantities per epoch: {name}", p, ""))
    return sections


def _per_class_plot(rows: list[dict], groups: dict[GroupKey, list[RunRecord]], out: Path) -> tuple[Section | None, str]:
    """Fig. 6 for the best G-Blend (else multi-modal) row against the best uni-modal row;
    without it, the note that says why."""
    ok_rows = [row for row in rows if row["n_ok"]]
    unis = [row for row in ok_rows if method_kind(row["method"]) == "uni"]
    multis = ([row for row in ok_rows if is_gblend(row["method"])]
              or [row for row in ok_rows if method_kind(row["method"]) != "uni"])
    if not unis:
        return None, "Per-class plot skipped: no uni-modal run."
    if not multis:
        return None, "Per-class plot skipped: no multi-modal run."
    # max() keeps the first of equals, i.e. the earlier row in table order.
    mk, uk = ((best["method"], best["modalities"], best["setting"])
              for best in (max(multis, key=lambda row: row["mean"]), max(unis, key=lambda row: row["mean"])))
    p, note = plot_per_class((label(*mk), groups[mk]), (label(*uk), groups[uk]), out / "per_class.png")
    return (("Per-class gain", p, note) if p else None), note


def write_report(root: str | Path | Location, out: str | Path | Location | None = None,
                 without_fallback: bool = False) -> dict:
    """Write ``report.md``, ``report.csv`` and the plots for the runs under ``root`` (a
    local path or a storage URI). Files go to ``out`` (default ``root``).
    ``without_fallback`` leaves out G-Blend runs whose every round fell back (named under
    the table), so that a sweep's rows compare estimates only. Returns
    ``{"md": path, "csv": path, "plots": [paths]}`` (``Path``s for local files).
    Raises ValueError when ``root`` is not a directory or holds no run.
    """
    where = resolve(root)
    if not where.is_dir():
        raise ValueError(f"no such directory: {where}")
    runs = find_runs(where)
    if not runs:
        raise ValueError(f"no runs under {where}: expected directories with results.json or error.txt")
    left_out = [r for r in runs if without_fallback and r.ok and is_gblend(r.method)
                and (estimation_summary(r.trajectory) or {}).get("status") == "none"]
    runs = [r for r in runs if r not in left_out]
    if not runs:
        raise ValueError(f"every run under {where} is a G-Blend run without an estimate; "
                         "report without --without-fallback to see them")
    target = resolve(out) if out is not None else where
    target.mkdir()
    out = target.local_path or target
    root = where.local_path or where
    rows = summarize(runs)
    groups = group_runs(runs, ok_only=True)
    sections = _row_plots(rows, groups, out)
    per_class, note = _per_class_plot(rows, groups, out)
    sections += [per_class] if per_class else []
    md_path = out / "report.md"
    sweep = where / "sweep.json"
    trials = json.loads(sweep.read_text()) if sweep.exists() else None
    resolve(md_path).write_text(markdown(root, runs, rows, sections, [] if per_class else [note], left_out,
                                         trials if isinstance(trials, list) else None))
    csv_path = write_csv(rows, out / "report.csv")
    return {"md": md_path, "csv": csv_path, "plots": [p for _, p, _ in sections]}
