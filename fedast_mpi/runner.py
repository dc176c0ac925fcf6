"""A rank's view of the run's tasks: data, model and the local training of one request."""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch

from fedast_mpi import seeding
from fedast_mpi.data import (Source, TaskData, forget_parsed, load_source, partition,
                             partition_key, source_key)
from fedast_mpi.models import build_model
from fedast_mpi.params import FlatModel
from fedast_mpi.batched import batchable, local_train_batch
from fedast_mpi.training import evaluate, evaluate_chunk, local_train


def holdings(rank: int, world_size: int, workers_evaluate: bool) -> dict[str, bool]:
    """What a rank's TaskRunner holds (`train`, `test` keyword arguments), by its role.

    -n 1: everything (rank 0 trains and evaluates in-process). Otherwise rank 0 only
    aggregates: no training data, and test sets only when it evaluates itself; a worker
    holds the training data, and the test sets when evaluations run on the workers.
    """
    if world_size == 1:
        return {"train": True, "test": True}
    if rank == 0:
        return {"train": False, "test": not workers_evaluate}
    return {"train": True, "test": workers_evaluate}


Placed = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""(train_x, train_y, test_x, test_y) of one source on a rank's device."""


class TaskRunner:
    """Holds every task's model and the data this rank uses, and trains requests.

    Any rank builds the same data, shards and initial models from the config
    and seed, so any worker can run any request with the same result. `train` and
    `test` say whether the training sets (and the client shards) and the test sets are
    kept (`holdings`); the models, the clients' sample counts and the test-set sizes
    always are. Tasks reading the same source (`fedast_mpi.data.source_key`) share one
    set of tensors on the device, and tasks partitioning it alike one set of shards.
    """

    def __init__(self, cfg, device: torch.device | str = "cpu", *, train: bool = True,
                 test: bool = True):
        self.cfg = cfg
        self.device = torch.device(device)
        self.trains, self.tests = train, test
        self.data: list[TaskData] = []
        self.models: list[FlatModel] = []
        self._n_samples: list[list[int]] = []
        self._n_test: list[int] = []
        n_clients, seed = cfg.clients.count, cfg.run.seed
        sources: dict[str, Source] = {}  # read or drawn once per source
        placed: dict[str, Placed] = {}  # on the device once per source
        shards_of: dict[tuple[str, str], tuple[np.ndarray, ...]] = {}  # identical tasks: once
        for index, task in enumerate(cfg.tasks):
            key = source_key(task, n_clients, seed)
            if key not in sources:
                sources[key] = load_source(task, n_clients, seed)
                placed[key] = self._place(sources[key])
            source = sources[key]
            part = (key, partition_key(task))
            if part not in shards_of:
                shards_of[part] = partition(task, source, n_clients, seed)
            shards = shards_of[part]
            self._n_samples.append([len(s) for s in shards])
            self._n_test.append(len(source.test_y))
            self.data.append(TaskData(*placed[key], shards if train else (),
                                      source.input_shape, source.n_classes))
            module = build_model(task.model, task.model_args, source.input_shape,
                                 source.n_classes,
                                 seed=seeding.int_seed(cfg.run.seed, seeding.MODEL_INIT,
                                                     task.streams(index)))
            if self.device.type != "cpu":
                module = module.to(self.device)
            self.models.append(FlatModel(module))
        sources.clear()
        forget_parsed()  # what is not placed (on a GPU: its host copy too) is freed by return
        self.batchable = [batchable(fm.module) for fm in self.models]
        self.on_step: Callable[[], None] | None = None
        """Called between local SGD steps (a worker serves evaluation chunks there)."""
        self._eval_models: dict[int, FlatModel] = {}

    @classmethod
    def for_rank(cls, cfg, device: torch.device | str, rank: int, world_size: int,
                 workers_evaluate: bool) -> TaskRunner:
        """The runner of `rank`, holding what its role uses (`holdings`)."""
        return cls(cfg, device, **holdings(rank, world_size, workers_evaluate))

    def _place(self, source: Source) -> Placed:
        """(train_x, train_y, test_x, test_y) of a source on the device; a part not held is
        an empty tensor of its dtype and sample shape."""
        def put(a: np.ndarray, keep: bool) -> torch.Tensor:
            t = torch.from_numpy(a if keep else np.empty((0, *a.shape[1:]), a.dtype))
            return t if self.device.type == "cpu" else t.to(self.device)
        return (put(source.train_x, self.trains), put(source.train_y, self.trains),
                put(source.test_x, self.tests), put(source.test_y, self.tests))

    @property
    def n_params(self) -> list[int]:
        return [fm.n_params for fm in self.models]

    def resident(self, model: np.ndarray):
        """A received model version, kept where training reads it: on a GPU it is copied
        there once, not once per request; on the CPU it is the same memory."""
        t = torch.from_numpy(model)
        return t if self.device.type == "cpu" else t.to(self.device)

    def initial_model(self, task: int) -> np.ndarray:
        """The task's version-0 model as a flat float32 vector."""
        return self.models[task].numpy()

    def train(self, task: int, client: int, model: np.ndarray, seed: int,
              out: np.ndarray | None = None):
        """One request: tau local SGD steps of `client` on `task` from `model`."""
        cfg = self.cfg.tasks[task]
        data = self._train_data(task)
        return local_train(self.models[task], model, data.train_x, data.train_y,
                           data.shards[client], steps=cfg.local_steps,
                           batch_size=cfg.batch_size, lr=cfg.local_lr,
                           weight_decay=cfg.weight_decay, seed=seed, out=out,
                           on_step=self.on_step)

    def train_group(self, task: int, items: list[tuple[int, np.ndarray, int]],
                    outs: list | None = None) -> list[tuple[np.ndarray, float, int]]:
        """Requests (client, model, seed) of one task, batched with vmap when the model allows.

        A model vmap can't train well (fedast_mpi.batched.batchable) runs them one at a
        time: the grouping still decides which requests go together, nothing else.
        """
        if len(items) == 1 or not self.batchable[task]:
            outs = outs or [None] * len(items)
            return [self.train(task, c, m, s, o) for (c, m, s), o in zip(items, outs)]
        cfg = self.cfg.tasks[task]
        data = self._train_data(task)
        return local_train_batch(self.models[task], [m for _, m, _ in items], data.train_x,
                                 data.train_y, [data.shards[c] for c, _, _ in items],
                                 [s for _, _, s in items], steps=cfg.local_steps,
                                 batch_size=cfg.batch_size, lr=cfg.local_lr,
                                 weight_decay=cfg.weight_decay, outs=outs,
                                 on_step=self.on_step)

    def evaluate(self, task: int, model: np.ndarray) -> tuple[float, float]:
        """(accuracy, mean loss) of `model` on the task's test set."""
        data = self._test_data(task)
        return evaluate(self.models[task], model, data.test_x, data.test_y)

    def n_test(self, task: int) -> int:
        """Test samples of the task (held or not)."""
        return self._n_test[task]

    def evaluate_chunk(self, task: int, model, chunk: int) -> tuple[float, float]:
        """(correct, summed loss) of one test chunk, on a copy of the task's module: a
        worker may evaluate between the steps of a training that holds the original."""
        fm = self._eval_models.get(task)
        if fm is None:
            fm = self._eval_models[task] = FlatModel(copy.deepcopy(self.models[task].module))
        data = self._test_data(task)
        return evaluate_chunk(fm, model, data.test_x, data.test_y, chunk)

    def weight_mask(self, task: int) -> np.ndarray:
        """True for the flat coordinates of non-bias parameters (the code variant's estimate)."""
        parts = [np.full(p.numel(), "bias" not in name, bool)
                 for name, p in self.models[task].module.named_parameters() if p.requires_grad]
        return np.concatenate(parts)

    def n_samples(self) -> np.ndarray:
        """Samples per client and task (clients × tasks), for the run file."""
        return np.array(self._n_samples, np.int32).T.copy()

    def _train_data(self, task: int) -> TaskData:
        if not self.trains:
            raise RuntimeError("this TaskRunner holds no training data (built with train=False)")
        return self.data[task]

    def _test_data(self, task: int) -> TaskData:
        if not self.tests:
            raise RuntimeError("this TaskRunner holds no test sets (built with test=False)")
        return self.data[task]
