"""A rank's view of the run's tasks: data, model and the local training of one request."""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch

from fedast_mpi import seeding
from fedast_mpi.data import TaskData, load_task_data
from fedast_mpi.models import build_model
from fedast_mpi.params import FlatModel
from fedast_mpi.batched import batchable, local_train_batch
from fedast_mpi.training import evaluate, evaluate_chunk, local_train


class TaskRunner:
    """Holds every task's data and model on this rank's device and trains requests.

    Any rank builds the same data, shards and initial models from the config
    and seed, so any worker can run any request with the same result.
    """

    def __init__(self, cfg, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.data: list[TaskData] = []
        self.models: list[FlatModel] = []
        n_clients = cfg.clients.count
        for index, task in enumerate(cfg.tasks):
            data = load_task_data(task, n_clients, cfg.run.seed)
            module = build_model(task.model, task.model_args, data.input_shape, data.n_classes,
                                 seed=seeding.int_seed(cfg.run.seed, seeding.MODEL_INIT, index))
            if self.device.type != "cpu":
                data = TaskData(data.train_x.to(self.device), data.train_y.to(self.device),
                                data.test_x.to(self.device), data.test_y.to(self.device),
                                data.shards, data.input_shape, data.n_classes)
                module = module.to(self.device)
            self.data.append(data)
            self.models.append(FlatModel(module))
        self.batchable = [batchable(fm.module) for fm in self.models]
        self.on_step: Callable[[], None] | None = None
        """Called between local SGD steps (a worker serves evaluation chunks there)."""
        self._eval_models: dict[int, FlatModel] = {}

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
        data = self.data[task]
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
        data = self.data[task]
        return local_train_batch(self.models[task], [m for _, m, _ in items], data.train_x,
                                 data.train_y, [data.shards[c] for c, _, _ in items],
                                 [s for _, _, s in items], steps=cfg.local_steps,
                                 batch_size=cfg.batch_size, lr=cfg.local_lr,
                                 weight_decay=cfg.weight_decay, outs=outs,
                                 on_step=self.on_step)

    def evaluate(self, task: int, model: np.ndarray) -> tuple[float, float]:
        """(accuracy, mean loss) of `model` on the task's test set."""
        data = self.data[task]
        return evaluate(self.models[task], model, data.test_x, data.test_y)

    def n_test(self, task: int) -> int:
        return len(self.data[task].test_y)

    def evaluate_chunk(self, task: int, model, chunk: int) -> tuple[float, float]:
        """(correct, summed loss) of one test chunk, on a copy of the task's module: a
        worker may evaluate between the steps of a training that holds the original."""
        fm = self._eval_models.get(task)
        if fm is None:
            fm = self._eval_models[task] = FlatModel(copy.deepcopy(self.models[task].module))
        data = self.data[task]
        return evaluate_chunk(fm, model, data.test_x, data.test_y, chunk)

    def weight_mask(self, task: int) -> np.ndarray:
        """True for the flat coordinates of non-bias parameters (the code variant's estimate)."""
        parts = [np.full(p.numel(), "bias" not in name, bool)
                 for name, p in self.models[task].module.named_parameters() if p.requires_grad]
        return np.concatenate(parts)

    def n_samples(self) -> np.ndarray:
        """Samples per client and task (clients × tasks), for the run file."""
        return np.array([[len(d.shards[c]) for d in self.data]
                         for c in range(self.cfg.clients.count)], np.int32)
