"""The paper's models (PAPER.md §6.2): parameter counts, shapes, options, local training."""

import numpy as np
import pytest
import torch

from fedast_mpi.catalog import MODELS
from fedast_mpi.errors import ConfigError
from fedast_mpi.models import build_model, n_params
from fedast_mpi.params import FlatModel, flatten
from fedast_mpi.training import local_train

# An input shape and class count each catalog model can take.
SHAPES = {
    "logreg": ((1, 8, 8), 10),
    "mlp": ((1, 8, 8), 10),
    "paper_mlp": ((1, 28, 28), 10),
    "cnn": ((1, 8, 8), 10),
    "lenet5": ((1, 28, 28), 10),
    "cifar_cnn": ((3, 32, 32), 10),
    "lstm": ((80,), 80),
    "resnet18_gn": ((3, 32, 32), 100),
}


def _input(name, batch, gen):
    shape, n_classes = SHAPES[name]
    if name == "lstm":
        return torch.randint(0, n_classes, (batch, *shape), generator=gen, dtype=torch.int64)
    return torch.rand(batch, *shape, generator=gen)


@pytest.mark.parametrize("name,args,shape,n_classes,count", [
    ("mlp", {"hidden": [200, 200]}, (1, 28, 28), 10, 199_210),
    ("paper_mlp", {}, (1, 28, 28), 10, 199_210),
    ("lenet5", {}, (1, 28, 28), 10, 44_426),
    ("lenet5", {"logits_relu": True}, (1, 28, 28), 10, 44_426),
    ("cifar_cnn", {}, (3, 32, 32), 10, 797_962),
    ("lstm", {}, (80,), 80, 52_720),
    # avg-pool kernel 3 (stride 3) on the 4x4x512 map -> 512 features -> Linear 512 -> 100.
    ("resnet18_gn", {}, (3, 32, 32), 100, 11_220_132),
    ("resnet18_gn", {}, (3, 32, 32), 10, 11_173_962),
])
def test_param_counts(name, args, shape, n_classes, count):
    m = build_model(name, args, shape, n_classes, 0)
    assert n_params(m) == count
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert FlatModel(m).n_params == count


def test_every_catalog_entry_builds():
    assert set(SHAPES) == set(MODELS), "give every catalog model an input shape here"
    gen = torch.Generator().manual_seed(0)
    for name, (shape, n_classes) in SHAPES.items():
        m = build_model(name, {}, shape, n_classes, 0)
        assert all(p.dtype == torch.float32 for p in m.parameters())
        with torch.no_grad():
            assert m(_input(name, 2, gen)).shape == (2, n_classes)


def test_resnet_classifier_input_is_512():
    m = build_model("resnet18_gn", {}, (3, 32, 32), 100, 0)
    assert (m.linear.in_features, m.linear.out_features) == (512, 100)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    assert sum(isinstance(x, torch.nn.GroupNorm) and x.num_groups == 2 for x in m.modules()) == 20
    assert len(list(m.buffers())) == 0  # no running statistics: the flat vector is the whole model
    assert n_params(build_model("resnet18_gn", {"groups": 4}, (3, 32, 32), 100, 0)) == 11_220_132


@pytest.mark.parametrize("name", ["lenet5", "cifar_cnn", "lstm", "resnet18_gn"])
def test_deterministic_init_and_rng_untouched(name):
    shape, n_classes = SHAPES[name]
    torch.manual_seed(7)
    state = torch.random.get_rng_state()
    a = flatten(build_model(name, {}, shape, n_classes, 3))
    b = flatten(build_model(name, {}, shape, n_classes, 3))
    c = flatten(build_model(name, {}, shape, n_classes, 4))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert (a == b).all()
    assert not (a == c).all()


def test_lenet_logits_relu_option():
    plain = build_model("lenet5", {}, (1, 28, 28), 10, 1)
    relu = build_model("lenet5", {"logits_relu": True}, (1, 28, 28), 10, 1)
    assert (flatten(plain) == flatten(relu)).all()  # same weights: the option adds no parameters
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = plain(x), relu(x)
    assert (a < 0).any()
    assert (b >= 0).all()
    assert not torch.equal(a, b)
    assert torch.equal(b, a.clamp(min=0))


def test_lstm_is_stateless():
    m = build_model("lstm", {}, (80,), 80, 0)
    x = torch.randint(0, 80, (5, 80), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = m(x)
        again = m(x)
        alone = m(x[2:3])
    assert torch.equal(full, again)  # no state carried between calls
    assert torch.allclose(full[2:3], alone, atol=1e-6)  # a sample's logits ignore its batch-mates


@pytest.mark.parametrize("name", ["lstm", "lenet5"])
def test_local_train_step_runs_and_is_deterministic(name):
    shape, n_classes = SHAPES[name]
    gen = torch.Generator().manual_seed(1)
    x = _input(name, 12, gen)
    if name == "lstm":
        assert x.dtype == torch.int64 and x.shape == (12, 80)
    y = torch.randint(0, n_classes, (12,), generator=gen)
    shard = np.arange(2, 12)

    def run(seed):
        fm = FlatModel(build_model(name, {}, shape, n_classes, 0))
        base = fm.numpy()
        return local_train(fm, base, x, y, shard, steps=2, batch_size=4, lr=0.5,
                           weight_decay=1e-4, seed=seed)

    d1, loss1, n1 = run(5)
    d2, loss2, n2 = run(5)
    d3, _, _ = run(6)
    assert n1 == n2 == 10
    assert d1.dtype == np.float32 and np.isfinite(d1).all() and np.isfinite(loss1)
    assert np.abs(d1).max() > 0
    assert np.array_equal(d1, d2) and loss1 == loss2
    assert not np.array_equal(d1, d3)


@pytest.mark.parametrize("name,shape,n_classes,match", [
    ("lenet5", (3, 32, 32), 10, r"^model 'lenet5' needs \(1, 28, 28\) input, got \(3, 32, 32\)$"),
    ("lenet5", (1, 8, 8), 10, r"needs \(1, 28, 28\) input"),
    ("cifar_cnn", (1, 28, 28), 10,
     r"^model 'cifar_cnn' needs \(3, 32, 32\) input, got \(1, 28, 28\)$"),
    ("resnet18_gn", (3, 28, 28), 100, r"^model 'resnet18_gn' needs \(3, 32, 32\) input"),
    ("lstm", (1, 28, 28), 80,
     r"^model 'lstm' needs \(seq_len,\) character-index input, got \(1, 28, 28\)$"),
])
def test_wrong_input_shape(name, shape, n_classes, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_model(name, {}, shape, n_classes, 0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name,args", [
    ("lenet5", {"logits_relu": "yes"}),
    ("lstm", {"embed": 0}),
    ("lstm", {"hidden": 2.5}),
    ("resnet18_gn", {"groups": 3}),
    ("resnet18_gn", {"groups": 0}),
    ("cifar_cnn", {"hidden": 10}),
])
def test_bad_args(name, args):
    shape, n_classes = SHAPES[name]
    with pytest.raises(ConfigError) as info:
        build_model(name, args, shape, n_classes, 0)
    assert "\n" not in str(info.value)
