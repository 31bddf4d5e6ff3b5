"""The layer rule: each subpackage imports only from the layers below it, the math layer
uses neither torch nor Ray, and no subpackage's modules import each other in a cycle
(the import-linter contracts in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "lint-imports (import-linter) is not installed: pip install -e '.[dev]'"
    out = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout
    # every layer is named in the contract, so a new subpackage cannot sit outside it
    package = {p.name for p in (REPO / "gblend_ray").iterdir() if (p / "__init__.py").is_file()}
    assert package == {"core", "storage", "data", "training", "distributed", "interfaces"}
