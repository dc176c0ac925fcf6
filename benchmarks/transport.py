"""The transport benchmark: how fast rank 0 absorbs updates, versus raw MPI bandwidth.

    mpiexec -n 2 python -m benchmarks.transport [--params N] [--messages M] [--rounds R]
        [--posted P] [--window W] [--buffer-size B] [--json OUT]

Rank 1 sends M update-sized messages (32-byte header + 4 N bytes), rank 0 receives them; in
one mpiexec run, R rounds of three phases, interleaved (raw, ingest, work, raw, ...), after
one untimed warm-up round (first touch of every buffer):

  raw     MPI point-to-point: rank 1 `comm.Send`s from one preallocated buffer, rank 0
          `comm.Recv`s into one preallocated buffer (blocking, busy-polling calls).
  ingest  the product's transport: rank 1 `WorkerTransport.send_update` (at most W messages
          in flight, W recycled buffers from `protocol.update_message`), rank 0
          `ServerTransport(comm, [N], arrival_order=True, posted=P)`: updates come out of
          `poll()` as views of their landing slots and are handed back with `free()`.
  work    ingest plus the server's own work per update: the finiteness check of the norm
          the worker computed (as `server.accept`) and, every B updates,
          `aggregation.server_step(model, deltas, 1.0)` before the B slots are freed
          (as `server.aggregate`).

Every phase's figure is bytes/s of messages fully processed on rank 0, timed from a barrier
to the last one; the JSON (rank 0) holds every round and the medians, and the ratios
ingest / raw and work / raw (SPEC §11 target: >= 0.5 for a 10M-parameter model). At the end
the product's own shutdown runs (STOP, FINAL counts, cancelled receives): nothing leaks.
Only buffer (uppercase) mpi4py calls.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI

from benchmarks import emit

TAG_RAW = 77  # not a fedast-mpi tag (those are 1-4 and 100 + task)
PHASES = ("raw", "ingest", "work")


def wait_polite(reqs) -> None:
    """Complete requests while giving MPI progress, without spinning a core."""
    from fedast_mpi.transport import Backoff
    backoff = Backoff()
    while not MPI.Request.Testall(reqs):
        backoff.sleep()


# -- rank 0 ---------------------------------------------------------------------------------
class Receiver:
    def __init__(self, comm, args):
        from fedast_mpi.transport import ServerTransport
        self.comm, self.args = comm, args
        self.nbytes = 32 + 4 * args.params
        self.raw_buf = np.empty(self.nbytes, np.uint8)
        self.raw_buf.fill(0)
        self.st = ServerTransport(comm, n_params=[args.params], arrival_order=True,
                                  posted=args.posted)
        self.model = np.zeros(args.params, np.float32)
        self.expected = 0  # next request id rank 1 sends in ingest/work phases
        self.aggregations = 0

    def raw(self, m: int) -> None:
        for _ in range(m):
            self.comm.Recv([self.raw_buf, MPI.BYTE], 1, TAG_RAW)

    def ingest(self, m: int, work: bool) -> None:
        from fedast_mpi.aggregation import server_step
        st, b = self.st, self.args.buffer_size
        done, buffer, ids = 0, [], []
        while done < m:
            for upd in st.poll(0.05):
                if upd.worker != 1 or upd.task != 0:
                    raise RuntimeError(f"update {upd.request} of task {upd.task} from rank "
                                       f"{upd.worker}, expected task 0 from rank 1")
                ids.append(upd.request)
                done += 1
                if not work:
                    st.free(upd)
                    continue
                # as server.accept: the worker's norm from the header (else computed here)
                norm = float(np.linalg.norm(upd.delta)) if upd.norm is None else upd.norm
                if not np.isfinite(norm):
                    raise RuntimeError("non-finite update")
                buffer.append(upd)
                if len(buffer) >= b:
                    self.model = server_step(self.model, [u.delta for u in buffer], 1.0)
                    self.aggregations += 1
                    for u in buffer:
                        st.free(u)
                    buffer = []
        if buffer:  # m not a multiple of b: aggregate the rest (same work per update)
            self.model = server_step(self.model, [u.delta for u in buffer], 1.0)
            self.aggregations += 1
            for u in buffer:
                st.free(u)
        # Testsome reports landed slots in slot order: arrival order within a poll may differ
        if sorted(ids) != list(range(self.expected, self.expected + m)):
            raise RuntimeError(f"received requests {sorted(ids)}, expected {self.expected}.."
                               f"{self.expected + m - 1} once each")
        self.expected += m

    def run(self, phase: str, m: int) -> float:
        self.comm.Barrier()
        t0 = time.perf_counter()
        if phase == "raw":
            self.raw(m)
        else:
            self.ingest(m, work=(phase == "work"))
        seconds = time.perf_counter() - t0
        self.comm.Barrier()  # rank 1 has completed every send of this phase
        return seconds

    def close(self) -> None:
        self.st.shutdown()


# -- rank 1 ---------------------------------------------------------------------------------
class Sender:
    def __init__(self, comm, args):
        from fedast_mpi import protocol as P
        from fedast_mpi.transport import WorkerTransport
        self.P, self.comm, self.args = P, comm, args
        rng = np.random.default_rng(0)
        payload = (rng.standard_normal(args.params, dtype=np.float32) * 1e-3)
        self.raw_buf = P.update_message(args.params)
        P.update_payload(self.raw_buf)[:] = payload
        self.bufs = []
        for _ in range(args.window):
            buf = P.update_message(args.params)
            P.update_payload(buf)[:] = payload
            P.update_header(buf)["norm"] = np.linalg.norm(payload)  # as the worker loop does
            self.bufs.append(buf)
        self.wt = WorkerTransport(comm)
        self.next_id = 0

    def raw(self, m: int) -> None:
        for _ in range(m):
            self.comm.Send([self.raw_buf, MPI.BYTE], 0, TAG_RAW)

    def reusable(self, buf) -> None:
        """Wait (giving MPI progress) until every earlier send of buf has completed."""
        reqs = [r for r, b in self.wt.sends if b is buf]  # completed entries may linger
        if reqs:
            wait_polite(reqs)

    def ingest(self, m: int) -> None:
        P = self.P
        for i in range(m):
            buf = self.bufs[i % len(self.bufs)]
            self.reusable(buf)
            hdr = P.update_header(buf)
            hdr["request"], hdr["task"], hdr["worker"] = self.next_id, 0, 1
            hdr["train_loss"], hdr["n_samples"], hdr["compute"] = 1.0, 1, 0.0
            self.wt.send_update(buf, 0)
            self.next_id += 1
        wait_polite([r for r, _ in self.wt.sends])

    def run(self, phase: str, m: int) -> None:
        self.comm.Barrier()
        if phase == "raw":
            self.raw(m)
        else:
            self.ingest(m)
        self.comm.Barrier()

    def close(self) -> None:
        """Wait for the server's STOP, then the product's FINAL handshake."""
        from fedast_mpi.transport import Backoff
        backoff = Backoff()
        while True:
            msg = self.wt.poll_ctrl()
            if msg is None:
                backoff.sleep()
                continue
            if int(msg["kind"]) == self.P.STOP:
                break
        self.wt.finish(self.comm.rank)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=10_000_000, help="model size (float32)")
    ap.add_argument("--messages", type=int, default=40, help="messages per phase and round")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds of the three phases")
    ap.add_argument("--posted", type=int, default=4, help="ServerTransport landing slots")
    ap.add_argument("--window", type=int, default=4, help="rank 1's update sends in flight")
    ap.add_argument("--buffer-size", type=int, default=5, help="updates per server_step")
    ap.add_argument("--warmup", type=int, default=None,
                    help="messages per phase of the untimed first round (default: posted + "
                         "buffer-size)")
    ap.add_argument("--json", help="write rank 0's result here (else stdout)")
    args = ap.parse_args(argv)

    comm = MPI.COMM_WORLD
    if comm.size != 2:
        if comm.rank == 0:
            print("benchmarks.transport needs exactly 2 ranks (mpiexec -n 2)", file=sys.stderr)
        return 2
    if min(args.params, args.messages, args.rounds, args.posted, args.window,
           args.buffer_size) < 1:
        ap.error("sizes and counts must be >= 1")
    warm = args.warmup if args.warmup is not None else args.posted + args.buffer_size
    seconds: dict[str, list[float]] = {p: [] for p in PHASES}
    try:
        side = Receiver(comm, args) if comm.rank == 0 else Sender(comm, args)
        for p in PHASES:
            side.run(p, warm)
        for _ in range(args.rounds):
            for p in PHASES:
                s = side.run(p, args.messages)
                if comm.rank == 0:
                    assert s is not None  # rank 0 runs the Receiver, which times the phase
                    seconds[p].append(s)
        side.close()
    except BaseException:  # the other rank would wait forever
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(1)
    if comm.rank != 0:
        return 0
    if not isinstance(side, Receiver):  # rank 0 runs the Receiver (above)
        raise RuntimeError("benchmarks.transport: rank 0 is not the receiver")

    nbytes = side.nbytes * args.messages
    bw = {p: [nbytes / s for s in seconds[p]] for p in PHASES}
    med = {p: statistics.median(bw[p]) for p in PHASES}
    out = {
        "params": args.params, "message_bytes": side.nbytes, "messages": args.messages,
        "rounds": args.rounds, "posted": args.posted, "window": args.window,
        "buffer_size": args.buffer_size, "warmup_messages": warm,
        "seconds": seconds,
        "bytes_per_second": bw,
        "median_bytes_per_second": med,
        "ingest_ratio": med["ingest"] / med["raw"],
        "work_ratio": med["work"] / med["raw"],
        "ingest_ratio_rounds": [i / r for i, r in zip(bw["ingest"], bw["raw"])],
        "work_ratio_rounds": [w / r for w, r in zip(bw["work"], bw["raw"])],
        "aggregations": side.aggregations,  # warm-up included
        "mpi_library": MPI.Get_library_version().strip().splitlines()[0],
    }
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
