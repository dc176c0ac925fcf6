"""Which device each rank uses: a placement plan, decided by all ranks together before CUDA starts.

Placement. Rank 0 (the server) uses the CPU unless it trains or evaluates itself (`-n 1`,
or `run.evaluation: server`). The ranks of a node that use CUDA take the node's visible
devices round-robin in local-rank order: with 4 GPUs and 5 ranks on the first node, rank 0
gets the CPU and the 4 workers GPUs 0..3. A rank that sees one device (srun with one GPU
per task) takes it. CUDA shows a process only the first of several MIG slices in
CUDA_VISIBLE_DEVICES, so there each rank restricts the variable to its own slice before
CUDA initialises, and uses device 0.

Agreement. Every rank reports what it chose, or why it could not (`choose` never raises),
the reports are gathered (`fedast_mpi.launch.decide_devices`), and `check` turns any
disagreement into one error every rank raises alike: no rank is left waiting in a
collective the others never reach.

Determinism. On CUDA ranks `apply_cuda_settings` fixes cuDNN's algorithms, turns TF32 off
and makes PyTorch refuse nondeterministic kernels (`run.deterministic: true`, the default),
or frees all of them for speed (`false`). CPU ranks are left alone: with one intra-op
thread they are deterministic already.

Everything but `choose` and `apply_cuda_settings` is pure (no MPI, no torch), and this
module imports torch only on ranks that may use CUDA.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from dataclasses import dataclass
from typing import MutableMapping, Sequence

from fedast_mpi.errors import ConfigError, FedastError

VISIBLE = "CUDA_VISIBLE_DEVICES"
CUBLAS_WORKSPACE = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
"""cuBLAS needs a fixed workspace for deterministic results (CUDA >= 10.2); read when
cuBLAS starts, so it is set before the first CUDA call."""
FAKE_ENV = "FEDAST_TEST_FAKE_CUDA"
"""Test hook, read only by `choose`: `RANK:N[,RANK:N...]` makes RANK see N CUDA devices
without calling torch.cuda; `RANK:error` makes its CUDA probe raise."""


# ----------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Placement:
    """Where one rank runs: a CUDA device index as the process sees it, or the CPU (None)."""

    index: int | None
    visible: str | None = None
    """CUDA_VISIBLE_DEVICES to set before CUDA initialises (one MIG slice), or None."""


def gpu_slot(node_ranks: Sequence[int], rank: int, server_gpu: bool) -> int | None:
    """This rank's position among its node's CUDA ranks (in local-rank order), or None.

    `node_ranks` are the world ranks on this rank's node in local-rank order. Rank 0 is
    one of the CUDA ranks only when `server_gpu` (it trains or evaluates itself).
    """
    users = [r for r in node_ranks if r != 0 or server_gpu]
    return users.index(rank) if rank in users else None


def mig_slices(visible: str | None) -> list[str]:
    """The MIG UUIDs CUDA_VISIBLE_DEVICES lists, when it lists several and nothing else."""
    entries = [e.strip() for e in (visible or "").split(",") if e.strip()]
    return entries if len(entries) > 1 and all(e.startswith("MIG-") for e in entries) else []


def plan(node_ranks: Sequence[int], rank: int, *, server_gpu: bool, n_devices: int,
         visible: str | None = None) -> Placement:
    """The device of `rank` (see the module docstring).

    n_devices: the CUDA devices the rank sees (torch.cuda.device_count()); with several MIG
    slices in `visible` the rank keeps one (`Placement.visible`) and then sees only it.
    A rank of the plan on a node without devices gets the CPU.
    """
    slot = gpu_slot(node_ranks, rank, server_gpu)
    if slot is None:
        return Placement(None)
    slices = mig_slices(visible)
    if slices:
        return Placement(0, slices[slot % len(slices)])
    return Placement(slot % n_devices) if n_devices > 0 else Placement(None)


# ----------------------------------------------------------------------- what a rank reports

@dataclass(frozen=True)
class RankDevice:
    """One rank's report: its device, or why it has none (plain data: it is gathered)."""

    rank: int
    host: str
    candidate: bool
    """Asked to use CUDA: run.device auto|cuda, and a worker (or rank 0 when it computes)."""
    requested: str = "auto"
    """run.device as this rank read it (`cuda`: CUDA is required)."""
    kind: str = "cpu"
    """`cpu`; `cuda`; `none` (a candidate that sees no CUDA device); `error`."""
    index: int | None = None
    name: str = ""
    """The device's name (torch.cuda.get_device_name)."""
    detail: str = ""
    """Why a candidate has no CUDA device, or its error."""
    visible: str = ""
    """CUDA_VISIBLE_DEVICES as the rank used it."""
    versions: tuple[str, str, str] = ("", "", "")
    """torch, CUDA and cuDNN versions of a CUDA rank."""

    @property
    def device(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else "cpu"


def _fake(spec: str | None, rank: int) -> int | str | None:
    """This rank's entry of FAKE_ENV: a device count, "error", or None (no entry)."""
    for item in (spec or "").split(","):
        who, _, what = item.strip().partition(":")
        if who.strip() == str(rank):
            what = what.strip()
            return what if what == "error" else int(what)
    return None


def _probe(visible: str | None) -> tuple[int, str]:
    """(CUDA devices this process sees, why none). torch.cuda's warnings become the reason."""
    import torch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count:
        return count, ""
    if torch.version.cuda is None:
        return 0, f"torch {torch.__version__} is built without CUDA"
    if visible is not None and not visible.strip():
        return 0, f"{VISIBLE} is empty"
    if caught:
        return 0, str(caught[0].message).strip().splitlines()[0][:200]
    return 0, "no device found"


def cuda_settings(deterministic: bool) -> dict[str, bool]:
    """The torch flags `apply_cuda_settings` sets (names as in torch.backends)."""
    return {"cudnn.deterministic": deterministic, "cudnn.benchmark": not deterministic,
            "cudnn.allow_tf32": not deterministic, "cuda.matmul.allow_tf32": not deterministic,
            "deterministic_algorithms": deterministic}


def apply_cuda_settings(deterministic: bool,
                        environ: MutableMapping[str, str] | None = None) -> None:
    """Deterministic CUDA (same bits run after run on the same GPU model and software), or fast.

    Deterministic: cuDNN's deterministic algorithms without autotuning, no TF32 (cuDNN
    convolutions would otherwise run in TF32 on A100/H100/H200), PyTorch's deterministic
    kernels (an operation that has none raises, naming itself), and a fixed cuBLAS
    workspace; call it before the first CUDA call. Fast: autotuned cuDNN, TF32 matmuls and
    convolutions, any kernel. Process-wide.
    """
    import torch
    env = os.environ if environ is None else environ
    if deterministic:
        env.setdefault(*CUBLAS_WORKSPACE)
    flags = cuda_settings(deterministic)
    torch.backends.cudnn.deterministic = flags["cudnn.deterministic"]
    torch.backends.cudnn.benchmark = flags["cudnn.benchmark"]
    torch.backends.cudnn.allow_tf32 = flags["cudnn.allow_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = flags["cuda.matmul.allow_tf32"]
    torch.use_deterministic_algorithms(flags["deterministic_algorithms"])


def choose(requested: str, rank: int, node_ranks: Sequence[int], host: str, *,
           server_gpu: bool, deterministic: bool,
           environ: MutableMapping[str, str] | None = None) -> RankDevice:
    """This rank's device (binding it and applying the CUDA settings); never raises.

    requested: run.device (auto|cpu|cuda). Must run before anything else on this rank
    touches CUDA: it may rewrite CUDA_VISIBLE_DEVICES (MIG) and CUBLAS_WORKSPACE_CONFIG.
    """
    env = os.environ if environ is None else environ
    candidate = requested != "cpu" and (rank != 0 or server_gpu)
    base = RankDevice(rank, host, candidate, requested)
    if not candidate:
        return base
    try:
        visible = env.get(VISIBLE)
        slot = gpu_slot(node_ranks, rank, server_gpu)
        slices = mig_slices(visible)
        if slices and slot is not None:
            env[VISIBLE] = slices[slot % len(slices)]
        if deterministic:
            env.setdefault(*CUBLAS_WORKSPACE)
        fake = _fake(env.get(FAKE_ENV), rank)
        if fake == "error":
            raise RuntimeError(f"CUDA probe failed ({FAKE_ENV})")
        count, why = (fake, "") if isinstance(fake, int) else _probe(env.get(VISIBLE))
        if count == 0:
            return dataclasses.replace(base, kind="none", detail=why or "no device found",
                                       visible=env.get(VISIBLE, ""))
        index = plan(node_ranks, rank, server_gpu=server_gpu, n_devices=count,
                     visible=visible).index
        if index is None:  # cannot happen: a candidate on a node with devices has a slot
            raise RuntimeError(f"no device planned for rank {rank} of {count}")
        if fake is not None:
            return dataclasses.replace(base, kind="cuda", index=index, name="fake",
                                       visible=env.get(VISIBLE, ""))
        import torch
        apply_cuda_settings(deterministic, env)
        torch.cuda.set_device(index)
        torch.zeros(1, device=f"cuda:{index}")  # a broken device fails here, collectively
        versions = (torch.__version__, torch.version.cuda or "",
                    str(torch.backends.cudnn.version() or ""))
        return dataclasses.replace(base, kind="cuda", index=index,
                                   name=torch.cuda.get_device_name(index),
                                   visible=env.get(VISIBLE, ""), versions=versions)
    except Exception as exc:  # noqa: BLE001 - reported to every rank, then the job exits
        text = " ".join(str(exc).split())[:300]
        return dataclasses.replace(base, kind="error", detail=f"{type(exc).__name__}: {text}")


# ------------------------------------------------------------------------- the agreement

def where(reports: Sequence[RankDevice]) -> str:
    """`rank 3 on n1` / `ranks 1-3, 5 on n1, ranks 6, 7 on n2`: ranks grouped by host."""
    hosts: dict[str, list[int]] = {}
    for r in reports:
        hosts.setdefault(r.host, []).append(r.rank)
    parts = []
    for host, ranks in hosts.items():
        runs: list[list[int]] = []
        for k in sorted(ranks):
            if runs and k == runs[-1][-1] + 1:
                runs[-1].append(k)
            else:
                runs.append([k])
        text = ", ".join(f"{g[0]}-{g[-1]}" if len(g) > 2 else ", ".join(map(str, g))
                         for g in runs)
        parts.append(f"rank{'s' if len(ranks) > 1 else ''} {text} on {host}")
    return ", ".join(parts)


def check(reports: Sequence[RankDevice]) -> FedastError | None:
    """The error the whole job fails with, or None when the ranks agree. Pure, and from the
    gathered reports alone: every rank decides alike."""
    failed = [r for r in reports if r.kind == "error"]
    if failed:
        by_detail: dict[str, list[RankDevice]] = {}
        for r in failed:
            by_detail.setdefault(r.detail, []).append(r)
        text = "; ".join(f"{where(rs)}: {d}" for d, rs in by_detail.items())
        return FedastError(f"run.device: CUDA set-up failed on {text}")
    missing = [r for r in reports if r.kind == "none"]
    found = [r for r in reports if r.kind == "cuda"]
    required = [r for r in missing if r.requested == "cuda"]
    if required:
        verb = "sees" if len(required) == 1 else "see"
        return ConfigError(f"run.device: 'cuda' requested but {where(required)} {verb} no CUDA "
                           f"device ({required[0].detail})")
    if missing and found:
        return ConfigError(f"run.device: 'auto' found CUDA on {where(found)} but not on "
                           f"{where(missing)} ({missing[0].detail}); give them all a GPU, "
                           "or set run.device: cpu")
    return None


@dataclass(frozen=True)
class Decision:
    """Every rank's report, as gathered (index = rank), seen from `rank`."""

    reports: tuple[RankDevice, ...]
    rank: int

    @property
    def device(self) -> str:
        """This rank's device: `cpu` or `cuda:N`."""
        return self.reports[self.rank].device

    @property
    def training(self) -> tuple[RankDevice, ...]:
        """The ranks that train: the workers, or rank 0 alone with -n 1."""
        return self.reports[1:] or self.reports[:1]

    @property
    def train_type(self) -> str:
        """`cuda` or `cpu`: where requests are trained (all training ranks agree, by `check`)."""
        return "cuda" if any(r.kind == "cuda" for r in self.training) else "cpu"

    def run_attrs(self, deterministic: bool, torch_version: str = "") -> dict[str, str | int]:
        """Root attributes of the run file: the training devices and their software.

        A value that differs between training ranks lists each with its ranks. On CPU
        runs the torch version is `torch_version` (rank 0's) and CUDA's are empty.
        """
        cuda = [r for r in self.training if r.kind == "cuda"]

        def values(get) -> str:
            groups: dict[str, list[RankDevice]] = {}
            for r in cuda:
                groups.setdefault(get(r), []).append(r)
            if len(groups) <= 1:
                return next(iter(groups), "")
            return "; ".join(f"{v} ({where(rs)})" for v, rs in groups.items())

        placement = "; ".join(f"rank {r.rank} {r.host} {r.device}"
                              + (f" {r.visible}" if r.kind == "cuda" and r.visible else "")
                              for r in self.reports)
        return {"device_type": self.train_type,
                "device_name": values(lambda r: r.name) if cuda else "cpu",
                "device_placement": placement,
                "torch_version": values(lambda r: r.versions[0]) if cuda else torch_version,
                "cuda_version": values(lambda r: r.versions[1]),
                "cudnn_version": values(lambda r: r.versions[2]),
                "deterministic": int(deterministic)}


def torch_version() -> str:
    """This process's torch version, without importing torch where it is not loaded."""
    torch = sys.modules.get("torch")
    return str(getattr(torch, "__version__", "")) if torch is not None else ""
