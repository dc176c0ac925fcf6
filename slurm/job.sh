# slurm/job.sh - shared by the fedast-mpi sbatch templates (sourced, not run). No site settings
# here: those live in env.sh.
#
# What it provides:
#   fedast_parse_args "$@"         CONFIG (optional, first argument not starting with -) + EXTRA
#   fedast_run_dir                 RUN_DIR = ${FEDAST_RUN_DIR:-$SUBMIT_DIR/runs/$SLURM_JOB_NAME-$SLURM_JOB_ID}
#   fedast_main                    run CONFIG or resume in RUN_DIR, checkpoint + requeue on SIGUSR1
#   fedast_start ARGS...           the same with any fresh command (the sweep's `compare --only`)
#   fedast_ranks_per_gpu           ranks for one worker per GPU + the server (multi-node template)
#
# Signals. The templates ask SLURM for `--signal=B:USR1@LEAD`: LEAD seconds before the time
# limit SLURM sends SIGUSR1 to this batch shell only. The shell forwards SIGUSR1 to the launcher
# (mpiexec or srun forward it to every rank); rank 0 writes a checkpoint and the job exits 75
# ("interrupted"). The shell then runs `scontrol requeue $SLURM_JOB_ID`: the job goes back to the
# queue with the same job id, so the next start finds the same RUN_DIR and resumes.
# SIGTERM (scancel, preemption, the time limit itself) is forwarded the same way, but the job is
# only requeued after it if FEDAST_REQUEUE_ON_TERM=1 (default: a cancelled job stays cancelled).
#
# Knobs (environment): FEDAST_RUN_DIR, FEDAST_MAX_RESTARTS (default 100),
# FEDAST_REQUEUE_ON_TERM (0), FEDAST_SIGNAL_WAIT (60: at most this many seconds after the launch
# a signal is held back until the run has started writing, so that it never hits a rank that
# has not yet installed its handler).

fedast_log() { printf 'fedast-slurm: %s\n' "$*"; }
fedast_err() { printf 'fedast-slurm: error: %s\n' "$*" >&2; }

fedast_parse_args() {
    CONFIG=
    if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
        CONFIG=$1; shift
        case $CONFIG in /*) ;; *) CONFIG=$SUBMIT_DIR/$CONFIG ;; esac
        if [ ! -r "$CONFIG" ]; then fedast_err "config $CONFIG not readable"; exit 2; fi
    fi
    EXTRA=("$@")
}

# fedast_ranks_per_gpu: how many ranks to start for one worker per GPU on every node plus the
# server (rank 0, on the CPU) on the first: nodes x GPUs per node + 1, at most SLURM_NTASKS.
# GPUs per node: SLURM_GPUS_ON_NODE (else the count of SLURM_JOB_GPUS) of the first node, so
# nodes are assumed alike. Without GPUs: SLURM_NTASKS.
fedast_ranks_per_gpu() {
    local gpus=${SLURM_GPUS_ON_NODE:-} nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
    local total=${SLURM_NTASKS:-${SLURM_NPROCS:-1}} want
    if [ -z "$gpus" ] && [ -n "${SLURM_JOB_GPUS:-}" ]; then
        gpus=$(printf '%s\n' "$SLURM_JOB_GPUS" | tr ',' '\n' | grep -c .)
    fi
    case $gpus in ''|*[!0-9]*) gpus=0 ;; esac
    if [ "$gpus" -gt 0 ]; then
        want=$((nodes * gpus + 1))
        if [ "$want" -lt "$total" ]; then total=$want; fi
    fi
    echo "$total"
}

fedast_run_dir() {
    RUN_DIR=${FEDAST_RUN_DIR:-$SUBMIT_DIR/runs/${SLURM_JOB_NAME:-fedast}-${SLURM_JOB_ID:-$$}}
    export RUN_DIR
}

# --- signal handling: the traps only record; the main loop acts ---------------------------------
FEDAST_SIG=            # last signal received: USR1 or TERM
_fedast_nsig=0
_fedast_on_usr1() { FEDAST_SIG=USR1; _fedast_nsig=$((_fedast_nsig + 1)); }
_fedast_on_term() { FEDAST_SIG=TERM; _fedast_nsig=$((_fedast_nsig + 1)); }

_fedast_ready() {  # has the run started writing since the launch? (handlers are installed)
    local f=$RUN_DIR/run.h5 m
    [ -e "$f" ] || return 1
    m=$(stat -c %Y "$f" 2>/dev/null) || return 1
    [ "$m" -gt "$_fedast_t0" ]
}

_fedast_forward() {  # forward SIGUSR1 to the launcher once the ranks can take it
    local waited=0
    while kill -0 "$_fedast_child" 2>/dev/null && ! _fedast_ready \
          && [ "$waited" -lt "${FEDAST_SIGNAL_WAIT:-60}" ]; do
        sleep 1; waited=$((waited + 1))
    done
    if kill -0 "$_fedast_child" 2>/dev/null; then
        fedast_log "SIG$FEDAST_SIG received at $(date +%T): asking the run to checkpoint and stop (SIGUSR1 to pid $_fedast_child)"
        kill -USR1 "$_fedast_child" 2>/dev/null || true
    fi
}

# fedast_launch ARGS...: $FEDAST_LAUNCH fedast-mpi ARGS in the background, signals forwarded;
# sets FEDAST_RC to its exit code.
fedast_launch() {
    local rc prev= before forwarded=0
    fedast_log "launch: $FEDAST_LAUNCH fedast-mpi $*"
    _fedast_t0=$(date +%s)
    # shellcheck disable=SC2086  # FEDAST_LAUNCH is a command line on purpose
    $FEDAST_LAUNCH fedast-mpi "$@" &
    _fedast_child=$!
    while :; do
        before=$_fedast_nsig
        if [ "$forwarded" = 0 ] && [ -n "$FEDAST_SIG" ]; then
            forwarded=1
            _fedast_forward
            continue
        fi
        wait "$_fedast_child"; rc=$?
        if [ "$rc" = 127 ] && [ -n "$prev" ]; then
            rc=$prev   # the interrupted wait had in fact collected the exit status
            break
        fi
        if [ "$rc" -gt 128 ] && [ "$_fedast_nsig" != "$before" ]; then
            prev=$rc   # interrupted by one of our traps (or the child died of a signal meanwhile)
            continue
        fi
        break
    done
    FEDAST_RC=$rc
}

_fedast_status() {  # status attribute of RUN_DIR/run.h5, empty if unreadable
    python - "$RUN_DIR/run.h5" 2>/dev/null <<'EOF'
import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    s = f.attrs.get("status", "")
    print(s.decode() if isinstance(s, bytes) else s)
EOF
}

_fedast_has_checkpoint() {
    compgen -G "$RUN_DIR/checkpoints/ckpt-*.h5" >/dev/null
}

fedast_main() {  # the sbatch templates: run CONFIG into RUN_DIR, or resume it
    fedast_start run ${CONFIG:+"$CONFIG"} --out "$RUN_DIR" "${EXTRA[@]}"
}

# fedast_start FRESH_ARGS...: `fedast-mpi resume $RUN_DIR` if RUN_DIR holds a run (a checkpoint
# or run.h5), else `fedast-mpi FRESH_ARGS...`; then requeue or exit with fedast-mpi's code.
fedast_start() {
    local status
    trap _fedast_on_usr1 USR1
    trap _fedast_on_term TERM
    fedast_log "job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ (array ${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID)}" \
               "${SLURM_JOB_NAME:-?} on ${SLURM_JOB_NODELIST:-$(hostname)}, ${SLURM_NTASKS:-?} tasks," \
               "SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-0}, start $(date '+%F %T')"
    fedast_log "run dir: $RUN_DIR"
    fedast_log "OMP_NUM_THREADS=$OMP_NUM_THREADS python=$(command -v python) fedast-mpi=$(command -v fedast-mpi)"
    command -v fedast-mpi >/dev/null || { fedast_err "fedast-mpi not on PATH (see slurm/env.sh)"; exit 2; }

    if [ -e "$RUN_DIR/run.h5" ] || _fedast_has_checkpoint; then
        status=$(_fedast_status)
        if [ "$status" = completed ]; then
            fedast_log "run already completed (status $status): nothing to do"
            exit 0
        fi
        fedast_log "found a run (status ${status:-unknown}): resuming; the config is the checkpoint's"
        if [ -n "$FEDAST_SIG" ]; then _fedast_early_signal; fi
        fedast_launch resume "$RUN_DIR"
    else
        mkdir -p "$(dirname "$RUN_DIR")"
        if [ -n "$FEDAST_SIG" ]; then _fedast_early_signal; fi
        fedast_launch "$@"
    fi
    fedast_log "fedast-mpi exited $FEDAST_RC at $(date +%T)"
    if [ "$FEDAST_RC" != 0 ] && [ "$FEDAST_RC" != 75 ] && [ -n "$FEDAST_SIG" ] \
       && [ "$(_fedast_status)" = interrupted ]; then
        # A rank frozen at the signal: rank 0 stopped from its newest checkpoint and exited
        # 75, but mpiexec may report the SIGKILL it sent the frozen rank (9) instead.
        fedast_log "the run file says interrupted: treated as exit 75"
        FEDAST_RC=75
    fi
    _fedast_finish "$FEDAST_RC"
}

_fedast_early_signal() {  # a signal came before anything started: nothing to save
    _fedast_finish 75
}

_fedast_finish() {  # _fedast_finish RC: requeue after an interrupted run, else exit RC
    local rc=$1 restarts=${SLURM_RESTART_COUNT:-0}
    if [ "$rc" = 75 ]; then
        if [ "$FEDAST_SIG" = USR1 ] || { [ "$FEDAST_SIG" = TERM ] && [ "${FEDAST_REQUEUE_ON_TERM:-0}" = 1 ]; }; then
            if [ "$restarts" -ge "${FEDAST_MAX_RESTARTS:-100}" ]; then
                fedast_err "interrupted, but already restarted $restarts times (FEDAST_MAX_RESTARTS): not requeueing"
                exit 75
            fi
            fedast_log "interrupted by SIG$FEDAST_SIG (checkpoint in $RUN_DIR/checkpoints): scontrol requeue $SLURM_JOB_ID"
            if scontrol requeue "$SLURM_JOB_ID"; then
                exit 0
            fi
            fedast_err "scontrol requeue $SLURM_JOB_ID failed; resubmit by hand with FEDAST_RUN_DIR=$RUN_DIR"
            exit 75
        fi
        fedast_log "interrupted (SIG${FEDAST_SIG:-?}); not requeued. Resume with: FEDAST_RUN_DIR=$RUN_DIR sbatch <template>"
    fi
    exit "$rc"
}
