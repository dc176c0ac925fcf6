"""The batched benchmark: requests/s of batched (vmap) versus one-at-a-time local training.

    python -m benchmarks.batched [--models logreg,mlp,lenet5,cifar_cnn[:STEPS]]
        [--groups 1,4,16] [--requests N] [--steps S] [--rounds R] [--device cpu|cuda|auto]
        [--threads T] [--data-dir DIR] [--json OUT]

For each of the paper's small models (logreg on the embedded digits, mlp and lenet5 on MNIST,
cifar_cnn on CIFAR-10; the MNIST / CIFAR-10 files are generated in the standard formats into a
temp dir unless --data-dir holds them), N requests of one task (same base model, distinct
client shards and seeds; S local steps of batch 32, lr 0.1, weight decay 3e-4) are trained:

  single    one at a time with `fedast_mpi.training.local_train` (what a worker does for
            group size 1);
  batched   in groups of G with `fedast_mpi.batched.local_train_batch` (torch.func vmap over
            the stacked parameters of the G members).

Figure: requests/s; ratio = batched / single (SPEC §11 target: >= 10x on a GPU for these
models). Rounds are interleaved (single, G1, G4, ..., single, ...) after one untimed one-step
warm-up of each; on CUDA, data and models live on the device and torch.cuda.synchronize() brackets
every timing. A model name may carry its own step count (`cifar_cnn:5`: a CPU run of the
CIFAR CNN at 27 steps takes minutes). As a sanity check the first round's batched deltas are
compared with the one-at-a-time ones (max |difference|, next to max |delta|; a member may
drift by more than rounding over many steps when a ReLU or max-pool tie flips).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

from benchmarks import emit

MODELS = {  # model -> (dataset, model_args, samples per client)
    "logreg": ("digits", {}, 60),
    "mlp": ("mnist", {"hidden": [200, 200]}, 300),
    "lenet5": ("mnist", {}, 300),
    "cifar_cnn": ("cifar10", {}, 300),
}
BATCH, LR, WEIGHT_DECAY = 32, 0.1, 3e-4
GEN_TRAIN, GEN_TEST = 2000, 100  # generated files: only the shapes matter here


def parse_models(text: str, steps: int) -> list[tuple[str, int]]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, n = item.partition(":")
        if name not in MODELS:
            raise SystemExit(f"batched: unknown model {name!r} (known: {', '.join(MODELS)})")
        out.append((name, int(n) if n else steps))
    return out


def task_data(dataset: str, spc: int, clients: int, data_dir: Path | None):
    from fedast_mpi.data import load_task_data
    task = types.SimpleNamespace(
        name="bench", dataset=dataset, dataset_args={},
        data_dir=None if data_dir is None else str(data_dir),
        partition=types.SimpleNamespace(kind="iid", alpha=1.0, samples_per_client=spc))
    return load_task_data(task, clients, 0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Case:
    def __init__(self, model: str, steps: int, n_requests: int, device: torch.device,
                 data_dir: Path | None):
        from fedast_mpi.models import build_model
        from fedast_mpi.params import FlatModel
        dataset, margs, spc = MODELS[model]
        data = task_data(dataset, spc, n_requests, data_dir if dataset != "digits" else None)
        module = build_model(model, margs, data.input_shape, data.n_classes, seed=0).to(device)
        self.fm = FlatModel(module)
        self.model, self.steps, self.device = model, steps, device
        self.x, self.y = data.train_x.to(device), data.train_y.to(device)
        self.shards = [np.asarray(s, np.int64) for s in data.shards[:n_requests]]
        self.seeds = [1000 + i for i in range(n_requests)]
        self.base = self.fm.numpy()
        self.n = n_requests

    def single(self, n: int | None = None) -> list:
        from fedast_mpi.training import local_train
        return [local_train(self.fm, self.base, self.x, self.y, self.shards[i], steps=self.steps,
                            batch_size=BATCH, lr=LR, weight_decay=WEIGHT_DECAY,
                            seed=self.seeds[i])
                for i in range(self.n if n is None else n)]

    def batched(self, g: int, n: int | None = None) -> list:
        from fedast_mpi.batched import local_train_batch
        out = []
        for lo in range(0, self.n if n is None else n, g):
            hi = lo + g
            out += local_train_batch(self.fm, [self.base] * g, self.x, self.y,
                                     self.shards[lo:hi], self.seeds[lo:hi], steps=self.steps,
                                     batch_size=BATCH, lr=LR, weight_decay=WEIGHT_DECAY)
        return out

    def warm_up(self, groups: list[int]) -> None:
        """One untimed one-step call of each variant (allocator, vmap and kernel caches)."""
        from fedast_mpi.batched import local_train_batch
        from fedast_mpi.training import local_train
        local_train(self.fm, self.base, self.x, self.y, self.shards[0], steps=1,
                    batch_size=BATCH, lr=LR, weight_decay=WEIGHT_DECAY, seed=0)
        for g in groups:
            local_train_batch(self.fm, [self.base] * g, self.x, self.y, self.shards[:g],
                              self.seeds[:g], steps=1, batch_size=BATCH, lr=LR,
                              weight_decay=WEIGHT_DECAY)
        sync(self.device)

    def timed(self, fn) -> tuple[float, list]:
        """(requests per second of fn() over all n requests, its results)."""
        sync(self.device)
        t0 = time.perf_counter()
        out = fn()
        sync(self.device)
        return self.n / (time.perf_counter() - t0), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="logreg,mlp,lenet5,cifar_cnn",
                    help="comma-separated models, each optionally NAME:STEPS")
    ap.add_argument("--groups", default="1,4,16", help="group sizes of the batched runs")
    ap.add_argument("--requests", type=int, default=32,
                    help="requests per measurement (a multiple of every group size)")
    ap.add_argument("--steps", type=int, default=27, help="local steps per request")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (as a worker)")
    ap.add_argument("--data-dir", help="standard MNIST/CIFAR-10 files (default: generated)")
    ap.add_argument("--json", help="write the result here (else stdout)")
    args = ap.parse_args(argv)

    try:
        import fedast_mpi.batched  # noqa: F401
    except ImportError as exc:
        print(f"batched: fedast_mpi.batched is not available ({exc}); this benchmark needs "
              f"local_train_batch(fm, bases, x, y, shards, seeds, *, steps, batch_size, lr, "
              f"weight_decay)", file=sys.stderr)
        return 2
    groups = [int(g) for g in args.groups.split(",") if g.strip()]
    if not groups or min(groups) < 1 or args.rounds < 1 or args.requests < 1:
        ap.error("group sizes, --rounds and --requests must be >= 1")
    bad = [g for g in groups if args.requests % g]
    if bad:
        ap.error(f"--requests {args.requests} is not a multiple of group size(s) {bad}")
    models = parse_models(args.models, args.steps)
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    torch.set_num_threads(max(1, args.threads))

    tmp = None
    data_dir = Path(args.data_dir) if args.data_dir else None
    try:
        if data_dir is None and any(MODELS[m][0] != "digits" for m, _ in models):
            from fedast_mpi.data.sample_files import write_dataset
            tmp = Path(tempfile.mkdtemp(prefix="fedast-batched-"))
            data_dir = tmp
            for ds in sorted({MODELS[m][0] for m, _ in models} - {"digits"}):
                write_dataset(ds, tmp, n_train=GEN_TRAIN, n_test=GEN_TEST)
        out = {"device": str(device), "torch": torch.__version__,
               "torch_threads": torch.get_num_threads(), "requests": args.requests,
               "groups": groups, "rounds": args.rounds, "batch_size": BATCH, "lr": LR,
               "weight_decay": WEIGHT_DECAY, "models": {}}
        if device.type == "cuda":
            out["gpu"] = torch.cuda.get_device_name(device)
        for name, steps in models:
            case = Case(name, steps, args.requests, device, data_dir)
            case.warm_up(groups)
            single: list[float] = []
            batched: dict[int, list[float]] = {g: [] for g in groups}
            diff, scale = {}, None
            for r in range(args.rounds):
                rps, ref = case.timed(case.single)
                single.append(rps)
                if r == 0:
                    scale = max(float(np.max(np.abs(d[0]))) for d in ref)
                for g in groups:
                    rps, got = case.timed(lambda case=case, g=g: case.batched(g))
                    batched[g].append(rps)
                    if r == 0:  # sanity: the same requests as one at a time, to float tolerance
                        diff[g] = max(float(np.max(np.abs(a[0] - b[0]))) for a, b in zip(got, ref))
            s_med = statistics.median(single)
            out["models"][name] = {
                "n_params": case.fm.n_params, "steps": steps,
                "single_requests_per_second": single,
                "batched_requests_per_second": {str(g): v for g, v in batched.items()},
                "median_single": s_med,
                "median_batched": {str(g): statistics.median(v) for g, v in batched.items()},
                "ratio": {str(g): statistics.median(v) / s_med for g, v in batched.items()},
                "ratio_rounds": {str(g): [b / s for b, s in zip(v, single)]
                                 for g, v in batched.items()},
                "max_abs_delta_difference": {str(g): d for g, d in diff.items()},
                "max_abs_delta": scale,
            }
            print(f"batched: {name} ({steps} steps): single {s_med:.1f} req/s; "
                  + ", ".join(f"G={g} {statistics.median(v):.1f} req/s" for g, v in
                              batched.items()), file=sys.stderr, flush=True)
        emit(out, args.json)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
