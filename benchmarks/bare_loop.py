"""Baseline of the overhead benchmark: a bare PyTorch loop over the requests of a finished run.

    python -m benchmarks.bare_loop CONFIG RUN_H5 [--set KEY=VALUE ...] [--json OUT]

Reads the accepted updates of RUN_H5 (`/events` rows with accepted == 1, in the order the
server processed them) and trains the same requests one after another in this one process:
same tasks, clients (shards), model architectures, local_steps, batch sizes and learning
rates, with torch.optim.SGD on an ordinary nn.Module and torch.set_num_threads(1). Every
task's model is updated FedBuff-style (mean of buffer_size deltas, times global_lr), so the
loop is a plain sequential federated training, without MPI, HDF5 logging or evaluation.

Only the training loop is timed (not the imports, the data loading or the model building,
just as the run's `wall_seconds` excludes the start-up). fedast_mpi is used only to parse
the config, load the same data and build the same architectures (`build_model` returns a
plain nn.Sequential); fedast_mpi.training is not used.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import emit


def load_requests(run_file: str) -> list[tuple[int, int, int]]:
    """(request id, task, client) of every accepted update, in processing order."""
    with h5py.File(run_file, "r") as f:
        ev = f["/events"][:]
    ev = ev[ev["accepted"] == 1]
    return [(int(r), int(t), int(c)) for r, t, c in zip(ev["request"], ev["task"], ev["client"])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="the run's config (YAML); '-' for the embedded default")
    ap.add_argument("run_file", help="the run's run.h5")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--json", help="write the result here (else stdout)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    from fedast_mpi import seeding
    from fedast_mpi.config import load_config
    from fedast_mpi.data import load_task_data
    from fedast_mpi.models import build_model

    cfg = load_config(None if args.config == "-" else args.config, args.overrides)
    requests = load_requests(args.run_file)

    # Untimed set-up: data, shards as index tensors, models, optimisers.
    tasks: list[dict[str, Any]] = []  # the loop reads them as plain dicts
    for index, tc in enumerate(cfg.tasks):
        data = load_task_data(tc, cfg.clients.count, cfg.run.seed)
        model = build_model(tc.model, tc.model_args, data.input_shape, data.n_classes,
                            seed=seeding.int_seed(cfg.run.seed, seeding.MODEL_INIT, index))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        tasks.append({
            "cfg": tc, "x": data.train_x, "y": data.train_y, "model": model, "params": params,
            "shards": [torch.as_tensor(np.asarray(s, dtype=np.int64)) for s in data.shards],
            "opt": torch.optim.SGD(params, lr=tc.local_lr, weight_decay=tc.weight_decay),
            "global": [p.detach().clone() for p in params],
            "acc": [torch.zeros_like(p) for p in params],
            "buffered": 0,
        })

    counts = [0] * len(tasks)
    start = time.perf_counter()
    for rid, ti, client in requests:
        t = tasks[ti]
        tc, model, params, opt = t["cfg"], t["model"], t["params"], t["opt"]
        x, y, shard = t["x"], t["y"], t["shards"][client]
        with torch.no_grad():
            for p, g in zip(params, t["global"]):
                p.copy_(g)
        gen = torch.Generator().manual_seed(rid)
        n, bs = len(shard), tc.batch_size
        perm, pos = None, 0
        for _ in range(tc.local_steps):
            if n <= bs:
                batch = shard
            else:
                if perm is None or n - pos < bs:
                    perm, pos = shard[torch.randperm(n, generator=gen)], 0
                batch = perm[pos:pos + bs]
                pos += bs
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            opt.step()
        with torch.no_grad():
            for a, p, g in zip(t["acc"], params, t["global"]):
                a.add_(p - g)
            t["buffered"] += 1
            if t["buffered"] >= tc.buffer_size:
                scale = tc.global_lr / t["buffered"]
                for a, g in zip(t["acc"], t["global"]):
                    g.add_(a, alpha=scale)
                    a.zero_()
                t["buffered"] = 0
        counts[ti] += 1
    seconds = time.perf_counter() - start

    out = {"seconds": seconds, "requests": len(requests), "per_task": counts,
           "torch_threads": torch.get_num_threads()}
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
