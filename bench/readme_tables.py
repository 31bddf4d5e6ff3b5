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
  then its choice rerun on 3 seeds; about 15 minutes on 2 cores; run by hand).

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


def measure(name: str) -> str:
    from gblend_ray.cli import main

    with tempfile.TemporaryDirectory(prefix=f"gblend-table-{name}-") as out:
        args = [*TABLES[name], "--out", out, "--set", "tracking.backend=none"]
        with contextlib.redirect_stdout(io.StringIO()) as shown:
            code = main(args)
        if code != 0:
            sys.stderr.write(shown.getvalue())
            raise SystemExit(f"gblend {' '.join(args)} exited {code}")
        return render(json.loads((Path(out) / "summary.json").read_text()))


def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- table:{name} -->\n)(.*?)(<!-- /table:{name} -->)", re.DOTALL)


def in_readme(name: str, text: str) -> str | None:
    found = _block(name).search(text)
    return found.group(2).rstrip("\n") if found else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", choices=sorted(TABLES), required=True)
    parser.add_argument("--from", dest="source", metavar="DIR",
                        help="render the summary.json of a compare already run by the table's command")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--write", action="store_true", help="put the table into README.md")
    what.add_argument("--check", action="store_true", help="exit 1 if README.md's table differs")
    args = parser.parse_args()
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
