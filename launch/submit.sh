#!/usr/bin/env bash
# Submit a gblend sweep as a Ray job to the cluster at $RAY_ADDRESS.
#
#   RAY_ADDRESS=http://127.0.0.1:8265 launch/submit.sh SPACE.yaml OUT_DIR [extra gblend sweep args]
#
# e.g.
#   ray dashboard launch/cluster.yaml &          # forwards the head's dashboard to localhost:8265
#   RAY_ADDRESS=http://127.0.0.1:8265 launch/submit.sh search_spaces/quickstart.yaml /mnt/runs/quickstart \
#       --set train.epochs=2
#   # then, on a machine that sees /mnt/runs:  gblend report /mnt/runs/quickstart
#
# RAY_ADDRESS is the job submission address, i.e. the head node's dashboard
# (http://HEAD:8265), not the GCS address (HEAD:6379).
#
# What runs: `ray job submit` uploads this repository (minus the excludes below) as the
# job's working directory, so `python -m gblend_ray.cli` imports this checkout's
# gblend_ray on the cluster, and runs
#     python -m gblend_ray.cli sweep SPACE --out OUT_DIR [extra args]
# there. `ray job submit` waits for the job and streams its logs; it exits non-zero when
# the job fails (Ctrl-C stops following the logs, not the job: `ray job stop ID` does).
#
# Paths:
#   OUT_DIR  must be absolute, on storage every node of the cluster can write (NFS, EFS,
#            a ReadWriteMany volume, ...). The job's working directory is a temporary
#            copy of the repo on the head node: a relative OUT_DIR would end up there.
#   SPACE    a file inside this repo is passed relative to the repo root, so it is read
#            from the uploaded copy (and its relative data.path, e.g. quickstart's
#            ../data/av-overfit, resolves inside that copy; the synthetic presets are
#            generated there on first use). Any other path is passed as given and must
#            exist on the cluster. For real data, put it on shared storage and add
#            `--set data.path=/mnt/data/...`.
#
# Environment:
#   RAY_ADDRESS         (required) the cluster's dashboard address.
#   WANDB_MODE          forwarded to the job (default: offline). Secrets such as
#                       WANDB_API_KEY are never written here: set them on the cluster
#                       (the nodes' environment, a Kubernetes secret) instead.
#   GBLEND_SUBMIT_ARGS  extra `ray job submit` options, split on spaces,
#                       e.g. "--no-wait --submission-id=quickstart-1".
#
# Dependencies: the job installs nothing; the cluster's image/setup already has torch, ray
# and the rest (see launch/cluster.yaml). To have Ray install packages for this job only,
# add a "pip" entry to the runtime env below, e.g.
#     "pip": ["wandb>=0.17", "av>=12"],
# (or "pip": {"packages": ["wandb>=0.17"], "pip_check": false}); Ray builds a virtualenv
# per node on the job's first use, which costs minutes.
set -euo pipefail

usage() {
    echo "usage: RAY_ADDRESS=http://HEAD:8265 $0 SPACE.yaml OUT_DIR [extra gblend sweep args]" >&2
}

if [[ $# -ge 1 && ( "$1" == "-h" || "$1" == "--help" ) ]]; then
    usage
    exit 0
fi
if [[ $# -lt 2 ]]; then
    echo "submit.sh: error: expected SPACE.yaml and OUT_DIR, got $# argument(s)" >&2
    usage
    exit 2
fi
if [[ -z "${RAY_ADDRESS:-}" ]]; then
    echo "submit.sh: error: RAY_ADDRESS is not set; set it to the cluster's job submission" \
         "(dashboard) address, e.g. RAY_ADDRESS=http://127.0.0.1:8265" >&2
    exit 2
fi

space="$1"
out="$2"
shift 2

if [[ "$out" != /* ]]; then
    echo "submit.sh: error: OUT_DIR must be an absolute path on storage the cluster can write," \
         "got '$out' (the job runs in a temporary copy of the repo)" >&2
    exit 2
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

# A space file inside the repo goes relative to the repo root (the job's working dir).
if [[ -f "$space" ]]; then
    space_abs="$(cd "$(dirname "$space")" && pwd -P)/$(basename "$space")"
    if [[ "$space_abs" == "$repo_root"/* ]]; then
        space="${space_abs#"$repo_root"/}"
    else
        space="$space_abs"
        echo "submit.sh: note: $space is outside the repo; the cluster must see it at that path" >&2
    fi
else
    echo "submit.sh: note: $space does not exist here; passing it as given (a path on the cluster)" >&2
fi

if ! command -v ray >/dev/null 2>&1; then
    echo "submit.sh: error: 'ray' is not on PATH (pip install 'ray[default]==2.60.0')" >&2
    exit 2
fi

json_string() {  # a bash string as a JSON string literal
    local s="$1"
    s="${s//\\/\\\\}"
    s="${s//\"/\\\"}"
    printf '"%s"' "$s"
}

# excludes: gitignore-style patterns relative to the repo root; .gitignore is honoured too.
runtime_env=$(cat <<EOF
{
  "env_vars": {"WANDB_MODE": $(json_string "${WANDB_MODE:-offline}")},
  "excludes": ["/data/", "/runs/", "/.venv/", "/.git/", "/wandb/", "__pycache__/", "*.egg-info/", ".pytest_cache/"]
}
EOF
)

extra_submit=()
if [[ -n "${GBLEND_SUBMIT_ARGS:-}" ]]; then
    read -r -a extra_submit <<< "$GBLEND_SUBMIT_ARGS"
fi

echo "submit.sh: submitting sweep $space -> $out to $RAY_ADDRESS" >&2
exec ray job submit \
    --address "$RAY_ADDRESS" \
    --working-dir "$repo_root" \
    --runtime-env-json "$runtime_env" \
    ${extra_submit[@]+"${extra_submit[@]}"} \
    -- python -m gblend_ray.cli sweep "$space" --out "$out" "$@"
