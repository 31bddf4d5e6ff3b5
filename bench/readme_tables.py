"""The README's results tables, regenerated from fresh runs.

    python bench/readme_tables.py --table quickstart            # run it and print the table
    python bench/readme_tables.py --table quickstart --write    # ... and put it into README.md
    python bench/readme_tables.py --table quickstart --check    # exit 1 if README.md's table differs
    python bench/readme_tables.py --table fair --from runs/fair --write   # from a compare already run

A table sits in README.md between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``.

- ``quickstart``: ``gblend compare search_spaces/quickstart.yaml --seeds 3 --inline``
  (under a minute on 2 cores; a slow test checks the README against it);
- ``fair``: ``gblend compare search_spaces/fair.yaml --tune --seeds 3 --inline`` (every
  method's learning rate and weight decay searched on validation, 4 Optuna trials each,
  then its choice rerun on 3 seeds; about 15 minutes on 2 cores; run by hand);
- ``suite``: every set of the suite (the two synthetic presets through their configs, the
  four real sets through ``search_spaces/realdata.yaml``), each a ``gblend compare --seeds 3
  --inline`` of every method under the defaults, then G-Blend offline and online again
  under the paper-exact setting (``PAPER_EXACT``); about 25 minutes on 2 cores, run by
  hand. ``--out DIR`` keeps the compares (``DIR/<set>/``, ``DIR/<set>-paper/``) for
  ``--from DIR``.

W&B is off for these runs (``tracking.backend=none``): it records, it does not change a
figure.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TABLES = {
    "quickstart": ["compare", str(ROOT / "search_spaces" / "quickstart.yaml"), "--seeds", "3", "--inline"],
    "fair": ["compare", str(ROOT / "search_spaces" / "fair.yaml"), "--tune", "--seeds", "3", "--inline"],
}


SUITE = {
    "av-weak-audio": "quickstart.yaml",
    "av3": "quickstart.yaml",
    "mfeat": "realdata.yaml",
    "basic-motions": "realdata.yaml",
    "image-segments": "realdata.yaml",
    "watch-exercises": "realdata.yaml",
}
"""The suite's sets and the config each runs through (``data.preset`` picks the set)."""

PAPER_EXACT = ["blend.metric=loss", "blend.safeguard=none"]
"""Algorithms 1-3 as the paper writes them: G and O in the loss, no safeguard on the
prediction head (the probe horizon is the super-epoch, offline the whole run, as by default)."""

GBLEND = ["gblend:offline", "gblend:online"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def render(summary: dict) -> str:
    """The markdown table of a compare's ``summary.json``."""
    tuned = any("chosen" in s for s in summary.values())
    head = ["method", "test top-1", "seeds"] + (["chosen (validation top-1)"] if tuned else [])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, s in summary.items():
        cells = [method, f"{_pct(s['mean'])} ± {_pct(s['std'])}" if s["mean"] is not None else "—",
                 " ".join(_pct(r) for r in s["runs"])]
        if tuned:
            sel = s.get("selected_by") or {}
            hp = ", ".join(f"`{k}={_short(v)}`" for k, v in (s.get("chosen") or {}).items())
            cells.append(f"{hp} ({_pct(sel['value'])})" if sel.get("value") is not None else "no trial finished")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _cell(s: dict | None) -> str:
    if not s or s.get("mean") is None:
        return "—"
    fell_back = len(s.get("no_estimate_seeds", []))
    return f"{_pct(s['mean'])} ± {_pct(s['std'])}" + (f" ({fell_back}✗)" if fell_back else "")


def render_suite(summaries: dict[str, tuple[dict, dict]]) -> str:
    """The suite's table: per set, its best uni-modal method, the fusions under the
    defaults and G-Blend under the paper-exact setting; (k✗): k seeds had no estimate."""
    head = ["set", "best uni-modal", "naive", "aux", "G-Blend offline", "G-Blend online",
            "offline, paper-exact", "online, paper-exact"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, (default, paper) in summaries.items():
        uni = max((m for m in default if m.startswith("uni:")), key=lambda m: default[m]["mean"])
        cells = [name, f"{_cell(default[uni])} ({uni[4:]})", _cell(default.get("naive")), _cell(default.get("aux")),
                 *(_cell(default.get(m)) for m in GBLEND), *(_cell(paper.get(m)) for m in GBLEND)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _compare(args: list[str], out: str) -> dict:
    from gblend_ray.cli import main

    args = [*args, "--out", out, "--set", "tracking.backend=none"]
    with contextlib.redirect_stdout(io.StringIO()) as shown:
        code = main(args)
    if code != 0:
        sys.stderr.write(shown.getvalue())
        raise SystemExit(f"gblend {' '.join(args)} exited {code}")
    return json.loads((Path(out) / "summary.json").read_text())


def _suite_runs(name: str, config: str) -> tuple[list[str], list[str]]:
    """The two compares of set ``name``: every method under the defaults, then G-Blend paper-exact."""
    base = ["compare", str(ROOT / "search_spaces" / config), "--seeds", "3", "--inline", "--overwrite",
            "--set", f"data.preset={name}"]
    paper = [*base, "--methods", ",".join(GBLEND)] + [a for o in PAPER_EXACT for a in ("--set", o)]
    return base, paper


def read_suite(out: Path) -> dict[str, tuple[dict, dict]]:
    return {name: (json.loads((out / name / "summary.json").read_text()),
                   json.loads((out / f"{name}-paper" / "summary.json").read_text())) for name in SUITE}


def measure_suite(out: Path, sets: list[str] | None = None) -> str:
    """Run the suite's compares (``sets`` alone, when given; the others are read from ``out``)."""
    for name, config in SUITE.items():
        if sets and name not in sets:
            continue
        base, paper = _suite_runs(name, config)
        _compare(base, str(out / name))
        _compare(paper, str(out / f"{name}-paper"))
        print(f"{name}: done", file=sys.stderr)
    return render_suite(read_suite(out))


def measure(name: str) -> str:
    with tempfile.TemporaryDirectory(prefix=f"gblend-table-{name}-") as out:
        return render(_compare(TABLES[name], out))


def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- table:{name} -->\n)(.*?)(<!-- /table:{name} -->)", re.DOTALL)


def in_readme(name: str, text: str) -> str | None:
    found = _block(name).search(text)
    return found.group(2).rstrip("\n") if found else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", choices=sorted([*TABLES, "suite"]), required=True)
    parser.add_argument("--from", dest="source", metavar="DIR",
                        help="render the summary.json of a compare already run by the table's command "
                             "(suite: the --out DIR of a suite run)")
    parser.add_argument("--out", metavar="DIR", help="suite: keep its compares here (default: a temporary folder)")
    parser.add_argument("--sets", help="suite: comma-separated sets to run again into --out (the rest read from it)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--write", action="store_true", help="put the table into README.md")
    what.add_argument("--check", action="store_true", help="exit 1 if README.md's table differs")
    args = parser.parse_args()
    if args.table == "suite":
        if args.source:
            table = render_suite(read_suite(Path(args.source)))
        elif args.out:
            table = measure_suite(Path(args.out), args.sets.split(",") if args.sets else None)
        else:
            with tempfile.TemporaryDirectory(prefix="gblend-table-suite-") as out:
                table = measure_suite(Path(out))
    else:
        table = (render(json.loads((Path(args.source) / "summary.json").read_text())) if args.source
                 else measure(args.table))
    print(table)
    text = README.read_text()
    current = in_readme(args.table, text)
    if current is None:
        print(f"README.md has no <!-- table:{args.table} --> block", file=sys.stderr)
        return 1
    if args.write:
        README.write_text(_block(args.table).sub(lambda m: m.group(1) + table + "\n" + m.group(3), text))
    elif args.check and current != table:
        print(f"README.md's {args.table} table is stale; regenerate it with "
              f"python bench/readme_tables.py --table {args.table} --write\nREADME.md has:\n{current}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
