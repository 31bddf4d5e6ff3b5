"""The README's quickstart table is what a fresh run prints (``bench/readme_tables.py``)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_readme_quickstart_table_matches_a_fresh_run():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "readme_tables.py"), "--table", "quickstart",
                           "--check"], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
