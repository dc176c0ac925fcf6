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

GOLDEN: dict[str, dict[str, str]] = {}

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
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("name,args", [
    ("compare-dynamic", ["--algorithms", "fedast", "--set", "algorithm.allocation=dynamic",
                         "--set", "run.max_time=300"]),
    ("compare-sync-ucb", ["--algorithms", "sync-ucb", "--set", "run.max_time=600"]),
])
def test_compare_embedded(tmp_path, n, name, args):
    res = launch(n, "compare", COMPARE, *args, "--out", str(tmp_path))
    assert res.rc == 0, res.stderr[-2000:]
    algorithm = args[1]
    check(name, tmp_path / f"{algorithm}-seed0")


@pytest.mark.launch
@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason=f"real Fashion-MNIST not installed in "
                    f"{FMNIST_DIR} (apt-get install dataset-fashion-mnist)")
@pytest.mark.parametrize("n", [2, 3])
def test_fmnist_paper_config_on_the_real_files(tmp_path, n):
    res = launch(n, "run", FMNIST_CONFIG, "--out", str(tmp_path / "run"),
                 "--set", "run.max_time=20", "--set", f"tasks.0.data_dir={FMNIST_DIR}",
                 "--set", f"tasks.1.data_dir={FMNIST_DIR}", "--set", "run.log_every=0",
                 "--set", "run.device=cpu")
    assert res.rc == 0, res.stderr[-2000:]
    check("fmnist-paper", tmp_path / "run")
