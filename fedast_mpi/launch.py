"""Roles by rank, device binding, and failure semantics: any rank's error aborts the job once."""

from __future__ import annotations

import os
import socket
import sys
import traceback
from pathlib import Path

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


def abort(comm, exc: BaseException, log=None) -> None:
    """End the whole job after an error on this rank, printing it once.

    A worker reports to rank 0, which marks the run file `failed`, prints the
    line and aborts; if rank 0 does not do so within a grace period the worker
    prints and aborts by itself.
    """
    code = exc.exit_code if isinstance(exc, FedastError) else 1
    line = describe(comm, exc)
    if os.environ.get("FEDAST_DEBUG"):
        traceback.print_exc()
    if comm.rank != 0:
        from fedast_mpi.transport import report_failure
        report_failure(comm, line)
    elif log is not None:
        try:
            log.close("failed", line)
        except Exception:  # noqa: BLE001 - the abort matters more than the status
            pass
    print(error_line(line), file=sys.stderr, flush=True)
    comm.Abort(code)


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
        if resume is not None:
            return RunLog.reopen(run_file, resume["runlog"], comm.size)
        text = to_yaml(cfg)
        log = RunLog(run_file, config_yaml=text, algorithm=cfg.algorithm.name,
                     clock=cfg.run.clock, seed=cfg.run.seed, world_size=comm.size,
                     package_version=__version__)
        (out_dir / "config.yaml").write_text(text)  # after RunLog refused any existing run
        return log

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
    try:
        if comm.rank == 0:
            return serve(cfg, runner, log, comm, wall0, out_dir, signals, resume, decision)
        from fedast_mpi.worker import Worker
        return Worker(comm, runner, real).run()
    except BaseException as exc:  # noqa: BLE001 - any failure must end every rank
        abort(comm, exc, log)
        return 1


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

    executor: Executor
    if comm.size == 1:
        executor = InProcessExecutor(runner)
    else:
        from fedast_mpi.transport import ServerTransport
        executor = ServerTransport(comm, runner.n_params, arrival_order=cfg.run.clock == "real")
    progress = Progress(cfg.run.log_every)
    train_device = None
    if decision is not None:
        from fedast_mpi.devices import torch_version
        log.set_attrs(**decision.run_attrs(cfg.run.deterministic, torch_version()))
        train_device = decision.train_type
    models = task_models(cfg, runner, executor, comm.size, train_device)
    speculate = os.environ.get("FEDAST_SPECULATE", "1") != "0"  # benchmarks: 0 waits instead
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
    executor.shutdown(code)
    server.finish(final_models=code == 0)
    log.close(status, reason)
    progress.final(server, status, reason, str(out_dir / RUN_FILE))
    return code
