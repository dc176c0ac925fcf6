"""Plugins for tests/test_plugins.py, imported by path (`fedast_test_plugins:...`).

Not part of the package: the tests put this directory on PYTHONPATH, as a user would.
"""

import numpy as np
import torch
from torch import nn

from fedast_mpi.plugins import PluginData


def tiny_net(input_shape, num_classes, hidden=8):
    """A one-hidden-layer MLP."""
    width = int(np.prod(input_shape))
    return nn.Sequential(nn.Flatten(), nn.Linear(width, hidden), nn.Tanh(),
                         nn.Linear(hidden, num_classes))


def blobs(n_clients, seed, dim=6, classes=3, per_client=12, test=60):
    """Gaussian blobs: one client holds `per_client` samples of mostly one class (its natural
    partition)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 2.0, (classes, dim))

    def draw(labels):
        return (centres[labels] + rng.normal(0.0, 1.0, (len(labels), dim))).astype(np.float32)

    y_train = np.concatenate([np.full(per_client, k % classes) for k in range(n_clients)])
    y_test = rng.integers(0, classes, test)
    clients = [np.arange(k * per_client, (k + 1) * per_client) for k in range(n_clients)]
    return PluginData(draw(y_train), y_train, torch.from_numpy(draw(y_test)), y_test,
                      clients=clients, n_classes=classes)


def as_dict(n_clients, seed, **args):
    """The same data as a plain mapping."""
    d = blobs(n_clients, seed, **args)
    return {"x_train": d.x_train, "y_train": d.y_train, "x_test": d.x_test,
            "y_test": d.y_test}


NOT_CALLABLE = 42


def not_data(n_clients, seed):
    """A dataset plugin returning the wrong type."""
    return [n_clients, seed]
