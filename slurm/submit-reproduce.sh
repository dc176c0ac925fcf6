#!/usr/bin/env bash
# submit-reproduce.sh - submit a paper table (`fedast-mpi reproduce`) as SLURM job arrays: one
# sweep (slurm/submit-sweep.sh) per row of the table into OUT/<row>, then one job that writes
# OUT/reproduce.md and reproduce.csv once every row's sweep succeeded.
#
#   slurm/submit-reproduce.sh TABLE SEEDS [OUT] [--rows R1,R2] [--set KEY=VALUE ...]
#   slurm/submit-reproduce.sh fig5-fmnist 3 --set 'tasks.*.data_dir=/data/fmnist'
#
# TABLE: fig5-fmnist, fig5-mnist, fig5-cifar10, fig5-shakespeare, fig7, fig18, fig20.
# OUT defaults to runs/reproduce-<table>-<date>. Run it from the fedast-mpi checkout; the array
# tasks are sweep.sbatch jobs (adapt them with FEDAST_SBATCH_ARGS, e.g. "-p gpu -A proj -n 5").
# Environment: as submit-sweep.sh (FEDAST_SBATCH_ARGS, FEDAST_SUMMARY_ARGS,
# FEDAST_SWEEP_PARALLEL); FEDAST_VENV (default ./.venv) for the fedast-mpi that lists the rows.
# Prints one line per row and last "SUMMARY_ID" (the job writing reproduce.md).
set -euo pipefail
usage() { sed -n '2,14p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
TABLE=$1 SEEDS=$2; shift 2
OUT=
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUT=$1; shift; fi
ROWS=()
if [ "${1:-}" = --rows ]; then
    [ $# -ge 2 ] || usage
    ROWS=(--rows "$2"); shift 2
fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${FEDAST_VENV:-$PWD/.venv}
FEDAST=fedast-mpi
if [ "$VENV" != none ] && [ -x "$VENV/bin/fedast-mpi" ]; then FEDAST=$VENV/bin/fedast-mpi; fi

case $SEEDS in ''|*[!0-9]*) echo "submit-reproduce.sh: error: SEEDS must be a positive integer, got '$SEEDS'" >&2; exit 2 ;; esac
rows=$("$FEDAST" reproduce "$TABLE" "${ROWS[@]}" --list) || exit 2
[ -n "$OUT" ] || OUT=runs/reproduce-$TABLE-$(date +%Y%m%d-%H%M%S)
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
mkdir -p "$OUT"

deps=
while read -r key config algorithms; do
    ids=$("$HERE/submit-sweep.sh" "$config" "$algorithms" "$SEEDS" "$OUT/$key" "$@" | tail -n 1)
    summary=${ids#* }
    echo "row $key: sweep array ${ids%% *}, its summary job $summary, into $OUT/$key"
    deps=$deps:$summary
done <<<"$rows"

# shellcheck disable=SC2086  # FEDAST_SUMMARY_ARGS is an option list on purpose
final=$(sbatch --parsable --dependency=afterok"$deps" --kill-on-invalid-dep=yes \
        --job-name=fedast-reproduce-summary --ntasks=1 --cpus-per-task=1 --gres=none \
        --time=00:15:00 --output=%x-%j.out ${FEDAST_SUMMARY_ARGS:-} \
        "$HERE/reproduce-summary.sbatch" "$TABLE" --seeds "$SEEDS" --out "$OUT" \
        "${ROWS[@]}" "$@")
final=${final%%;*}
echo "summary job $final: after every row, writes $OUT/reproduce.md"
echo "$final"
