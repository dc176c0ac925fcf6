"""The paper's result tables, as data: which config reproduces each row and what the paper
measured (PAPER.md §7.1, §7.3). `fedast-mpi reproduce` runs a table and writes its measured
numbers beside these.

Times are simulated time units, means of the paper's 3 Monte Carlo runs. In the homogeneous
rows (Fig. 5) the paper's figure is "the mean training time to attain the target"; whether that is
the last of the M copies or their mean is not stated (PAPER.md §5.6 [NF]), so the reproduction
reports both. Gains are the paper's two-decimal values (Fig. 15).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

SYNC = "sync"
FEDAST = "fedast"


@dataclasses.dataclass(frozen=True)
class PaperRow:
    """One row of a paper table: a config in configs/paper and the paper's numbers."""

    key: str  # "m2": the row's directory under the reproduction's --out
    label: str
    config: str  # file name in configs/paper
    time: Mapping[str, float]  # algorithm -> the paper's time (completion or mean, see above)
    gain: float  # the paper's gain of FedAST over Sync-ST, %
    task_times: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    """algorithm -> task name -> the paper's time to target (heterogeneous rows)."""


@dataclasses.dataclass(frozen=True)
class PaperTable:
    """A named table: its rows, the algorithms they compare and where the paper has them."""

    name: str
    title: str
    source: str
    rows: tuple[PaperRow, ...]
    algorithms: tuple[str, ...] = (FEDAST, SYNC)

    def row(self, key: str) -> PaperRow:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(key)


def _homogeneous(dataset: str, label: str, numbers: Mapping[int, tuple[float, float, float]]
                 ) -> PaperTable:
    rows = tuple(PaperRow(f"m{m}", f"{label}, M = {m}", f"homogeneous-{dataset}-m{m}.yaml",
                          {FEDAST: fed, SYNC: sync}, gain)
                 for m, (fed, sync, gain) in numbers.items())
    return PaperTable(f"fig5-{dataset}", f"{label}: M identical tasks, FedAST vs Sync-ST (k = 30)",
                      "Fig. 5 (gains: Fig. 15); PAPER.md §7.1", rows)


def _heterogeneous(name: str, which: str, figure: str, fed: dict[str, float],
                   sync: dict[str, float], gain: float) -> PaperTable:
    row = PaperRow(which, f"4 tasks, {which} targets", f"heterogeneous-{which}.yaml",
                   {FEDAST: fed["cifar10"], SYNC: sync["cifar10"]}, gain,
                   {FEDAST: fed, SYNC: sync})
    return PaperTable(name, f"MNIST, Fashion-MNIST, CIFAR-10 and Shakespeare at once "
                      f"({which} targets), FedAST (dynamic) vs Sync-ST", f"{figure}; PAPER.md §7.3",
                      (row,))


def _tasks(mnist: float, shakespeare: float, fmnist: float, cifar10: float) -> dict[str, float]:
    return {"mnist": mnist, "shakespeare": shakespeare, "fmnist": fmnist, "cifar10": cifar10}


TABLES: dict[str, PaperTable] = {t.name: t for t in (
    _homogeneous("fmnist", "Fashion-MNIST", {2: (383.1, 534.1, 28.26), 4: (640.3, 813.5, 21.29),
                                             6: (673.7, 1149.8, 41.40)}),
    _homogeneous("mnist", "MNIST", {2: (68.2, 71.9, 5.15), 4: (104.2, 113.0, 7.77),
                                    6: (125.5, 159.5, 21.36)}),
    _homogeneous("cifar10", "CIFAR-10", {2: (675.6, 871.7, 22.50), 4: (964.0, 1273.7, 24.32),
                                         6: (1012.0, 1744.3, 41.98)}),
    _homogeneous("shakespeare", "Shakespeare", {2: (239.6, 242.9, 1.35),
                                                4: (283.7, 376.8, 24.70),
                                                6: (299.0, 554.0, 46.03)}),
    _heterogeneous("fig7", "main", "Fig. 7", _tasks(98.5, 354.6, 402.6, 619.0),
                   _tasks(326.6, 351.6, 742.7, 1033.0), 40.1),
    _heterogeneous("fig18", "higher", "Fig. 18", _tasks(469.9, 723.5, 933.1, 975.8),
                   _tasks(1256.2, 713.5, 1826.7, 2212.5), 55.9),
    _heterogeneous("fig20", "lower", "Fig. 20", _tasks(19.0, 61.4, 108.5, 293.2),
                   _tasks(85.3, 70.4, 185.8, 350.2), 16.3),
)}
"""Every table `fedast-mpi reproduce` knows, by name."""
