"""What runs decide, pinned: digests of real runs against those recorded before a change.

`GOLDEN` holds the digests (tests/digests.py: `/events` without `worker` and `wall`,
`/aggregations` without `wall`, `/allocation`, each task's evaluations and final model) of runs
made with the code before the server was recomposed into parts (commit c76c297). A change that
moves any of them fails here, naming the part that moved: if the move is intended, say why in
the change and record the new digests (`python tests/digests.py RUN_DIR`).

Digests are of float bits, so they hold for the software they were recorded with (torch 2.13.0,
CPU, one intra-op thread per rank); other builds skip with the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import launch
from digests import run_digest

ROOT = Path(__file__).parent.parent
COMPARE = str(ROOT / "configs" / "compare-embedded.yaml")
FMNIST_CONFIG = str(ROOT / "configs" / "paper" / "homogeneous-fmnist-m2.yaml")
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
RECORDED_WITH = "2.13.0+cpu"

GOLDEN: dict[str, dict[str, str]] = {
    "default": {
        "events": "cdde6d41c4c3a616",
        "aggregations": "b459eff06008187f",
        "allocation": "229aaf7840236505",
        "eval/digits-cnn": "44042c8cf3c573b1",
        "final_model/digits-cnn": "1903feb72616f588",
        "eval/digits-logreg": "21fb12f2bf7cfb03",
        "final_model/digits-logreg": "5c874f4fe4e26d70",
        "eval/synthetic": "ed27b87bceb7dd5b",
        "final_model/synthetic": "30aa109cc29d3ef8",
        "n_events": "2291",
    },
    "compare-dynamic": {
        "events": "2e023473346b2aa1",
        "aggregations": "638c32887e38a533",
        "allocation": "c4ff0b7bce7935ed",
        "eval/digits-dirichlet": "8829d3b3f2e7cea2",
        "final_model/digits-dirichlet": "88decef026a44259",
        "eval/digits-iid": "44d6d7d37b1b7e41",
        "final_model/digits-iid": "a6ab866ab0e2c11e",
        "eval/synthetic-1-1": "5ea3215845392cae",
        "final_model/synthetic-1-1": "b4a359b4e0ad19af",
        "n_events": "3927",
    },
    "compare-sync-ucb": {
        "events": "3dbc2874e5d9a231",
        "aggregations": "7d2bcde2aa837f37",
        "allocation": "1b3ff1fc8ff52c1e",
        "eval/digits-dirichlet": "90b1cdcd69eada83",
        "final_model/digits-dirichlet": "dd30192d41d31902",
        "eval/digits-iid": "ead93de57f9570c9",
        "final_model/digits-iid": "5e898df8c06170d5",
        "eval/synthetic-1-1": "b0d1110731d8b048",
        "final_model/synthetic-1-1": "f6fd8123b7b3a6f1",
        "n_events": "21415",
    },
    "fmnist-paper": {
        "events": "9d4aecc3a56d3393",
        "aggregations": "ab847142af20f2c4",
        "allocation": "c3f6e97afa64c0e7",
        "eval/fmnist-0": "636fe954091c7d32",
        "final_model/fmnist-0": "35f806dcf71e45b5",
        "eval/fmnist-1": "8f8b17eca55f152f",
        "final_model/fmnist-1": "7bd27c4a6b79ee64",
        "n_events": "466",
    },
}

pytestmark = pytest.mark.skipif(torch.__version__ != RECORDED_WITH,
                                 reason=f"digests were recorded with torch {RECORDED_WITH}, "
                                        f"this is {torch.__version__}")


def check(name: str, run_dir: Path) -> None:
    got, want = run_digest(run_dir), GOLDEN[name]
    moved = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    assert not moved, f"{name}: {', '.join(moved)} moved ({got})"


@pytest.mark.launch
@pytest.mark.parametrize("n", [2, 3])
def test_default_job(default_runs, n):
    check("default", default_runs[n][0])


@pytest.mark.launch
def test_default_job_evaluated_by_the_server(tmp_path):
    """The default runs above evaluate on their workers (`auto`); rank 0 gives the same bits."""
    res = launch(3, "run", "--out", str(tmp_path), "--set", "run.log_every=0",
                 "--set", "run.evaluation=server")
    assert res.rc == 0, res.stderr[-2000:]
    check("default", tmp_path)


# One rank count each (the goldens were the same at -n 2 and -n 3; rank-count independence has its
# own tests in test_launch.py), to keep the suite short.
@pytest.mark.launch
@pytest.mark.parametrize("n,name,args", [
    (2, "compare-dynamic", ["--algorithms", "fedast", "--set", "algorithm.allocation=dynamic",
                            "--set", "run.max_time=300"]),
    (3, "compare-sync-ucb", ["--algorithms", "sync-ucb", "--set", "run.max_time=600"]),
])
def test_compare_embedded(tmp_path, n, name, args):
    res = launch(n, "compare", COMPARE, *args, "--out", str(tmp_path))
    assert res.rc == 0, res.stderr[-2000:]
    algorithm = args[1]
    check(name, tmp_path / f"{algorithm}-seed0")


@pytest.mark.launch
@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason=f"real Fashion-MNIST not installed in "
                    f"{FMNIST_DIR} (apt-get install dataset-fashion-mnist)")
def test_fmnist_paper_config_on_the_real_files(tmp_path):
    res = launch(3, "run", FMNIST_CONFIG, "--out", str(tmp_path / "run"),
                 "--set", "run.max_time=20", "--set", f"tasks.0.data_dir={FMNIST_DIR}",
                 "--set", f"tasks.1.data_dir={FMNIST_DIR}", "--set", "run.log_every=0",
                 "--set", "run.device=cpu")
    assert res.rc == 0, res.stderr[-2000:]
    check("fmnist-paper", tmp_path / "run")
