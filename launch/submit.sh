#!/usr/bin/env bash
# Submit a gblend sweep as a Ray job to the cluster at $RAY_ADDRESS, follow its logs, and exit
# with the job's outcome.
#
#   RAY_ADDRESS=http://127.0.0.1:8265 launch/submit.sh [RAY_JOB_SUBMIT_OPTION ... --] SPACE.yaml OUT_DIR [extra gblend sweep args]
#
# e.g.
#   ray dashboard launch/cluster.yaml &          # forwards the head's dashboard to localhost:8265
#   RAY_ADDRESS=http://127.0.0.1:8265 launch/submit.sh search_spaces/quickstart.yaml \
#       s3://EXAMPLE-BUCKET/gblend/runs/quickstart --set train.epochs=2
#   # then, anywhere with the bucket's credentials:
#   gblend report s3://EXAMPLE-BUCKET/gblend/runs/quickstart   # report.md, report.csv and plots, into the bucket
#
# RAY_ADDRESS is the job submission address, i.e. the head node's dashboard
# (http://HEAD:8265), not the GCS address (HEAD:6379).
#
# What runs: `ray job submit` uploads this repository as the job's working directory, minus
# what .rayignore (at the repo root) and .gitignore list: Ray reads both from the working
# dir itself, so this script passes no excludes of its own. `python -m gblend_ray.cli` then
# imports this checkout's gblend_ray on the cluster and runs
#     python -m gblend_ray.cli sweep SPACE --out OUT_DIR --resume [extra args]
# there. Ray runs a job's driver on the head node unless the job asks for entrypoint
# resources; if you give it --entrypoint-num-cpus or the like, add
# --entrypoint-resources '{"gblend_stable": 1}' so that the driver stays off preemptible nodes.
#
# One driver per OUT_DIR. The job's submission id is derived from OUT_DIR:
# gblend-<last path part>-<first 12 hex digits of sha256(OUT_DIR without trailing /)>, e.g.
# gblend-quickstart-1a2b3c4d5e6f. Ray refuses a job whose id it already has, running or
# finished, so a second submit of the same OUT_DIR is refused (exit 4) instead of starting a
# second driver over the same directory. To submit again on purpose (after a failure, a
# stop, a lost cluster), choose the id yourself:
#     GBLEND_SUBMISSION_ID=gblend-quickstart-1a2b3c4d5e6f-2 launch/submit.sh SPACE.yaml OUT_DIR
# (or `--submission-id ID --` before SPACE.yaml), or free the id of a finished job with
# `ray job delete ID`. The new job continues the sweep: --resume is passed by default (on an
# empty OUT_DIR it simply starts). Pass --overwrite (or --resume) among the sweep args to
# decide yourself; --overwrite removes the sweep in OUT_DIR first.
#
# Extra `ray job submit` options go before SPACE.yaml and end with `--`, each word as given
# (no splitting), e.g.
#     launch/submit.sh --entrypoint-num-cpus 1 --entrypoint-resources '{"gblend_stable": 1}' -- SPACE.yaml OUT_DIR
# --no-wait submits and exits 0 without following the job. --headers and --verify also go
# to the `ray job logs` and `ray job status` calls. --address, --working-dir, --runtime-env
# and --runtime-env-json are this script's own (RAY_ADDRESS, the repo root, the runtime env
# below) and refused here.
#
# Exit codes (the job's, where it has one):
#   0    the job SUCCEEDED (or it was submitted with --no-wait)
#   1    the job FAILED: a run of the sweep failed (gblend exited 1), or the job failed
#        outside gblend (its runtime env, a lost node, a signal)
#   2    bad input: this script's arguments, or gblend exited 2 (config, data, OUT_DIR, resources)
#   3    the job was STOPPED (`ray job stop ID`)
#   4    not submitted: a job with this submission id exists (see above), or the cluster
#        refused the job or could not be reached
#   5    the job's final status could not be read (it may still run: `ray job status ID`)
#   130  gblend was interrupted (it exited 130), or Ctrl-C here, which only stops following:
#        the job runs on (`ray job stop ID` ends it)
#
# Paths:
#   OUT_DIR  where the sweep writes: a storage URI such as s3://bucket/runs/NAME (an
#            S3-compatible store: s3://bucket/runs/NAME?endpoint_override=HOST:PORT&scheme=http),
#            or an absolute path on storage every node can write (NFS, EFS, ...). The nodes'
#            credentials come from their environment or instance role, never from this
#            script. A relative path is refused: the job's working directory is a temporary
#            copy of the repo on the head node, where it would end up.
#   SPACE    a file inside this repo is passed relative to the repo root, so it is read
#            from the uploaded copy (and its relative data.path, e.g. quickstart's
#            ../data/av-overfit, resolves inside that copy; the synthetic presets are
#            generated there on first use). Any other path is passed as given and must
#            exist on the cluster. For real data, put it where every node reads it and add
#            `--set data.path=...`.
#
# Environment:
#   RAY_ADDRESS           (required) the cluster's dashboard address.
#   GBLEND_SUBMISSION_ID  the job's submission id instead of the one derived from OUT_DIR.
#   WANDB_MODE            forwarded to the job when set; unset, gblend decides on the cluster
#                         (online when the nodes have a W&B API key, else offline). Secrets
#                         such as WANDB_API_KEY are never passed here: the cluster's nodes get
#                         them (see launch/cluster.yaml and launch/rayjob.yaml).
#   GBLEND_SUBMIT_POLL_SECONDS
#                         how often the job's status is polled when its log stream ends
#                         early (default 10).
#
# Dependencies: the job installs nothing; the cluster's image/setup already has torch, ray
# and the rest (see launch/cluster.yaml). To have Ray install packages for this job only,
# add a "pip" entry to runtime_env below, e.g.
#     "pip": ["wandb>=0.17", "av>=12"],
# (or "pip": {"packages": ["wandb>=0.17"], "pip_check": false}); Ray builds a virtualenv
# per node on the job's first use, which costs minutes.
set -euo pipefail

EXIT_OK=0 EXIT_FAILED=1 EXIT_BAD_INPUT=2 EXIT_STOPPED=3 EXIT_NOT_SUBMITTED=4 EXIT_UNKNOWN=5 EXIT_INTERRUPTED=130

usage() {
    echo "usage: RAY_ADDRESS=http://HEAD:8265 $0 [RAY_JOB_SUBMIT_OPTION ... --] SPACE.yaml OUT_DIR" \
         "[extra gblend sweep args]" >&2
}

die() {  # die CODE MESSAGE...
    local code="$1"
    shift
    echo "submit.sh: error: $*" >&2
    exit "$code"
}

if [[ $# -ge 1 && ( "$1" == "-h" || "$1" == "--help" ) ]]; then
    usage
    exit "$EXIT_OK"
fi
if [[ -n "${GBLEND_SUBMIT_ARGS+set}" ]]; then
    die "$EXIT_BAD_INPUT" "GBLEND_SUBMIT_ARGS is no longer read; pass \`ray job submit\` options before" \
        "SPACE.yaml, ended by --, e.g. $0 --entrypoint-num-cpus 1 -- SPACE.yaml OUT_DIR"
fi

# `ray job submit` options: the words before the first `--`, when the first word is an option.
submit_opts=()
if [[ $# -ge 1 && "$1" == "--" ]]; then
    shift
elif [[ $# -ge 1 && "$1" == -* ]]; then
    while [[ $# -gt 0 && "$1" != "--" ]]; do
        submit_opts+=("$1")
        shift
    done
    if [[ $# -eq 0 ]]; then
        usage
        die "$EXIT_BAD_INPUT" "\`ray job submit\` options (${submit_opts[*]}) must end with -- before SPACE.yaml"
    fi
    shift
fi

submission_id="${GBLEND_SUBMISSION_ID:-}"
no_wait=0
passthrough=()  # to `ray job submit`
common=()       # to `ray job submit`, `ray job logs` and `ray job status`
n=${#submit_opts[@]}
i=0
while [[ $i -lt $n ]]; do
    opt="${submit_opts[$i]}"
    case "$opt" in
        --submission-id=* | --job-id=*)
            submission_id="${opt#*=}" ;;
        --submission-id | --job-id | --headers | --verify)
            [[ $((i + 1)) -lt $n ]] || die "$EXIT_BAD_INPUT" "$opt needs a value"
            i=$((i + 1))
            case "$opt" in
                --submission-id | --job-id) submission_id="${submit_opts[$i]}" ;;
                *) common+=("$opt" "${submit_opts[$i]}") ;;
            esac ;;
        --headers=* | --verify=*)
            common+=("$opt") ;;
        --no-wait)
            no_wait=1 ;;
        --address | --address=* | --working-dir | --working-dir=* | --runtime-env | --runtime-env=* \
            | --runtime-env-json | --runtime-env-json=*)
            die "$EXIT_BAD_INPUT" "${opt%%=*} is set by this script (from RAY_ADDRESS, the repo root and its" \
                "runtime env); leave it out" ;;
        *)
            passthrough+=("$opt") ;;
    esac
    i=$((i + 1))
done

if [[ $# -lt 2 ]]; then
    echo "submit.sh: error: expected SPACE.yaml and OUT_DIR, got $# argument(s)" >&2
    usage
    exit "$EXIT_BAD_INPUT"
fi
if [[ -z "${RAY_ADDRESS:-}" ]]; then
    die "$EXIT_BAD_INPUT" "RAY_ADDRESS is not set; set it to the cluster's job submission" \
        "(dashboard) address, e.g. RAY_ADDRESS=http://127.0.0.1:8265"
fi

space="$1"
out="$2"
shift 2

if [[ "$out" =~ ^[A-Za-z][A-Za-z0-9+.-]+:// ]]; then
    :  # a storage URI (s3://..., gs://..., file:///...)
elif [[ "$out" != /* ]]; then
    die "$EXIT_BAD_INPUT" "OUT_DIR must be a storage URI (s3://bucket/path) or an absolute path on storage" \
        "every node of the cluster can write, got '$out' (the job runs in a temporary copy of the repo)"
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
if [[ ! -f "$repo_root/.rayignore" ]]; then
    die "$EXIT_BAD_INPUT" "$repo_root/.rayignore is missing: Ray reads it to leave data/, runs/ and the" \
        "like out of the job's upload"
fi

# The submission id: one per OUT_DIR unless given.
if [[ -z "$submission_id" ]]; then
    out_key="$out"
    while [[ "$out_key" == */ && "$out_key" != "/" && "$out_key" != *:// ]]; do
        out_key="${out_key%/}"
    done
    if command -v sha256sum >/dev/null 2>&1; then
        digest="$(printf '%s' "$out_key" | sha256sum)"
    else
        digest="$(printf '%s' "$out_key" | shasum -a 256)"
    fi
    name="${out_key%%\?*}"
    name="${name##*/}"
    name="$(printf '%s' "$name" | tr -c 'A-Za-z0-9_-' '-')"
    name="${name:0:40}"
    submission_id="gblend-${name:+$name-}${digest:0:12}"
fi

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

# --resume unless the sweep args decide (--overwrite and --resume exclude each other).
resume=(--resume)
for arg in "$@"; do
    if [[ "$arg" == "--resume" || "$arg" == "--overwrite" ]]; then
        resume=()
    fi
done

if ! command -v ray >/dev/null 2>&1; then
    die "$EXIT_BAD_INPUT" "'ray' is not on PATH (pip install 'ray[default]==2.60.0')"
fi

json_string() {  # a bash string as a JSON string literal
    local s="$1"
    s="${s//\\/\\\\}"
    s="${s//\"/\\\"}"
    s="${s//$'\n'/\\n}"
    s="${s//$'\t'/\\t}"
    printf '"%s"' "$s"
}

if [[ -n "${WANDB_MODE:-}" ]]; then
    runtime_env="{\"env_vars\": {\"WANDB_MODE\": $(json_string "$WANDB_MODE")}}"
else
    runtime_env="{}"
fi

resubmit_hint() {
    echo "submit.sh: to continue the sweep in $out, submit it again under a new id, e.g." \
         "GBLEND_SUBMISSION_ID=$submission_id-2 $0 ... (it resumes: --resume is the default)," \
         "or free this id with: ray job delete $submission_id" >&2
}

# Prints the job's status (PENDING, RUNNING, SUCCEEDED, STOPPED, or FAILED and the driver's
# exit code when it has one), from `ray job status`; fails when the status cannot be read.
job_status() {
    local text
    text="$(ray job status --address "$RAY_ADDRESS" --log-color false ${common[@]+"${common[@]}"} \
            "$submission_id" 2>&1)" || return 1
    case "$text" in
        *"Job '$submission_id' succeeded"*)
            echo "SUCCEEDED" ;;
        *"Job '$submission_id' was stopped"*)
            echo "STOPPED" ;;
        *"Job '$submission_id' failed"*)
            if [[ "$text" =~ failed\ with\ exit\ code\ (-?[0-9]+) ]]; then
                echo "FAILED ${BASH_REMATCH[1]}"
            else
                echo "FAILED"
            fi ;;
        *)
            if [[ "$text" =~ Status\ for\ job\ \'[^\']*\':\ ([A-Z_]+) ]]; then
                echo "${BASH_REMATCH[1]}"
            else
                return 1
            fi ;;
    esac
}

echo "submit.sh: submitting sweep $space -> $out to $RAY_ADDRESS as job $submission_id" >&2
set +e
submitted="$(ray job submit \
    --address "$RAY_ADDRESS" \
    --submission-id "$submission_id" \
    --working-dir "$repo_root" \
    --runtime-env-json "$runtime_env" \
    --no-wait \
    ${common[@]+"${common[@]}"} \
    ${passthrough[@]+"${passthrough[@]}"} \
    -- python -m gblend_ray.cli sweep "$space" --out "$out" ${resume[@]+"${resume[@]}"} "$@" 2>&1)"
rc=$?
set -e
if [[ $rc -ne 0 && "$submitted" == *"already exists"* ]]; then
    # Ray's own words, without the tracebacks around them
    printf '%s\n' "$submitted" | grep -m 1 "already exists" || true
else
    printf '%s\n' "$submitted"
fi
if [[ $rc -ne 0 ]]; then
    if [[ "$submitted" == *"already exists"* ]]; then
        state="$(job_status || echo "unknown")"
        echo "submit.sh: refused: the cluster already has job $submission_id (status: ${state%% *})," \
             "the id for OUT_DIR $out, so no second driver starts on that directory unasked" >&2
        resubmit_hint
    else
        echo "submit.sh: error: \`ray job submit\` failed (exit $rc); the job was not submitted" >&2
    fi
    exit "$EXIT_NOT_SUBMITTED"
fi
if [[ $no_wait -eq 1 ]]; then
    echo "submit.sh: submitted job $submission_id; follow it with: ray job logs --follow $submission_id" >&2
    exit "$EXIT_OK"
fi

on_interrupt() {
    echo >&2
    echo "submit.sh: stopped following job $submission_id; it keeps running on the cluster." \
         "Follow it again: ray job logs --follow $submission_id; end it: ray job stop $submission_id" >&2
    exit "$EXIT_INTERRUPTED"
}
trap on_interrupt INT

if ! ray job logs --address "$RAY_ADDRESS" ${common[@]+"${common[@]}"} --follow "$submission_id"; then
    echo "submit.sh: note: following the job's logs ended with an error; reading its status" >&2
fi

poll_s="${GBLEND_SUBMIT_POLL_SECONDS:-10}"
unreadable=0
waiting=0
while true; do
    if ! state="$(job_status)"; then
        unreadable=$((unreadable + 1))
        if [[ $unreadable -ge 6 ]]; then
            echo "submit.sh: error: cannot read the status of job $submission_id from $RAY_ADDRESS;" \
                 "it may still run: ray job status $submission_id" >&2
            exit "$EXIT_UNKNOWN"
        fi
        sleep "$poll_s"
        continue
    fi
    unreadable=0
    read -r status code <<< "$state" || true
    case "$status" in
        SUCCEEDED)
            echo "submit.sh: job $submission_id SUCCEEDED" >&2
            exit "$EXIT_OK" ;;
        STOPPED)
            echo "submit.sh: job $submission_id was STOPPED" >&2
            resubmit_hint
            exit "$EXIT_STOPPED" ;;
        FAILED)
            case "${code:-}" in
                "$EXIT_FAILED" | "$EXIT_BAD_INPUT" | "$EXIT_INTERRUPTED") rc="$code" ;;
                *) rc="$EXIT_FAILED" ;;
            esac
            echo "submit.sh: job $submission_id FAILED${code:+: its driver exited $code}" >&2
            resubmit_hint
            exit "$rc" ;;
        *)  # PENDING or RUNNING: the log stream ended early (a dropped connection); poll
            if [[ $waiting -eq 0 ]]; then
                echo "submit.sh: job $submission_id is $status; waiting for it to end" \
                     "(ray job logs --follow $submission_id shows its logs)" >&2
                waiting=1
            fi
            sleep "$poll_s" ;;
    esac
done
