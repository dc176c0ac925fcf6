#!/usr/bin/env bash
# submit-sweep.sh - submit a fedast-mpi comparison (algorithms x seeds) as a SLURM job array,
# plus a one-task job that writes OUT/compare.md and compare.csv once every run succeeded.
#
#   slurm/submit-sweep.sh CONFIG ALGORITHMS SEEDS [OUT] [--set KEY=VALUE ...]
#   slurm/submit-sweep.sh configs/compare-embedded.yaml fedast,sync,sync-bayes,sync-ucb 3
#
# CONFIG `default` = the embedded job. OUT defaults to runs/compare-<config>-<date>.
# Run it from the fedast-mpi checkout (the jobs find slurm/env.sh there).
# Environment:
#   FEDAST_SBATCH_ARGS     extra sbatch options for the array tasks (e.g. "-p gpu -A proj -n 5")
#   FEDAST_SUMMARY_ARGS    extra sbatch options for the summary job
#   FEDAST_SWEEP_PARALLEL  at most this many array tasks at once (--array=0-N%P)
#   FEDAST_VENV            (default ./.venv) the fedast-mpi that counts the plan's runs
# Prints the two job ids (also as the last line: "ARRAY_ID SUMMARY_ID").
set -euo pipefail
usage() { sed -n '2,15p' "$0" >&2; exit 2; }
[ $# -ge 3 ] || usage
CONFIG=$1 ALGORITHMS=$2 SEEDS=$3; shift 3
OUT=
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUT=$1; shift; fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

case $SEEDS in ''|*[!0-9]*) echo "submit-sweep.sh: error: SEEDS must be a positive integer, got '$SEEDS'" >&2; exit 2 ;; esac
[ "$SEEDS" -ge 1 ] || { echo "submit-sweep.sh: error: SEEDS must be >= 1" >&2; exit 2; }
IFS=, read -r -a algs <<<"$ALGORITHMS"
[ "${#algs[@]}" -ge 1 ] || { echo "submit-sweep.sh: error: no algorithms" >&2; exit 2; }
VENV=${FEDAST_VENV:-$PWD/.venv}
FEDAST=fedast-mpi
if [ "$VENV" != none ] && [ -x "$VENV/bin/fedast-mpi" ]; then FEDAST=$VENV/bin/fedast-mpi; fi
if [ "$CONFIG" != default ] && [ ! -r "$CONFIG" ]; then
    echo "submit-sweep.sh: error: config $CONFIG not readable" >&2; exit 2
fi
if [ -z "$OUT" ]; then
    stem=$(basename "${CONFIG%.*}")
    OUT=runs/compare-$stem-$(date +%Y%m%d-%H%M%S)
fi
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
case $CONFIG in default|/*) ;; *) CONFIG=$PWD/$CONFIG ;; esac
CONFIG_ARG=()
[ "$CONFIG" = default ] || CONFIG_ARG=("$CONFIG")
# the plan's runs (a single-task algorithm on M tasks has M per seed); checks config and --set
N=$("$FEDAST" compare "${CONFIG_ARG[@]}" --algorithms "$ALGORITHMS" --seeds "$SEEDS" \
    --out "$OUT" --plan "$@" | wc -l) || exit 2
[ "$N" -ge 1 ] || exit 2
mkdir -p "$OUT"
ARRAY=0-$((N - 1))${FEDAST_SWEEP_PARALLEL:+%$FEDAST_SWEEP_PARALLEL}

# shellcheck disable=SC2086  # the *_ARGS are option lists on purpose
array_id=$(sbatch --parsable --array="$ARRAY" ${FEDAST_SBATCH_ARGS:-} \
           "$HERE/sweep.sbatch" "$CONFIG" "$ALGORITHMS" "$SEEDS" "$OUT" "$@")
array_id=${array_id%%;*}
# shellcheck disable=SC2086
summary_id=$(sbatch --parsable --dependency=afterok:"$array_id" --kill-on-invalid-dep=yes \
             --job-name=fedast-sweep-summary --ntasks=1 --cpus-per-task=1 --gres=none \
             --time=00:15:00 --output=%x-%j.out ${FEDAST_SUMMARY_ARGS:-} \
             "$HERE/sweep.sbatch" --summarize "$CONFIG" "$ALGORITHMS" "$SEEDS" "$OUT" "$@")
summary_id=${summary_id%%;*}
echo "array job $array_id: $N runs (--array=$ARRAY: $ALGORITHMS x $SEEDS seed(s)) into $OUT"
echo "summary job $summary_id: after array job $array_id succeeds, writes $OUT/compare.md"
echo "$array_id $summary_id"
