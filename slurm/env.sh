# slurm/env.sh - the site hook sourced by every fedast-mpi SLURM template (inside the job).
#
# This is the ONE file to edit for your site: software environment, threads, HDF5, and how MPI
# ranks are launched. The templates source it after `cd`-ing nowhere (the job runs in the submit
# directory) and before starting anything. It may read SLURM_* variables and SUBMIT_DIR (the
# directory `sbatch` was called from, normally the fedast-mpi checkout).
#
# Everything here can also be set from the submitting shell, because sbatch exports the
# submitter's environment by default (--export=ALL):
#   FEDAST_VENV=/path/to/venv sbatch slurm/fedast-1node.sbatch my.yaml

SUBMIT_DIR=${SUBMIT_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}

# ------------------------------------------------------------------ software environment
# Option A (default): a Python virtual environment with fedast-mpi installed
# (`make setup` in the checkout creates $SUBMIT_DIR/.venv, with the MPICH wheel's mpiexec).
FEDAST_VENV=${FEDAST_VENV:-$SUBMIT_DIR/.venv}
#
# Option B: site modules. Load them here, BEFORE the venv activation (a venv built on top of
# the module's Python/MPI), or instead of it (set FEDAST_VENV=none). Example:
#   module purge
#   module load python/3.11 cuda/12.4 openmpi/4.1     # or your site's mpich / intel-mpi
#   module load hdf5                                  # only if h5py was built against it
#
if [ "$FEDAST_VENV" != none ]; then
    if [ -r "$FEDAST_VENV/bin/activate" ]; then
        # shellcheck disable=SC1091
        . "$FEDAST_VENV/bin/activate"
    else
        echo "fedast-slurm: error: FEDAST_VENV=$FEDAST_VENV has no bin/activate" \
             "(run 'make setup' in $SUBMIT_DIR, set FEDAST_VENV, or FEDAST_VENV=none with modules)" >&2
        return 2 2>/dev/null || exit 2
    fi
fi

# ------------------------------------------------------------------ threads, I/O
# One rank = one process. Without a limit, torch starts one thread per core in EVERY rank and
# oversubscribes the node (measured: 7x slower matmuls with 5 ranks on 2 cores). Default: the
# CPUs SLURM gave each task (--cpus-per-task), else 1.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export MKL_NUM_THREADS=${MKL_NUM_THREADS:-$OMP_NUM_THREADS}
# Progress lines reach the job's output file as they are printed.
export PYTHONUNBUFFERED=1
# Parallel file systems (Lustre, GPFS, NFS) often reject or stall on HDF5's file locks; readers
# such as `fedast-mpi inspect` or h5dump on a live run.h5 need this too.
export HDF5_USE_FILE_LOCKING=FALSE

# ------------------------------------------------------------------ MPI launcher
FEDAST_NTASKS=${FEDAST_NTASKS:-${SLURM_NTASKS:-${SLURM_NPROCS:-1}}}
# FEDAST_LAUNCH is the command put in front of `fedast-mpi ...`; it must start FEDAST_NTASKS
# ranks (default SLURM_NTASKS; the multi-node template sets it to one worker per GPU + the
# server) in block order (rank 0 and the ranks after it on the first node) and forward SIGUSR1
# to them (both choices below do).
#
# Default: the MPICH wheel's `mpiexec` (Hydra) from the venv. Inside an allocation Hydra reads
# the SLURM node list and starts its proxies with srun, so it spans several nodes as well; it
# fills each node's task slots in order.
#   FEDAST_LAUNCH="mpiexec -n $FEDAST_NTASKS"
#
# Alternative for a site MPI built with SLURM support (or the MPICH wheel, which speaks PMI-2):
#   FEDAST_LAUNCH="srun --mpi=pmi2 -n $FEDAST_NTASKS"   # MPICH, Intel MPI, MVAPICH
#   FEDAST_LAUNCH="srun --mpi=pmix -n $FEDAST_NTASKS"   # Open MPI 4/5 (needs PMIx in SLURM)
# (`srun --mpi=list` shows what your SLURM offers.) With Open MPI also set
#   export OMPI_MCA_mpi_yield_when_idle=1
# so that waiting ranks do not spin.
FEDAST_LAUNCH=${FEDAST_LAUNCH:-"mpiexec -n $FEDAST_NTASKS"}

# ------------------------------------------------------------------ MPI transport
# The MPICH wheel from PyPI (5.0.2: device ch4:ucx, with ofi built in) loses small messages that
# match pre-posted MPI_ANY_SOURCE receives when the ranks span nodes and UCX carries them:
# slurm/check-anysource.py on 2 nodes x 2 ranks saw 2,000 of 9,000 messages never complete, every
# time; with per-source receives, UCX_RNDV_THRESH=0 or the ofi netmod all 9,000 arrive. Rank 0
# of fedast-mpi posts such receives (updates, evaluation results), so a job on several nodes with
# that wheel uses the ofi netmod unless you chose a netmod yourself. Check a site MPI with
#   $FEDAST_LAUNCH python slurm/check-anysource.py      (on 2+ nodes: "all N messages", exit 0)
if [ "${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}" -gt 1 ] && [ -z "${MPIR_CVAR_CH4_NETMOD:-}" ] \
   && python -c 'import mpi4py, sys; mpi4py.rc.initialize = False; from mpi4py import MPI
v = MPI.Get_library_version(); sys.exit(0 if "pypi.org/p/mpich" in v and "ch4:ucx" in v else 1)' \
      2>/dev/null; then
    export MPIR_CVAR_CH4_NETMOD=ofi
    echo "fedast-slurm: MPIR_CVAR_CH4_NETMOD=ofi: the PyPI MPICH wheel's ucx netmod loses" \
         "ANY_SOURCE messages across nodes (slurm/env.sh)"
fi

# ------------------------------------------------------------------ GPUs
# The templates request GPUs per node (--gres=gpu:N) and fedast-mpi places the ranks itself
# (fedast_mpi/devices.py): rank 0, the server, stays on the CPU (unless run.evaluation: server);
# the workers of a node take its visible GPUs round-robin in node-local order (GPUs 0..3 for the
# 4 workers next to rank 0 on the first node); several MIG slices in CUDA_VISIBLE_DEVICES go one
# per worker. So leave CUDA_VISIBLE_DEVICES as SLURM sets it (the node's GPUs, visible to every
# rank) and do not add --gpus-per-task, --ntasks-per-gpu or --gpu-bind: under mpiexec (Hydra)
# SLURM's tasks are the per-node proxies, so those would give every rank of a node the same
# GPUs. (Under srun they bind per rank; a rank that sees a single device uses it, but rank 0
# would then hold a GPU it never uses.)
