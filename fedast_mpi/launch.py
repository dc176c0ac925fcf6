"""Roles by rank, device binding, and failure semantics: any rank's error aborts the job once."""

from __future__ import annotations

import os
import socket
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from fedast_mpi.errors import ConfigError, FedastError, WorldSizeError


def error_line(message: str) -> str:
    return f"fedast-mpi: error: {message}"


def configure_threads() -> None:
    """One intra-op thread per rank by default: ranks share cores, results stay bitwise equal."""
    import torch
    torch.set_num_threads(int(os.environ.get("FEDAST_TORCH_THREADS", "1")))


def decide_devices(requested: str, comm, *, server_gpu: bool, deterministic: bool = True):
    """Every rank's device, decided collectively (`fedast_mpi.devices`); returns a Decision.

    Collective on every rank, whatever it will use: a shared-memory split gives each rank
    its node's ranks, each rank chooses (binding its GPU, before any other CUDA call) or
    records why it cannot, and the choices are gathered. A disagreement (`auto` finding
    CUDA on some ranks only, `cuda` where a rank sees none, a CUDA error) raises the same
    error on every rank, naming the ranks and hosts. Early ranks wait with sleeps.
    """
    from mpi4py import MPI

    from fedast_mpi import devices
    from fedast_mpi.transport import quiet_barrier
    quiet_barrier(comm)
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        node_ranks = local.allgather(comm.rank)
    finally:
        local.Free()
    mine = devices.choose(requested, comm.rank, node_ranks, socket.gethostname(),
                          server_gpu=server_gpu, deterministic=deterministic)
    quiet_barrier(comm)
    reports = tuple(comm.allgather(mine))
    failure = devices.check(reports)
    if failure is not None:
        raise failure
    return devices.Decision(reports, comm.rank)


def select_device(requested: str, comm, server_gpu: bool = False):
    """This rank's torch.device from `decide_devices` (collective: call it on every rank).

    Rank 0 gets the CPU unless `server_gpu` or the world is one rank; raises the job's
    error (the same on every rank) when the ranks disagree.
    """
    import torch
    decision = decide_devices(requested, comm, server_gpu=server_gpu or comm.size == 1)
    return torch.device(decision.device)


def collective_phase(comm, fn):
    """Run fn on every rank; if any rank fails, every rank learns it and rank 0 prints it once.

    Returns (result, 0) on success, (None, exit_code) after a failure anywhere.
    """
    result, code, msg = None, 0, ""
    try:
        result = fn()
    except FedastError as exc:
        code, msg = exc.exit_code, str(exc)
    except Exception as exc:  # noqa: BLE001 - reported, then the job exits
        code, msg = 1, f"rank {comm.rank} on {socket.gethostname()}: {type(exc).__name__}: {exc}"
        if os.environ.get("FEDAST_DEBUG"):
            traceback.print_exc()
    from fedast_mpi.transport import quiet_barrier
    quiet_barrier(comm)  # ranks done early must not spin while others still load
    failures = [(c, m) for c, m in comm.allgather((code, msg)) if c]
    if not failures:
        return result, 0
    if comm.rank == 0:
        print(error_line(failures[0][1]), file=sys.stderr, flush=True)
    return None, failures[0][0]


def describe(comm, exc: BaseException) -> str:
    """One line naming the failing rank and host (a worker's report already does)."""
    from fedast_mpi.transport import WorkerFailed
    if isinstance(exc, WorkerFailed):
        return str(exc)
    text = str(exc) if isinstance(exc, FedastError) else f"{type(exc).__name__}: {exc}"
    return f"rank {comm.rank} on {socket.gethostname()}: {text}"


_LOCKS: list = []
"""Run-directory locks (`fedast_mpi.rundir.RunDirLock`) this process holds: released when its
run ends, also by `end_job`, so that a requeued job (on any node) finds its directory free."""


def release_locks() -> None:
    while _LOCKS:
        _LOCKS.pop().release()


def end_job(comm, code: int) -> NoReturn:
    """End every rank of the job now, with exit code `code`, and print nothing more.

    Under MPICH's mpiexec (Hydra: it sets MPI_LOCALRANKID) with every rank on this node, a
    rank that leaves makes Hydra end the others (SIGKILL: frozen ones too), with none of
    MPI_Abort's banner lines. Across nodes that ends only this node's ranks (ranks on the other
    node were still running minutes later), and other launchers (srun, Open MPI's mpirun)
    differ too: they get MPI_Abort, the one call they all honour, and its banner line.
    """
    release_locks()
    sys.stdout.flush()
    sys.stderr.flush()
    if "MPI_LOCALRANKID" in os.environ and os.environ.get("MPI_LOCALNRANKS") == str(comm.size):
        os._exit(code)  # one Hydra proxy holds every rank: it ends the others
    comm.Abort(code)  # ranks on other nodes: only MPI_Abort reaches them (measured, 2 nodes)
    os._exit(code)  # not reached: MPI_Abort does not return


def close_quietly(log, status: str, reason: str) -> str:
    """Close the run file with a status; '' or why it failed (a full disk), never raising."""
    if log is None:
        return ""
    try:
        log.close(status, reason)
        return ""
    except Exception as exc:  # noqa: BLE001 - ending the job matters more than the status
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f" (the run file could not be closed: {why})"


def abort(comm, exc: BaseException, log=None) -> NoReturn:
    """End the whole job after an error on this rank, printing it once.

    A worker reports to rank 0, which marks the run file `failed`, prints the
    line and ends the job; if rank 0 does not do so within a grace period the worker
    prints and ends it by itself.
    """
    code = exc.exit_code if isinstance(exc, FedastError) else 1
    line = describe(comm, exc)
    if os.environ.get("FEDAST_DEBUG"):
        traceback.print_exc()
    if comm.rank != 0:
        from fedast_mpi.transport import report_failure
        report_failure(comm, line)
    else:
        line += close_quietly(log, "failed", line)
    print(error_line(line), file=sys.stderr, flush=True)
    end_job(comm, code)


def run_job(cfg, out_dir: Path, comm, resume: dict | None = None) -> int:
    """`run` (and `resume`) on every rank: set up collectively, then server or worker.

    `resume` is the verified checkpoint on rank 0 and `{}` on the other ranks.
    """
    import time

    from fedast_mpi.checkpoint import Signals

    from fedast_mpi import __version__
    from fedast_mpi.config import to_yaml
    from fedast_mpi.runlog import RunLog
    from fedast_mpi.schema import RUN_FILE

    started = time.time()
    real = cfg.run.clock == "real"
    run_file = out_dir / RUN_FILE
    signals = Signals().install()  # from now on a signal is recorded, acted on at a safe point

    def build_runner():
        evaluation_on_workers(cfg, comm.size)  # a world it cannot run on: one line, no hang
        from fedast_mpi import emulated
        timings = emulated.from_environment()
        if timings is not None:  # benchmarks: emulated workers around a real (CPU) server
            if len(timings) != len(cfg.tasks):
                raise ConfigError(f"{emulated.ENV}: calibration of {len(timings)} tasks for a "
                                  f"config of {len(cfg.tasks)}")
            if comm.rank:
                os.nice(5)  # a sleeping emulated worker yields the core to the server
                return emulated.EmulatedRunner(timings, cfg.run.seed)
        from fedast_mpi.runner import TaskRunner
        configure_threads()
        return TaskRunner.for_rank(cfg, decision.device, comm.rank, comm.size,
                                   evaluation_on_workers(cfg, comm.size))

    def open_run_file():  # only once every rank has its data: a failed set-up leaves no file
        if comm.rank != 0:
            return None
        import_server(cfg)  # a plugin that does not load leaves no run file
        from fedast_mpi.rundir import RunDirLock
        lock = RunDirLock(out_dir).acquire()  # before anything in RUN_DIR changes
        _LOCKS.append(lock)
        try:
            if resume is not None:
                return RunLog.reopen(run_file, resume["runlog"], comm.size,
                                     run_id=resume.get("run_id"))
            text = to_yaml(cfg)
            log = RunLog(run_file, config_yaml=text, algorithm=cfg.algorithm.name,
                         clock=cfg.run.clock, seed=cfg.run.seed, world_size=comm.size,
                         package_version=__version__)
            (out_dir / "config.yaml").write_text(text)  # after RunLog refused any existing run
            return log
        except BaseException:
            release_locks()
            raise

    from fedast_mpi import emulated
    requested = "cpu" if os.environ.get(emulated.ENV) else cfg.run.device
    try:  # first: it binds the GPU and sets CUDA up before anything else touches CUDA
        decision = decide_devices(requested, comm, deterministic=cfg.run.deterministic,
                                  server_gpu=comm.size == 1 or cfg.run.evaluation == "server")
    except FedastError as exc:  # raised alike on every rank
        if comm.rank == 0:
            print(error_line(str(exc)), file=sys.stderr, flush=True)
        return exc.exit_code
    runner, code = collective_phase(comm, build_runner)
    if code:
        return code
    log, code = collective_phase(comm, open_run_file)
    if code:
        return code
    wall0 = comm.bcast(time.time(), root=0)
    if log is not None:  # rank 0: device decision, data, run file (inspect shows it)
        log.set_attrs(startup_seconds=wall0 - started)
    worker = None
    try:
        if comm.rank == 0:
            from fedast_mpi.deadline import SIGNAL_DEADLINE, SignalDeadline
            deadline = SignalDeadline(SIGNAL_DEADLINE, lambda name, ago: deadline_missed(
                comm, log, out_dir, name, ago)).arm()
            try:
                return serve(cfg, runner, log, comm, wall0, out_dir, signals, resume, decision)
            finally:
                deadline.disarm()
                release_locks()
        from fedast_mpi.worker import Worker
        worker = Worker(comm, runner, real)
        return worker.run()
    except BaseException as exc:  # noqa: BLE001 - any failure must end every rank
        if worker is not None and isinstance(exc, Exception):
            if os.environ.get("FEDAST_DEBUG"):
                traceback.print_exc()
            code = worker.after_failure(describe(comm, exc))  # rank 0 stops the job in order
            if code is not None:
                return code
        abort(comm, exc, log)


def import_server(cfg) -> None:
    """Rank 0's modules and the algorithm's policy, imported before the run's clock starts:
    `wall_seconds` measures the run, not Python compiling modules (a second at 64 workers
    where no bytecode is cached, PYTHONDONTWRITEBYTECODE=1)."""
    import fedast_mpi.checkpoint  # noqa: F401
    import fedast_mpi.server  # noqa: F401
    import fedast_mpi.transport  # noqa: F401
    import fedast_mpi.watchdog  # noqa: F401
    from fedast_mpi import registry
    registry.get(cfg.algorithm.name).policy_class()


def evaluation_on_workers(cfg, world_size: int) -> bool:
    """Whether evaluations run on the workers (`run.evaluation`); -n 1 evaluates in-process."""
    mode = cfg.run.evaluation
    if mode == "workers" and world_size == 1:
        raise WorldSizeError("run.evaluation: 'workers' needs worker ranks (mpiexec -n 2 or "
                             "more); 'auto' evaluates in-process with -n 1")
    return mode == "workers" or (mode == "auto" and world_size > 1)


def task_models(cfg, runner, executor, world_size: int, train_device: str | None = None):
    """What the server needs of the runner's models and data (`fedast_mpi.server.TaskModels`).

    train_device: the device type the requests train on (`Decision.train_type`: the
    workers', not rank 0's); None: the runner's own.
    """
    from fedast_mpi.evaluation import WorkerEvaluation
    from fedast_mpi.grouping import group_sizes
    from fedast_mpi.server import TaskModels
    n_tasks = len(cfg.tasks)
    evaluate = runner.evaluate
    if evaluation_on_workers(cfg, world_size):
        evaluate = WorkerEvaluation(executor, [runner.n_test(i) for i in range(n_tasks)])
    return TaskModels(initial=[runner.initial_model(i) for i in range(n_tasks)],
                      evaluate=evaluate, weight_mask=runner.weight_mask,
                      n_samples=runner.n_samples(),
                      group_sizes=group_sizes(cfg.run.batch_requests,
                                              train_device or runner.device.type, runner.models))


def serve(cfg, runner, log, comm, wall0: float, out_dir: Path, signals, resume,
          decision=None) -> int:
    """Rank 0: build the executor, run the server, drain the workers, close the run file.

    `decision` (`fedast_mpi.devices.Decision`) gives the training device type and the run
    file's device attributes.

    Returns 0 when done, or EXIT_INTERRUPTED after a signal (checkpoint written first).
    """
    from fedast_mpi.checkpoint import EXIT_INTERRUPTED, Checkpointer
    from fedast_mpi.config import to_yaml
    from fedast_mpi.errors import Interrupted
    from fedast_mpi.executor import Executor, InProcessExecutor
    from fedast_mpi.progress import Progress
    from fedast_mpi.schema import RUN_FILE
    from fedast_mpi.server import Server
    from fedast_mpi.transport import Undrained
    from fedast_mpi.watchdog import Halt, Watchdog

    if os.environ.get("FEDAST_KEEP_HEAP") != "0":  # (=0: benchmarks measure without it)
        from fedast_mpi.heap import keep_heap
        keep_heap()  # no page faults for every update-sized array rank 0 allocates
    executor: Executor
    if comm.size == 1:
        executor = InProcessExecutor(runner)
    else:
        from fedast_mpi.transport import ServerTransport
        executor = ServerTransport(comm, runner.n_params, arrival_order=cfg.run.clock == "real")
        hosts = [r.host for r in decision.reports] if decision is not None else []
        executor.watchdog = Watchdog(cfg.run.stall_timeout, signals.first, hosts,
                                     beat=log.flush)
    progress = Progress(cfg.run.log_every)
    train_device = None
    if decision is not None:
        from fedast_mpi.devices import torch_version
        log.set_attrs(**decision.run_attrs(cfg.run.deterministic, torch_version()))
        train_device = decision.train_type
    models = task_models(cfg, runner, executor, comm.size, train_device)
    # benchmarks: FEDAST_SPECULATE=0 waits for each evaluation, =held holds requests back too
    speculate = {"0": "off", "held": "held"}.get(os.environ.get("FEDAST_SPECULATE", ""), "eager")
    server = Server(cfg, models, executor, log, progress, wall0, fresh=resume is None,
                    speculate=speculate)
    if resume is not None:
        server.load_state_dict(resume["state"])
        progress.resumed_at(server.tasks.n_processed)
    ckpt = cfg.run.checkpoint
    server.checkpointer = Checkpointer(out_dir, to_yaml(cfg), log, ckpt.every_seconds, ckpt.keep,
                                       signals)
    try:
        status, reason = server.run()
        code = 0
        server.checkpointer.save(server)  # the final state: a resume with a larger max_time goes on
    except Interrupted as stop:
        status, reason, code = "interrupted", str(stop), EXIT_INTERRUPTED
    except Halt as halt:
        halted(comm, log, halt, out_dir)
    except Exception as exc:  # noqa: BLE001 - a failure here or on a worker: stop in order
        from fedast_mpi.errors import Diverged
        if isinstance(exc, Diverged):  # a result: when it diverged, after how many updates
            try:
                log.set_attrs(final_time=server.clock.now,
                              updates_processed=server.tasks.n_processed)
            except Exception:  # noqa: BLE001 - the failure line matters more
                pass
        return failed(comm, log, executor, exc)
    try:
        executor.shutdown(code)
        undrained = None
    except Undrained as exc:  # a frozen worker: everything is written, MPI cannot end cleanly
        undrained = exc
    server.finish(final_models=code == 0)
    log.close(status, reason)
    progress.final(server, status, reason, str(out_dir / RUN_FILE))
    if undrained is not None:
        print(f"fedast-mpi: warning: {undrained}; ending the job", file=sys.stderr, flush=True)
        end_job(comm, code)
    return code


FAILURE_DRAIN = 30.0
"""Seconds rank 0 gives the workers to answer its STOP after a failure (they finish the
request in hand first); past it the job ends at once."""


def failed(comm, log, executor, exc: Exception) -> int:
    """A failure during the run (rank 0's own, or a worker's report): the run file marked
    `failed`, one line printed, then the workers stopped and drained as at a normal end, so
    that every rank leaves through MPI's finalisation with this exit code (no launcher banner,
    no rank killed). A worker that does not answer (frozen, gone) ends the job at once."""
    code = exc.exit_code if isinstance(exc, FedastError) else 1
    line = describe(comm, exc)
    if os.environ.get("FEDAST_DEBUG"):
        traceback.print_exc()
    from fedast_mpi.errors import Diverged
    status = "diverged" if isinstance(exc, Diverged) else "failed"  # compare goes on after it
    print(error_line(line + close_quietly(log, status, line)), file=sys.stderr, flush=True)
    try:
        executor.shutdown(code, timeout=FAILURE_DRAIN)
    except Exception:  # noqa: BLE001 - a worker that cannot be stopped in order
        if os.environ.get("FEDAST_DEBUG"):
            traceback.print_exc()
        end_job(comm, code)
    if getattr(exc, "broken", False):  # a write failed inside HDF5 (RunFileWriteError)
        finalize_and_exit(code)
    return code


def finalize_and_exit(code: int) -> NoReturn:
    """Leave through MPI's finalisation (every rank's exit code stays `code`) but skip the
    interpreter's teardown: after a failed HDF5 write (a full disk) HDF5's state is broken and
    h5py's clean-up of the objects still open crashed rank 0 (SIGSEGV, exit 11)."""
    from mpi4py import MPI
    release_locks()
    sys.stdout.flush()
    sys.stderr.flush()
    MPI.Finalize()
    os._exit(code)


def halted(comm, log, halt, out_dir: Path, close=None) -> NoReturn:
    """Rank 0 gave up a wait (`fedast_mpi.watchdog`): the run file closed with what happened
    and how to go on, one line printed, the whole job ended (frozen ranks too).

    The server is mid-batch, not in a state it can checkpoint: the newest checkpoint on
    disk is where a resume continues. After a signal the exit code is 75 when there is one.
    `close(log, status, line)` closes the run file (default `close_quietly`).
    """
    from fedast_mpi.checkpoint import EXIT_INTERRUPTED, checkpoint_paths
    newest = checkpoint_paths(out_dir)[:1]
    if newest:
        then = (f"; a resume continues from {newest[0].name}: "
                f"mpiexec -n {comm.size} fedast-mpi resume {out_dir}")
    else:
        then = "; no checkpoint was written yet: nothing to resume, run it again"
    line = f"{halt}{then}"
    code = EXIT_INTERRUPTED if halt.status == "interrupted" and newest else 1
    line += (close or close_quietly)(log, halt.status, line)
    print(f"fedast-mpi: {'stopped' if code == EXIT_INTERRUPTED else 'error'}: {line}",
          file=sys.stderr, flush=True)
    end_job(comm, code)


def deadline_missed(comm, log, out_dir: Path, name: str, ago: float) -> NoReturn:
    """Rank 0 is still there `ago` s after a signal (`fedast_mpi.deadline`): its main thread
    is stuck where no watchdog reaches. Called on the deadline's thread: the stacks written
    for the report, then the end of `halted`, the run file closed within a bound (the stuck
    thread may hold HDF5's lock)."""
    from fedast_mpi.deadline import bounded, write_stacks
    from fedast_mpi.watchdog import Halt
    stacks = write_stacks(out_dir)
    where = f"; its threads' stacks: {stacks}" if stacks is not None else ""
    halt = Halt(f"{name} received {ago:.0f} s ago and rank 0 has not stopped (stuck outside "
                f"the waits that watch for signals{where})", "interrupted", name)
    halted(comm, log, halt, out_dir, close=lambda lg, status, line: bounded(
        lambda: close_quietly(lg, status, line), 5.0,
        " (the run file could not be closed: rank 0 holds it)"))
