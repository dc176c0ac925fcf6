"""Tests of the model catalog: shapes, parameter counts, deterministic initialisation."""

import pytest
import torch

from fedast_mpi.catalog import MODELS
from fedast_mpi.errors import ConfigError
from fedast_mpi.models import build_model, n_params
from fedast_mpi.params import flatten


def test_catalog_in_step():
    """Every catalog model builds on the input it is made for (the paper's fixed shapes)."""
    shapes = {"lenet5": ((1, 28, 28), 10), "cifar_cnn": ((3, 32, 32), 10),
              "lstm": ((80,), 80), "resnet18_gn": ((3, 32, 32), 100)}
    for name in MODELS:
        shape, classes = shapes.get(name, ((1, 8, 8), 10))
        build_model(name, {}, shape, classes, 0)


def test_param_counts():
    assert n_params(build_model("logreg", {}, (1, 8, 8), 10, 0)) == 650
    assert n_params(build_model("logreg", {}, (60,), 10, 0)) == 610
    # mlp: 64 -> 64 -> 10 (default) and 64 -> 32 -> 16 -> 10
    assert n_params(build_model("mlp", {}, (1, 8, 8), 10, 0)) == 64 * 64 + 64 + 64 * 10 + 10
    assert n_params(build_model("mlp", {"hidden": [32, 16]}, (1, 8, 8), 10, 0)) == \
        64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert n_params(build_model("mlp", {"hidden": []}, (1, 8, 8), 10, 0)) == 650

    def cnn(c, h, w, ch0, ch1, hidden, k):
        return (c * 9 * ch0 + ch0) + (ch0 * 9 * ch1 + ch1) \
            + (ch1 * (h // 4) * (w // 4) * hidden + hidden) + hidden * k + k
    assert n_params(build_model("cnn", {}, (1, 8, 8), 10, 0)) == cnn(1, 8, 8, 16, 32, 64, 10)
    assert n_params(build_model("cnn", {"channels": [4, 8], "hidden": 20}, (3, 12, 10), 7, 0)) == \
        cnn(3, 12, 10, 4, 8, 20, 7)


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
def test_output_shape(name):
    m = build_model(name, {}, (1, 8, 8), 10, 0)
    assert m(torch.rand(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
def test_deterministic_init_and_rng_untouched(name):
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = flatten(build_model(name, {}, (1, 8, 8), 10, 5))
    b = flatten(build_model(name, {}, (1, 8, 8), 10, 5))
    c = flatten(build_model(name, {}, (1, 8, 8), 10, 6))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert (a == b).all()
    assert not (a == c).all()


def test_errors():
    with pytest.raises(ConfigError, match="needs image input"):
        build_model("cnn", {}, (64,), 10, 0)
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("resnet", {}, (1, 8, 8), 10, 0)
    with pytest.raises(ConfigError):
        build_model("mlp", {"width": 3}, (1, 8, 8), 10, 0)
