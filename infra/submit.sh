#!/usr/bin/env bash
# Submit a recalign job (the nightly pipeline by default) to a running Ray cluster:
#
#   ray job submit --working-dir . --runtime-env infra/runtime_env.yaml \
#       --submission-id nightly-<YYYY-MM-DD> -- python -m recalign.jobs.nightly --config CONFIG
#
# Usage: infra/submit.sh CONFIG [ADDRESS] [-- JOB ARGS...]
#   CONFIG    job config, relative to the repository root (it travels in the working dir), e.g.
#             infra/configs/demo.yaml
#   ADDRESS   Ray job-submission address (the dashboard, http://HOST:8265); default $RAY_ADDRESS
#   JOB ARGS  appended to the entrypoint, e.g. -- --set output.root=s3://bucket/recalign
#
# Environment (all optional):
#   RAY_ADDRESS            address when none is given as an argument
#   RECALIGN_JOB           job module under recalign.jobs (default: nightly)
#   RECALIGN_RUN_DATE      YYYY-MM-DD in the submission id (default: today, UTC)
#   RECALIGN_RUNTIME_ENV   runtime_env file (default: infra/runtime_env.yaml)
#   RECALIGN_NO_WAIT=1     return after submitting instead of streaming logs until the job ends
#   RAY                    the ray executable (default: ray on PATH)
#
# The submission id is "<job>-<date>": Ray refuses a second job with an existing submission id
# ("Job with submission_id ... already exists"), so a second nightly submission on the same day
# fails here with a non-zero exit code instead of running the pipeline twice. To rerun a day on
# purpose, set RECALIGN_RUN_DATE or delete the old job (`ray job delete nightly-<date>`).
#
# Exit code: 0 when the job succeeded (or, with RECALIGN_NO_WAIT=1, was accepted); non-zero when
# Ray rejected the submission or the job failed (Ray's own exit code); 2 on a usage error.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage ;; esac
config=$1; shift
address=${RAY_ADDRESS:-}
if [ $# -ge 1 ] && [ "$1" != "--" ]; then address=$1; shift; fi
if [ $# -ge 1 ]; then
  [ "$1" = "--" ] || { echo "submit.sh: unexpected argument '$1' (job arguments go after --)" >&2; exit 2; }
  shift
fi
[ -n "$address" ] || { echo "submit.sh: no Ray address: pass one or set RAY_ADDRESS" >&2; exit 2; }

job=${RECALIGN_JOB:-nightly}
[[ $job =~ ^[a-z][a-z0-9_]*$ ]] || { echo "submit.sh: bad job name '$job'" >&2; exit 2; }
run_date=${RECALIGN_RUN_DATE:-$(date -u +%Y-%m-%d)}
[[ $run_date =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] \
  || { echo "submit.sh: RECALIGN_RUN_DATE must be YYYY-MM-DD, got '$run_date'" >&2; exit 2; }
submission_id="${job}-${run_date}"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runtime_env=${RECALIGN_RUNTIME_ENV:-$repo/infra/runtime_env.yaml}
[ -f "$runtime_env" ] || { echo "submit.sh: runtime_env file not found: $runtime_env" >&2; exit 2; }
cd "$repo"
[ -f "$config" ] || { echo "submit.sh: config not found: $config (give it relative to $repo)" >&2; exit 2; }
case "$config" in
  /*) echo "submit.sh: warning: $config is an absolute path; it must exist at that path on the" \
           "cluster (a path relative to the repository travels with the working dir)" >&2 ;;
esac

no_wait=()
[ "${RECALIGN_NO_WAIT:-0}" = "1" ] && no_wait=(--no-wait)

echo "submit.sh: submitting $submission_id to $address" >&2
exec "${RAY:-ray}" job submit \
  --address "$address" \
  --working-dir . \
  --runtime-env "$runtime_env" \
  --submission-id "$submission_id" \
  "${no_wait[@]}" \
  -- python -m "recalign.jobs.$job" --config "$config" "$@"
