"""The paper's configs run end to end on tiny files generated in the standard formats."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from conftest import launch
from fedast_mpi.data.sample_files import write_cifar10, write_idx_set, write_shakespeare

PAPER = Path(__file__).parent.parent / "configs" / "paper"
pytestmark = pytest.mark.launch


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """MNIST, Fashion-MNIST (IDX .gz in torchvision's raw/ layout), CIFAR-10, Shakespeare."""
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw", seed=1, n_train=60, gz=True)
    write_idx_set(root / "FashionMNIST" / "raw", seed=2, n_train=60, gz=False)
    write_cifar10(root)
    write_shakespeare(root / "shakespeare")
    return root


def shrink(raw: dict, data_dir: Path) -> list[str]:
    """--set items that keep the paper's tasks, models and algorithm but make the run tiny."""
    items = ["run.max_time=60", "run.log_every=0", "clients.count=12", "clients.available=6"]
    for i, task in enumerate(raw["tasks"]):
        items += [f"tasks.{i}.data_dir={data_dir}", f"tasks.{i}.local_steps=2",
                  f"tasks.{i}.requests=4", f"tasks.{i}.buffer_size=2", f"tasks.{i}.eval_every=1",
                  f"tasks.{i}.batch_size=4"]
        if task["partition"]["kind"] == "dirichlet":
            items.append(f"tasks.{i}.partition.samples_per_client=20")
    return [x for item in items for x in ("--set", item)]


@pytest.mark.parametrize("name", ["heterogeneous-main", "homogeneous-shakespeare-m2"])
def test_paper_config_runs_on_generated_files(tmp_path, data_dir, name):
    path = PAPER / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    out = tmp_path / "run"
    res = launch(3, "run", str(path), "--out", str(out), *shrink(raw, data_dir), timeout=300)
    assert res.rc == 0, res.stderr[-3000:]
    with h5py.File(out / "run.h5", "r") as f:
        assert f.attrs["status"] == "completed"
        models = {n: g.attrs["model"] for n, g in f["tasks"].items()}
        assert {t["model"] for t in raw["tasks"]} == set(models.values())
        ev = f["events"][()]
        assert len(ev) > 0 and np.all(np.isfinite(ev["update_norm"][ev["accepted"] == 1]))
        for g in f["tasks"].values():
            assert len(g["eval"]) >= 1 and len(g["final_model"]) == g.attrs["n_params"]
    # and the comparison the config describes, with its sync settings
    cmp_out = tmp_path / "cmp"
    res = launch(2, "compare", str(path), "--algorithms", "fedast,sync", "--seeds", "1",
                 "--out", str(cmp_out), *shrink(raw, data_dir), timeout=300)
    assert res.rc == 0, res.stderr[-3000:]
    with h5py.File(cmp_out / "sync-seed0" / "run.h5", "r") as f:
        cfg = yaml.safe_load(f.attrs["config"])
    assert cfg["tasks"][0]["global_lr"] == 1.0  # the sync section of the paper config applied


def test_missing_data_file_is_one_line(tmp_path):
    raw = yaml.safe_load((PAPER / "heterogeneous-main.yaml").read_text())
    empty = tmp_path / "empty"
    empty.mkdir()
    res = launch(2, "run", str(PAPER / "heterogeneous-main.yaml"), "--out", str(tmp_path / "r"),
                 *shrink(raw, empty))
    assert res.rc == 2
    assert len(res.error_lines()) == 1 and res.stderr.strip() == res.error_lines()[0]
    assert str(empty) in res.stderr
