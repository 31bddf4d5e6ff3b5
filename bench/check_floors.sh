#!/usr/bin/env bash
# Checks the lowest Ray and wandb versions pyproject.toml admits: each is installed into a
# folder of its own that goes first on PYTHONPATH (the rest of the venv stays), and the
# tests that use it run against it. Run by hand from the repository root, in the venv:
#   bash bench/check_floors.sh            # Ray 2.51.2 and wandb 0.19.10
#   RAY=2.48.0 bash bench/check_floors.sh # an older Ray, to see it fail
set -euo pipefail
RAY=${RAY:-2.51.2}
WANDB=${WANDB:-0.19.10}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export RAY_AUTH_MODE=disabled WANDB_MODE=offline

pip install -q --no-deps --target "$work/ray" "ray==$RAY"
echo "== ray $RAY: one trainer worker and two DDP workers, probes as Tune trials"
PYTHONPATH="$work/ray" python -m pytest -q -p no:cacheprovider tests/distributed/test_ray_runner.py \
  -k "one_worker or two_worker_ddp"

# wandb of that age wants protobuf < 7 beside it (pip would pick one on a fresh install)
pip install -q --target "$work/wandb" "wandb==$WANDB" "protobuf<7,!=5.28.0" sentry-sdk setproctitle \
  docker-pycreds gitpython --no-deps
echo "== wandb $WANDB: offline runs written, resumed and read back"
PYTHONPATH="$work/wandb" python -m pytest -q -p no:cacheprovider tests/interfaces/test_tracking.py
