"""The models a task may train (catalog.MODELS), built with a deterministic initialisation."""

from typing import Mapping

import torch
from torch import nn

from fedast_mpi.catalog import MODELS
from fedast_mpi.errors import ConfigError


def _logreg(args, input_shape, n_classes) -> nn.Module:
    """Multinomial logistic regression: flatten, one linear layer."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_numel(input_shape), n_classes))


def _mlp(args, input_shape, n_classes) -> nn.Module:
    """Fully connected ReLU network with one hidden layer per `hidden` entry."""
    hidden = args["hidden"]
    hidden = [hidden] if isinstance(hidden, int) else list(hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    width = _numel(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, _positive(h, "mlp", "hidden")), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def _cnn(args, input_shape, n_classes) -> nn.Module:
    """Two 3x3 conv + ReLU + 2x2 max-pool blocks, then a ReLU hidden layer and the classifier."""
    if len(input_shape) != 3:
        raise ConfigError(f"model 'cnn' needs image input (C, H, W), got shape {tuple(input_shape)}")
    c, h, w = input_shape
    channels = list(args["channels"])
    if len(channels) != 2:
        raise ConfigError(f"model 'cnn': channels must have 2 entries, got {channels}")
    ch0, ch1 = (_positive(v, "cnn", "channels") for v in channels)
    hidden = _positive(args["hidden"], "cnn", "hidden")
    if h // 4 < 1 or w // 4 < 1:
        raise ConfigError(f"model 'cnn' needs images of at least 4x4, got shape {tuple(input_shape)}")
    return nn.Sequential(
        nn.Conv2d(c, ch0, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(ch0, ch1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(ch1 * (h // 4) * (w // 4), hidden), nn.ReLU(),
        nn.Linear(hidden, n_classes),
    )


_BUILDERS = {"logreg": _logreg, "mlp": _mlp, "cnn": _cnn}


def _numel(shape) -> int:
    """Number of features of one sample of the given shape."""
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _positive(v, model: str, key: str) -> int:
    """Check a layer width is a positive int (bool excluded)."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"model '{model}': {key} entries must be positive integers, got {v!r}")
    return v


def build_model(name: str, args: Mapping, input_shape: tuple[int, ...], n_classes: int,
                seed: int) -> nn.Module:
    """Build model `name` (catalog defaults merged under `args`) with weights fixed by `seed`.

    The global torch RNG is forked, so every rank gets the same weights for the same seed
    and the caller's random state is left untouched.
    """
    if name not in _BUILDERS or name not in MODELS:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(sorted(MODELS))})")
    unknown = set(args or {}) - set(MODELS[name].args)
    if unknown:
        raise ConfigError(f"model {name!r}: unknown argument(s) {', '.join(sorted(unknown))}")
    merged = {**MODELS[name].args, **(args or {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return _BUILDERS[name](merged, tuple(int(s) for s in input_shape), int(n_classes))


def n_params(module: nn.Module) -> int:
    """Number of trainable scalars of a module (the length of its flat vector)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
