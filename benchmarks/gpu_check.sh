#!/bin/bash
# benchmarks/gpu_check.sh - the project's own run of the CUDA checks (adapted from
# ../shared/gpu-check.sh to the collective device decision of fedast_mpi/devices.py), about
# 6-10 minutes on one H200. Run it from the project root on a GPU machine whose python3 has a
# CUDA build of torch, mpi4py, h5py and numpy, with the project installed
# (`python3 -m pip install --no-deps -e .`; bring the `mpich` wheel if mpi4py finds no MPI).
# Results go to $OUT (default /tmp/fedast-gpu); every figure is also printed.
#
# It checks:
#  0. the software, and the deterministic settings the decision applies (flags read back);
#  1. pinned/non_blocking delta copies bitwise against plain copies, run-to-run bits, batched
#     G=16 vs single, in the fast (TF32, autotuned) and the deterministic mode;
#  2. every built-in model trains under torch.use_deterministic_algorithms (no op raises), twice
#     with the same bits, one at a time and batched where batchable;
#  3. batched speed on the GPU (README target >= 10x);
#  4. the default job on CUDA with -n 1/2/3, a repeat, a fast-mode run and a CPU run: bitwise
#     equal across rank counts and repeats in deterministic mode; the run files' device attrs;
#  5. placement with 5 ranks (rank 0 on the CPU, workers round-robin), and with rank 0 on a GPU
#     (server_gpu); nvidia-smi's view of the processes;
#  6. a disagreement on a real GPU machine (one rank with CUDA_VISIBLE_DEVICES empty) fails
#     with one line, exit 2, quickly.
# Project functions called: models.build_model, params.FlatModel, training.local_train and
# evaluate, batched.local_train_batch/batchable, devices.apply_cuda_settings/cuda_settings,
# launch.decide_devices/select_device, `python -m benchmarks batched`, `fedast-mpi run`.
set -u
OUT=${OUT:-/tmp/fedast-gpu}; mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1

echo "== 0. software and settings"
$PY - <<'PY'
import os, torch
from fedast_mpi import devices
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      torch.cuda.get_device_name(0), "n_gpus", torch.cuda.device_count())
b = torch.backends
def flags():
    return {"cudnn.deterministic": b.cudnn.deterministic, "cudnn.benchmark": b.cudnn.benchmark,
            "cudnn.allow_tf32": b.cudnn.allow_tf32, "cuda.matmul.allow_tf32": b.cuda.matmul.allow_tf32,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
print("defaults:", flags())
for det in (True, False):
    devices.apply_cuda_settings(det)
    ok = flags() == devices.cuda_settings(det)
    print(f"deterministic={det}: flags as planned: {ok}", "" if ok else flags(),
          "CUBLAS_WORKSPACE_CONFIG", os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
PY

echo "== 1. pinned copies, run-to-run bits, batched vs single"
cat > "$OUT/unit.py" <<'PY'
import sys, warnings, numpy as np, torch
from fedast_mpi.devices import apply_cuda_settings
det = sys.argv[1] == "det"
apply_cuda_settings(det)
from fedast_mpi.models import build_model
from fedast_mpi.params import FlatModel
from fedast_mpi.training import local_train, evaluate
from fedast_mpi.batched import local_train_batch
dev = torch.device("cuda", 0)
fm = FlatModel(build_model("cifar_cnn", {}, (3, 32, 32), 10, seed=0).to(dev))
g = torch.Generator().manual_seed(0)
x = torch.randn(6000, 3, 32, 32, generator=g).to(dev); y = torch.randint(0, 10, (6000,), generator=g).to(dev)
base = fm.numpy(); shards = [np.arange(i * 300, (i + 1) * 300) for i in range(16)]
kw = dict(steps=27, batch_size=32, lr=0.1, weight_decay=7e-4)
ref = [local_train(fm, base, x, y, s, seed=i, **kw)[0].copy() for i, s in enumerate(shards)]
bufs = [torch.empty(32 + 4 * fm.n_params, dtype=torch.uint8, pin_memory=True).numpy() for _ in shards]
outs = [b[32:].view(np.float32) for b in bufs]
dev_base = torch.from_numpy(base).to(dev)
bad = 0
for rep in range(10):
    for o in outs: o.fill(np.nan)
    got = [local_train(fm, dev_base, x, y, s, seed=i, out=o, **kw)[0].copy() for i, (s, o) in enumerate(zip(shards, outs))]
    bad += sum(not np.array_equal(a, b) for a, b in zip(ref, got))
print(f"mode={sys.argv[1]}: single, pinned out vs plain (10 repeats): {bad}/160 deltas differ bitwise")
runs = []
for rep in range(2):
    for o in outs: o.fill(np.nan)
    res = local_train_batch(fm, [dev_base] * 16, x, y, shards, list(range(16)), outs=outs, **kw)
    runs.append([r[0].copy() for r in res])
nan = sum(int(np.isnan(r).any()) for r in runs[0])
rel = max(np.linalg.norm(r - a) / np.linalg.norm(a) for r, a in zip(runs[0], ref))
same = all(np.array_equal(a, b) for a, b in zip(*runs))
print(f"  batched G=16 into pinned outs: {nan} with NaN left, max relative L2 vs single {rel:.2e} "
      f"(CPU test bound 1e-5); batched run-to-run bitwise equal: {same}")
print(f"  max memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
lstm = FlatModel(build_model("lstm", {}, (80,), 80, seed=0).to(dev))
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    evaluate(lstm, lstm.numpy(), torch.randint(0, 80, (64, 80), device=dev), torch.randint(0, 80, (64,), device=dev))
print("  LSTM warnings:", [str(m.message)[:80] for m in w])
PY
for m in fast det; do $PY "$OUT/unit.py" $m; done

echo "== 2. every built-in model under deterministic algorithms"
$PY - <<'PY'
import numpy as np, torch
from fedast_mpi.devices import apply_cuda_settings
apply_cuda_settings(True)
from fedast_mpi.models import build_model
from fedast_mpi.params import FlatModel
from fedast_mpi.training import local_train, evaluate
from fedast_mpi.batched import batchable, local_train_batch
dev = torch.device("cuda", 0)
g = torch.Generator().manual_seed(0)
cases = {"logreg": ((64,), 10), "mlp": ((1, 28, 28), 10), "cnn": ((1, 8, 8), 10),
         "lenet5": ((1, 28, 28), 10), "cifar_cnn": ((3, 32, 32), 10), "lstm": ((80,), 80),
         "resnet18_gn": ((3, 32, 32), 100)}
for name, (shape, classes) in cases.items():
    try:
        fm = FlatModel(build_model(name, {}, shape, classes, seed=0).to(dev))
        if name == "lstm":
            x = torch.randint(0, classes, (256, *shape), generator=g).to(dev)
        else:
            x = torch.randn(256, *shape, generator=g).to(dev)
        y = torch.randint(0, classes, (256,), generator=g).to(dev)
        shards = [np.arange(i * 64, (i + 1) * 64) for i in range(4)]
        kw = dict(steps=3, batch_size=16, lr=0.05, weight_decay=1e-4)
        base = fm.numpy().copy()  # local_train leaves fm trained
        one = [[local_train(fm, base, x, y, s, seed=i, **kw)[0].copy() for i, s in enumerate(shards)]
               for _ in range(2)]
        same = all(np.array_equal(a, b) for a, b in zip(*one))
        text = f"single twice bitwise equal: {same}"
        if batchable(fm.module):
            bat = [[r[0].copy() for r in local_train_batch(fm, [base] * 4, x, y, shards,
                                                          list(range(4)), **kw)] for _ in range(2)]
            text += f"; batched twice equal: {all(np.array_equal(a, b) for a, b in zip(*bat))}"
        acc = [evaluate(fm, base, x, y) for _ in range(2)]
        text += f"; evaluation twice equal: {acc[0] == acc[1]}"
        print(f"{name}: ok; {text}")
    except Exception as exc:
        print(f"{name}: FAILED under deterministic algorithms: {type(exc).__name__}: {str(exc)[:300]}")
PY

echo "== 3. batched speed on the GPU (README target >= 10x)"
$PY -m benchmarks batched --device cuda --models logreg,mlp,lenet5,cifar_cnn:27 --groups 1,4,16 \
    --requests 32 --rounds 3 --json "$OUT/batched.json"

echo "== 4. the default job on CUDA: rank counts, repeat, fast mode, CPU"
for r in g1:1:cuda:true g2:2:cuda:true g3:3:cuda:true g3b:3:cuda:true f3:3:cuda:false \
         c3:3:cpu:true; do
    IFS=: read -r name n device det <<<"$r"
    start=$SECONDS
    mpiexec -n "$n" fedast-mpi run --set run.device="$device" --set run.deterministic="$det" \
        --set run.log_every=0 --out "$OUT/$name" >/dev/null
    echo "$name: exit $? in $((SECONDS - start)) s"
done
$PY - "$OUT" <<'PY'
import sys, h5py, numpy as np
out = sys.argv[1]
KEYS = ("device_type", "device_name", "device_placement", "torch_version", "cuda_version",
        "cudnn_version", "deterministic", "group_sizes")
def load(run):
    with h5py.File(f"{out}/{run}/run.h5", "r") as f:
        ev = f["events"][()]
        attrs = {k: f.attrs.get(k) for k in KEYS}
        return ({n: ev[n] for n in ev.dtype.names if n not in ("worker", "wall")},
                {k: g["final_model"][()].tobytes() for k, g in f["tasks"].items()}, attrs)
runs = {r: load(r) for r in ("g1", "g2", "g3", "g3b", "f3", "c3")}
for r, v in runs.items():
    print(r, {k: (x.decode() if isinstance(x, bytes) else x) for k, x in v[2].items()})
for a, b in (("g3", "g3b"), ("g2", "g3"), ("g1", "g2"), ("g3", "f3"), ("g3", "c3")):
    ea, ma, _ = runs[a]; eb, mb, _ = runs[b]
    same_len = len(ea["request"]) == len(eb["request"])
    diff = [n for n in ea if not same_len or not np.array_equal(ea[n], eb[n], equal_nan=True)]
    print(f"{a} vs {b}: events differ in {diff or 'nothing'}; final models equal: {ma == mb}")
print("expected: g3=g3b, g2=g3, g1=g2 bitwise (deterministic, one GPU model); f3 and c3 differ")
PY

echo "== 5. placement with 5 ranks on $($PY -c 'import torch; print(torch.cuda.device_count())') GPU(s)"
for server in False True; do
    mpiexec -n 5 $PY -c "
from mpi4py import MPI; import torch
from fedast_mpi.launch import select_device
comm = MPI.COMM_WORLD
d = select_device('cuda', comm, server_gpu=$server)
if d.type == 'cuda':
    torch.zeros(1, device=d)
    mib = torch.cuda.memory_reserved(d) >> 20
else:
    mib = '-'
print(f'server_gpu=$server rank {comm.rank}: {d} reserved {mib} MiB', flush=True)
comm.Barrier()"
done
nvidia-smi --query-compute-apps=pid,used_memory --format=csv

echo "== 6. ranks that disagree fail with one line (rank 2 without CUDA)"
start=$SECONDS
timeout 180 mpiexec -n 2 fedast-mpi run --set run.device=auto --out "$OUT/dis" \
    : -n 1 env CUDA_VISIBLE_DEVICES= fedast-mpi run --set run.device=auto --out "$OUT/dis" \
    >"$OUT/dis.out" 2>"$OUT/dis.err"
echo "exit $? after $((SECONDS - start)) s (expected 2, well under 180); stderr:"
cat "$OUT/dis.err"
