"""A rank's view of the run's tasks: data, model and the local training of one request."""

from __future__ import annotations

import numpy as np
import torch

from fedast_mpi import seeding
from fedast_mpi.data import TaskData, load_task_data
from fedast_mpi.models import build_model
from fedast_mpi.params import FlatModel
from fedast_mpi.training import evaluate, local_train


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

    @property
    def n_params(self) -> list[int]:
        return [fm.n_params for fm in self.models]

    def initial_model(self, task: int) -> np.ndarray:
        """The task's version-0 model as a flat float32 vector."""
        return self.models[task].numpy()

    def train(self, task: int, client: int, model: np.ndarray, seed: int):
        """One request: tau local SGD steps of `client` on `task` from `model`."""
        cfg = self.cfg.tasks[task]
        data = self.data[task]
        return local_train(self.models[task], model, data.train_x, data.train_y,
                           data.shards[client], steps=cfg.local_steps,
                           batch_size=cfg.batch_size, lr=cfg.local_lr,
                           weight_decay=cfg.weight_decay, seed=seed)

    def evaluate(self, task: int, model: np.ndarray) -> tuple[float, float]:
        """(accuracy, mean loss) of `model` on the task's test set."""
        data = self.data[task]
        return evaluate(self.models[task], model, data.test_x, data.test_y)

    def weight_mask(self, task: int) -> np.ndarray:
        """True for the flat coordinates of non-bias parameters (the code variant's estimate)."""
        parts = [np.full(p.numel(), "bias" not in name, bool)
                 for name, p in self.models[task].module.named_parameters() if p.requires_grad]
        return np.concatenate(parts)

    def n_samples(self) -> np.ndarray:
        """Samples per client and task (clients × tasks), for the run file."""
        return np.array([[len(d.shards[c]) for d in self.data]
                         for c in range(self.cfg.clients.count)], np.int32)
