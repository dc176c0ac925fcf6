"""The device plan and the ranks' agreement (fedast_mpi.devices), without MPI and without a GPU.

Layouts are those of the SLURM templates: one node with 1 + N ranks, several nodes with rank 0
on the first, srun giving every rank one device, MIG slices. CUDA itself is simulated with the
FEDAST_TEST_FAKE_CUDA hook (a private environment mapping, never os.environ).
"""

from __future__ import annotations

import pytest

from fedast_mpi import devices
from fedast_mpi.devices import Decision, Placement, RankDevice, check, choose, plan
from fedast_mpi.errors import ConfigError, FedastError
from fedast_mpi.grouping import AUTO_GPU_SIZE, group_sizes


def layout(nodes: list[list[int]], n_devices: int, server_gpu: bool = False,
           visible: str | None = None) -> dict[int, int | None]:
    """{rank: device index or None (CPU)} for every rank of `nodes` (world ranks per node)."""
    out = {}
    for node in nodes:
        for rank in node:
            where = plan(node, rank, server_gpu=server_gpu, n_devices=n_devices, visible=visible)
            out[rank] = where.index
    return out


# ----------------------------------------------------------------------------- placement

def test_one_node_server_and_one_worker_per_gpu():
    """fedast-1node.sbatch: 5 tasks, 4 GPUs: rank 0 on the CPU, the 4 workers on GPUs 0..3."""
    assert layout([[0, 1, 2, 3, 4]], 4) == {0: None, 1: 0, 2: 1, 3: 2, 4: 3}


def test_one_node_more_workers_than_gpus_round_robin():
    assert layout([list(range(9))], 4) == {0: None, 1: 0, 2: 1, 3: 2, 4: 3,
                                           5: 0, 6: 1, 7: 2, 8: 3}


def test_multinode_rank0_on_the_first_node():
    """fedast-multinode.sbatch: 4 GPUs per node, 4 workers per node, rank 0 extra on node 1."""
    got = layout([[0, 1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]], 4)
    assert got == {0: None, 1: 0, 2: 1, 3: 2, 4: 3, 5: 0, 6: 1, 7: 2, 8: 3,
                   9: 0, 10: 1, 11: 2, 12: 3}


def test_multinode_equal_tasks_per_node_leaves_a_gpu_to_nobody_on_node_one():
    """The old --ntasks-per-node=4: node 1 has 3 workers (GPU 3 idle), node 2 four."""
    assert layout([[0, 1, 2, 3], [4, 5, 6, 7]], 4) == {0: None, 1: 0, 2: 1, 3: 2,
                                                     4: 0, 5: 1, 6: 2, 7: 3}


def test_cyclic_rank_distribution_uses_local_order():
    """srun --distribution=cyclic: a node's ranks are not consecutive; local order decides."""
    assert layout([[0, 2, 4], [1, 3, 5]], 2) == {0: None, 2: 0, 4: 1, 1: 0, 3: 1, 5: 0}


def test_srun_one_device_per_rank():
    """srun --gpus-per-task=1 (or --gpu-bind=single:1): every rank sees its own device 0."""
    assert layout([[0, 1, 2, 3, 4]], 1) == {0: None, 1: 0, 2: 0, 3: 0, 4: 0}


def test_server_on_gpu_when_it_computes():
    """-n 1 (in-process) and run.evaluation: server put rank 0 on a GPU, first in the order."""
    assert layout([[0]], 4, server_gpu=True) == {0: 0}
    assert layout([[0, 1, 2, 3, 4]], 4, server_gpu=True) == {0: 0, 1: 1, 2: 2, 3: 3, 4: 0}


def test_no_devices_means_cpu():
    assert layout([[0, 1, 2]], 0) == {0: None, 1: None, 2: None}


def test_mig_slices_one_per_rank():
    """Several MIG UUIDs: each worker keeps slice (position % n) and uses device 0."""
    visible = "MIG-a,MIG-b,MIG-c"
    node = [0, 1, 2, 3, 4]
    got = {r: plan(node, r, server_gpu=False, n_devices=1, visible=visible) for r in node}
    assert got == {0: Placement(None), 1: Placement(0, "MIG-a"), 2: Placement(0, "MIG-b"),
                   3: Placement(0, "MIG-c"), 4: Placement(0, "MIG-a")}


@pytest.mark.parametrize("visible, slices", [
    ("MIG-a,MIG-b", ["MIG-a", "MIG-b"]),
    (" MIG-a , MIG-b ", ["MIG-a", "MIG-b"]),
    ("MIG-a", []),                    # one slice: CUDA shows it anyway
    ("0,1", []), ("GPU-1,GPU-2", []), ("", []), (None, []),
    ("MIG-a,GPU-2", []),              # mixed: left to CUDA
])
def test_mig_slices(visible, slices):
    assert devices.mig_slices(visible) == slices


# ------------------------------------------------------------------- a rank's choice (fake)

def test_choose_cpu_touches_nothing():
    env: dict[str, str] = {"CUDA_VISIBLE_DEVICES": "MIG-a,MIG-b"}
    r = choose("cpu", 1, [0, 1], "h", server_gpu=False, deterministic=True, environ=env)
    assert (r.kind, r.candidate, r.device) == ("cpu", False, "cpu")
    assert env == {"CUDA_VISIBLE_DEVICES": "MIG-a,MIG-b"}


def test_choose_rank0_is_not_a_candidate_unless_it_computes():
    env = {devices.FAKE_ENV: "0:4"}
    r = choose("auto", 0, [0, 1], "h", server_gpu=False, deterministic=True, environ=env)
    assert (r.kind, r.candidate) == ("cpu", False)
    r = choose("auto", 0, [0, 1], "h", server_gpu=True, deterministic=True, environ=dict(env))
    assert (r.kind, r.device) == ("cuda", "cuda:0")


def test_choose_fake_cuda_places_by_local_worker_index():
    env = {devices.FAKE_ENV: "3:4"}
    r = choose("auto", 3, [0, 1, 2, 3], "h", server_gpu=False, deterministic=True, environ=env)
    assert (r.kind, r.index, r.candidate) == ("cuda", 2, True)
    assert env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # before anything starts cuBLAS


def test_choose_rewrites_visible_devices_for_mig_before_cuda():
    env = {"CUDA_VISIBLE_DEVICES": "MIG-a,MIG-b,MIG-c,MIG-d", devices.FAKE_ENV: "2:1"}
    r = choose("cuda", 2, [0, 1, 2, 3, 4], "h", server_gpu=False, deterministic=False,
               environ=env)
    assert env["CUDA_VISIBLE_DEVICES"] == "MIG-b" and (r.index, r.visible) == (0, "MIG-b")
    assert "CUBLAS_WORKSPACE_CONFIG" not in env  # not deterministic: left alone


def test_choose_reports_an_error_instead_of_raising():
    env = {devices.FAKE_ENV: "1:error"}
    r = choose("auto", 1, [0, 1], "h", server_gpu=False, deterministic=True, environ=env)
    assert r.kind == "error" and "RuntimeError" in r.detail


def test_choose_without_cuda_says_why():
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = choose("cuda", 1, [0, 1], "h", server_gpu=False, deterministic=True, environ={})
    assert r.kind == "none" and r.detail


# ---------------------------------------------------------------------------- agreement

def rep(rank: int, kind: str, host: str = "n1", requested: str = "auto", **kw) -> RankDevice:
    return RankDevice(rank, host, candidate=kind != "cpu" or rank > 0, kind=kind,
                      requested=requested, **kw)


def test_check_agreeing_ranks():
    cpu0 = RankDevice(0, "n1", candidate=False)
    assert check([cpu0, rep(1, "cuda", index=0), rep(2, "cuda", index=1)]) is None
    assert check([cpu0, rep(1, "none"), rep(2, "none")]) is None  # all CPU
    assert check([cpu0, rep(1, "cpu"), rep(2, "cpu")]) is None


def test_check_auto_disagreement_names_ranks_and_hosts():
    cpu0 = RankDevice(0, "n1", candidate=False)
    err = check([cpu0, rep(1, "cuda", index=0), rep(2, "cuda", index=1),
                         rep(3, "none", "n2", detail="no device found"),
                         rep(4, "none", "n2", detail="no device found")])
    assert isinstance(err, ConfigError) and err.exit_code == 2
    assert str(err) == ("run.device: 'auto' found CUDA on ranks 1, 2 on n1 but not on ranks 3, 4 "
                        "on n2 (no device found); give them all a GPU, or set "
                        "run.device: cpu")


def test_check_cuda_requested_but_missing():
    cpu0 = RankDevice(0, "n1", candidate=False)
    err = check([cpu0, rep(1, "cuda", index=0), rep(2, "none", detail="x", requested="cuda")])
    assert isinstance(err, ConfigError)
    assert str(err) == "run.device: 'cuda' requested but rank 2 on n1 sees no CUDA device (x)"


def test_check_reads_each_ranks_own_request():
    """The verdict comes from the gathered reports alone, so ranks that read run.device
    differently (emulated workers run on the CPU) still decide alike."""
    cuda0 = RankDevice(0, "n1", candidate=False, requested="cuda")
    cpu_workers = [RankDevice(r, "n1", candidate=False, requested="cpu") for r in (1, 2)]
    assert check([cuda0, *cpu_workers]) is None
    auto_none = [rep(r, "none", detail="x") for r in (1, 2)]
    assert check([cuda0, *auto_none]) is None  # only `auto` ranks lack CUDA, and agree


def test_check_errors_win_and_exit_1():
    cpu0 = RankDevice(0, "n1", candidate=False)
    err = check([cpu0, rep(1, "cuda", index=0), rep(2, "error", detail="E: bad"),
                         rep(3, "error", "n2", detail="E: bad"), rep(4, "none")])
    assert type(err) is FedastError and err.exit_code == 1
    assert str(err) == "run.device: CUDA set-up failed on rank 2 on n1, rank 3 on n2: E: bad"


def test_where_compresses_runs():
    reports = [RankDevice(r, "a" if r < 6 else "b", True) for r in (1, 2, 3, 5, 6, 7)]
    assert devices.where(reports) == "ranks 1-3, 5 on a, ranks 6, 7 on b"


# ---------------------------------------------------------------- decision and batching

def test_decision_training_type_is_the_workers():
    cpu0 = RankDevice(0, "n1", candidate=False)
    gpu = [rep(r, "cuda", index=r - 1, name="NVIDIA H200", versions=("2.13", "12.8", "90800"))
           for r in (1, 2)]
    d = Decision((cpu0, *gpu), 0)
    assert d.device == "cpu" and d.train_type == "cuda"
    assert Decision((cpu0, *gpu), 2).device == "cuda:1"
    attrs = d.run_attrs(True, "2.13")
    assert attrs["device_type"] == "cuda" and attrs["device_name"] == "NVIDIA H200"
    assert (attrs["torch_version"], attrs["cuda_version"], attrs["cudnn_version"]) == \
        ("2.13", "12.8", "90800")
    assert attrs["deterministic"] == 1
    assert attrs["device_placement"] == "rank 0 n1 cpu; rank 1 n1 cuda:0; rank 2 n1 cuda:1"


def test_decision_lists_differing_devices_with_their_ranks():
    cpu0 = RankDevice(0, "n1", candidate=False)
    d = Decision((cpu0, rep(1, "cuda", index=0, name="A100"),
                  rep(2, "cuda", "n2", index=0, name="H200")), 0)
    assert d.run_attrs(False)["device_name"] == "A100 (rank 1 on n1); H200 (rank 2 on n2)"


def test_decision_cpu_run_and_single_rank():
    d = Decision((RankDevice(0, "n1", candidate=False), rep(1, "none")), 0)
    assert d.train_type == "cpu"
    attrs = d.run_attrs(True, "2.13")
    assert (attrs["device_name"], attrs["torch_version"], attrs["cuda_version"]) == \
        ("cpu", "2.13", "")
    solo = Decision((RankDevice(0, "n1", True, kind="cuda", index=0, name="H200"),), 0)
    assert solo.train_type == "cuda" and solo.device == "cuda:0"


def test_batching_follows_the_workers_device():
    """auto batching (0) is decided by where requests train, so a CPU rank 0 does not turn
    it off for GPU workers."""
    import torch

    from fedast_mpi.params import FlatModel
    fm = FlatModel(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    cpu0 = RankDevice(0, "n1", candidate=False)
    d = Decision((cpu0, rep(1, "cuda", index=0)), 0)
    assert group_sizes(0, d.train_type, [fm]) == [AUTO_GPU_SIZE]
    assert group_sizes(0, Decision((cpu0, rep(1, "none")), 0).train_type, [fm]) == [1]


# ------------------------------------------------------------------------------ settings

def test_cuda_settings_both_ways():
    assert devices.cuda_settings(True) == {
        "cudnn.deterministic": True, "cudnn.benchmark": False, "cudnn.allow_tf32": False,
        "cuda.matmul.allow_tf32": False, "deterministic_algorithms": True}
    assert devices.cuda_settings(False) == {k: not v for k, v in
                                            devices.cuda_settings(True).items()}


def test_apply_cuda_settings_sets_torch_flags():
    """The flags are process-wide Python settings (no CUDA call): set, read back, restored."""
    import torch
    b = torch.backends
    saved = (b.cudnn.deterministic, b.cudnn.benchmark, b.cudnn.allow_tf32,
             b.cuda.matmul.allow_tf32, torch.are_deterministic_algorithms_enabled())
    env: dict[str, str] = {}
    try:
        devices.apply_cuda_settings(True, env)
        assert (b.cudnn.deterministic, b.cudnn.benchmark, b.cudnn.allow_tf32,
                b.cuda.matmul.allow_tf32, torch.are_deterministic_algorithms_enabled()) == \
            (True, False, False, False, True)
        assert env == {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
        env2 = {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}
        devices.apply_cuda_settings(True, env2)
        assert env2 == {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}  # a site's own choice is kept
    finally:
        (b.cudnn.deterministic, b.cudnn.benchmark, b.cudnn.allow_tf32,
         b.cuda.matmul.allow_tf32) = saved[:4]
        torch.use_deterministic_algorithms(saved[4])
    assert not torch.cuda.is_initialized()


def test_config_key_deterministic():
    from fedast_mpi.config import load_config
    assert load_config(None, []).run.deterministic is True
    assert load_config(None, ["run.deterministic=false"]).run.deterministic is False
    with pytest.raises(ConfigError, match="run.deterministic"):
        load_config(None, ["run.deterministic=2"])
