"""configs/paper/ hold PAPER.md §6's settings and resolve as the paper's runs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from fedast_mpi.comparison import plan
from fedast_mpi.config import config_from_dict

PAPER = Path(__file__).parent.parent / "configs" / "paper"
# PAPER.md §5.1 and §6.5: (η_c FedAST, η_c sync, shift, exp_mean, batch, main/higher/lower target)
EXPECTED = {"mnist": (0.1, 0.2, 0.074, 0.148, 32, (0.93, 0.96, 0.83)),
            "fmnist": (0.06, 0.06, 0.12, 0.24, 32, (0.82, 0.85, 0.72)),
            "cifar10": (0.1, 0.1, 0.114, 0.228, 32, (0.63, 0.66, 0.53)),
            "shakespeare": (7.0, 7.0, 0.2775, 0.555, 64, (0.42, 0.45, 0.32))}
FILES = sorted(PAPER.glob("*.yaml"))


def embedded_stand_in(raw: dict) -> dict:
    """The same config with each task on embedded data, to check every other key."""
    data = copy.deepcopy(raw)
    for task in data["tasks"]:
        task.update(dataset="digits", model="logreg", model_args={}, data_dir=None)
        if task["partition"]["kind"] == "natural":
            task["partition"] = {"kind": "iid"}
    return data


def test_fifteen_paper_configs():
    names = {p.stem for p in FILES}
    assert {f"heterogeneous-{t}" for t in ("main", "higher", "lower")} <= names
    assert {f"homogeneous-{d}-m{m}" for d in EXPECTED for m in (2, 4, 6)} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_values_are_the_papers(path):
    raw = yaml.safe_load(path.read_text())
    assert raw["clients"] == {"count": 1000, "available": 300}
    assert raw["algorithm"]["first_k"] == 30
    level = {"main": 0, "higher": 1, "lower": 2}.get(path.stem.split("-")[-1], 0)
    for task in raw["tasks"]:
        lr, _, shift, exp_mean, batch, targets = EXPECTED[task["dataset"]]
        assert task["local_lr"] == lr and task["batch_size"] == batch
        assert task["local_steps"] == 27 and task["global_lr"] == 0.1
        assert task["delay"] == {"shift": shift, "exp_mean": exp_mean, "local_multi": 27}
        assert task["target_accuracy"] == targets[level]
        if task["dataset"] != "shakespeare":
            assert task["partition"] == {"kind": "dirichlet", "alpha": 0.1,
                                         "samples_per_client": 300}
    if path.stem.startswith("heterogeneous"):
        assert raw["algorithm"]["allocation"] == "dynamic"
        assert [t["requests"] for t in raw["tasks"]] == [96] * 4
    cfg = config_from_dict(embedded_stand_in(raw))
    fedast, sync = (e.config for e in plan(cfg, ["fedast", "sync"], 1))  # every override applies
    assert [t.local_lr for t in sync.tasks] == [EXPECTED[t["dataset"]][1] for t in raw["tasks"]]
    assert [t.global_lr for t in sync.tasks] == [1.0] * len(raw["tasks"])
    assert [t.global_lr for t in fedast.tasks] == [0.1] * len(raw["tasks"])
    if path.stem.startswith("heterogeneous"):
        assert [t.requests for t in sync.tasks] == [100, 84, 47, 67]
