"""The models a task may train (catalog.MODELS), built with a deterministic initialisation."""

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fedast_mpi.catalog import MODELS
from fedast_mpi.errors import ConfigError
from fedast_mpi.plugins import is_plugin, resolve


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
        raise ConfigError(f"model 'cnn' needs image input (C, H, W), "
                          f"got shape {tuple(input_shape)}")
    c, h, w = input_shape
    channels = list(args["channels"])
    if len(channels) != 2:
        raise ConfigError(f"model 'cnn': channels must have 2 entries, got {channels}")
    ch0, ch1 = (_positive(v, "cnn", "channels") for v in channels)
    hidden = _positive(args["hidden"], "cnn", "hidden")
    if h // 4 < 1 or w // 4 < 1:
        raise ConfigError(f"model 'cnn' needs images of at least 4x4, "
                          f"got shape {tuple(input_shape)}")
    return nn.Sequential(
        nn.Conv2d(c, ch0, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(ch0, ch1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(ch1 * (h // 4) * (w // 4), hidden), nn.ReLU(),
        nn.Linear(hidden, n_classes),
    )


def _lenet5(args, input_shape, n_classes) -> nn.Module:
    """LeNet-5 for 28x28 grey images (PAPER.md §6.2, Fashion-MNIST): 44,426 parameters for 10
    classes.

    Conv(1->6, 5) ReLU MaxPool2, Conv(6->16, 5) ReLU MaxPool2, flatten 256, Linear 120 ReLU,
    Linear 84 ReLU, Linear n_classes; no padding.

    `logits_relu` (default False) decides PAPER.md §8 quirk 5: the authors' code applies a ReLU to
    the logits, which clips every negative logit to 0 (ties at 0 in the argmax, no gradient
    through negative logits). The default is the standard LeNet-5 (plain linear logits); set
    `logits_relu: true` to reproduce the authors' network exactly.
    """
    _need_shape("lenet5", input_shape, (1, 28, 28))
    relu_logits = _flag(args["logits_relu"], "lenet5", "logits_relu")
    layers: list[nn.Module] = [
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, n_classes),
    ]
    if relu_logits:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _cifar_cnn(args, input_shape, n_classes) -> nn.Module:
    """The FedDyn CIFAR-10 CNN (PAPER.md §6.2): 797,962 parameters for 10 classes.

    Conv(3->64, 5) ReLU MaxPool2, Conv(64->64, 5) ReLU MaxPool2, flatten 1600, Linear 384 ReLU,
    Linear 192 ReLU, Linear n_classes; no padding.
    """
    _need_shape("cifar_cnn", input_shape, (3, 32, 32))
    return nn.Sequential(
        nn.Conv2d(3, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 5 * 5, 384), nn.ReLU(),
        nn.Linear(384, 192), nn.ReLU(),
        nn.Linear(192, n_classes),
    )


class CharLSTM(nn.Module):
    """Next-character LSTM (PAPER.md §6.2, Shakespeare): 52,720 parameters for 80 classes.

    Embedding(n_classes, embed) -> 1-layer LSTM(embed -> hidden, batch_first) -> Linear(hidden ->
    n_classes) on the last time step. Input: character indices of shape (batch, seq_len), of
    any integer dtype (the data is stored as uint8, `fedast_mpi.data.leaf`; a batch is widened
    to int64 here, for the embedding); the vocabulary is the label set (LEAF Shakespeare: 80
    characters for both).

    Decision (PAPER.md §6.2 / §8 quirk 9): the authors carry the detached (h, c) state from one
    mini-batch to the next within a local training and across test batches. Here every forward
    starts from a zero state, so the module is stateless: a training request's result depends
    only on its own inputs (base model, shard, seed), never on which requests a worker ran
    before, and evaluation does not depend on batch order or size.
    """

    def __init__(self, vocab: int, embed: int, hidden: int, n_classes: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=1, batch_first=True)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(x.long()))  # per batch; zero initial (h, c)
        return self.fc(out[:, -1, :])


def _lstm(args, input_shape, n_classes) -> nn.Module:
    """Character LSTM on (seq_len,) index input; see CharLSTM."""
    if len(input_shape) != 1 or input_shape[0] < 1:
        raise ConfigError(f"model 'lstm' needs (seq_len,) character-index input, "
                          f"got {tuple(input_shape)}")
    embed = _positive(args["embed"], "lstm", "embed")
    hidden = _positive(args["hidden"], "lstm", "hidden")
    return CharLSTM(n_classes, embed, hidden, n_classes)


class _GNBasicBlock(nn.Module):
    """ResNet BasicBlock with GroupNorm; 1x1 conv + GroupNorm shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(groups, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(groups, planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.GroupNorm(groups, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.gn1(self.conv1(x)))
        out = self.gn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18GN(nn.Module):
    """CIFAR-style ResNet-18 with GroupNorm (PAPER.md §6.2, CIFAR-100; the authors' second `Net`).

    3x3 stem conv 64 stride 1 (no bias) + GroupNorm + ReLU, BasicBlocks [2, 2, 2, 2] with widths
    64/128/256/512 (strides 1/2/2/2), avg-pool kernel 3, Linear 512 -> n_classes.

    Decision on the pooling: as in the authors' code, `F.avg_pool2d(out, 3)` (stride = kernel = 3)
    on the 4x4x512 map of a 32x32 input gives a 1x1x512 map (it averages the top-left 3x3 window
    and ignores the last row and column), so the classifier's input is 512, matching the paper's
    "Linear 512 -> 100". 11,220,132 parameters for 100 classes (11,173,962 for 10); GroupNorm's
    affine weight and bias are the only normalisation parameters (no running statistics).
    The authors' random-crop/flip training augmentation is not part of the model.
    """

    def __init__(self, n_classes: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(groups, 64)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(_GNBasicBlock(in_planes, planes, stride, groups),
                                        _GNBasicBlock(planes, planes, 1, groups)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.gn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 3)
        return self.linear(out.flatten(1))


def _resnet18_gn(args, input_shape, n_classes) -> nn.Module:
    """ResNet-18 with GroupNorm on (3, 32, 32) images; see ResNet18GN."""
    _need_shape("resnet18_gn", input_shape, (3, 32, 32))
    groups = _positive(args["groups"], "resnet18_gn", "groups")
    if 64 % groups:
        raise ConfigError(f"model 'resnet18_gn': groups must divide 64, got {groups}")
    return ResNet18GN(n_classes, groups)


_BUILDERS = {"logreg": _logreg, "mlp": _mlp, "paper_mlp": _mlp, "cnn": _cnn, "lenet5": _lenet5,
             "cifar_cnn": _cifar_cnn, "lstm": _lstm, "resnet18_gn": _resnet18_gn}


def _numel(shape) -> int:
    """Number of features of one sample of the given shape."""
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _need_shape(model: str, input_shape, want: tuple[int, ...]) -> None:
    """Reject an input shape the model's fixed layer sizes cannot take (one-line ConfigError)."""
    if tuple(input_shape) != want:
        raise ConfigError(f"model {model!r} needs {want} input, got {tuple(input_shape)}")


def _flag(v, model: str, key: str) -> bool:
    """Check a model option is a bool."""
    if not isinstance(v, bool):
        raise ConfigError(f"model '{model}': {key} must be true or false, got {v!r}")
    return v


def _positive(v, model: str, key: str) -> int:
    """Check a layer width is a positive int (bool excluded)."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"model '{model}': {key} entries must be positive integers, got {v!r}")
    return v


def build_model(name: str, args: Mapping, input_shape: tuple[int, ...], n_classes: int,
                seed: int) -> nn.Module:
    """Build model `name` (catalog defaults merged under `args`) with weights fixed by `seed`.

    A name `module:attr` is a plugin (`fedast_mpi.plugins`): `attr(input_shape=...,
    num_classes=..., **args)`, args passed as they are.

    The global torch RNG is forked, so every rank gets the same weights for the same seed
    and the caller's random state is left untouched.
    """
    if is_plugin(name):
        make = resolve(name, "model")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            module = make(input_shape=tuple(int(s) for s in input_shape),
                          num_classes=int(n_classes), **dict(args or {}))
        if not isinstance(module, nn.Module):
            raise ConfigError(f"model {name!r} returned a {type(module).__name__}, "
                              f"not a torch nn.Module")
        return module.float()
    if name not in _BUILDERS or name not in MODELS:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(sorted(MODELS))})")
    unknown = set(args or {}) - set(MODELS[name].args)
    if unknown:
        raise ConfigError(f"model {name!r}: unknown argument(s) {', '.join(sorted(unknown))}")
    merged = {**MODELS[name].args, **(args or {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        module = _BUILDERS[name](merged, tuple(int(s) for s in input_shape), int(n_classes))
    # FlatModel needs float32 parameters (a no-op under torch's default dtype)
    return module.float()


def n_params(module: nn.Module) -> int:
    """Number of trainable scalars of a module (the length of its flat vector)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def count_params(name: str, args: Mapping, input_shape: tuple[int, ...], n_classes: int) -> int:
    """Trainable parameters of model `name`, built on the meta device (no memory, no data)."""
    with torch.device("meta"):
        module = build_model(name, args, input_shape, n_classes, seed=0)
    return n_params(module)


def describe_network(task) -> list[str]:
    """Lines for `fedast-mpi validate`: the network a task gets and its parameter count
    (counted on the meta device: no data read, no weights allocated), plus a note when a
    `mlp` on MNIST/Fashion-MNIST is not the paper's MLP. A catalog model that cannot take the
    dataset's input raises its ConfigError."""
    from fedast_mpi.catalog import PAPER_MODELS
    from fedast_mpi.data import shape_of

    shape = shape_of(task)
    head = f"  task {task.name}: model {task.model}"
    if shape is None:
        lines = [f"{head} on plugin dataset {task.dataset}: parameters known once its data "
                 f"is loaded"]
    else:
        input_shape, n_classes = shape
        try:
            n: int | None = count_params(task.model, task.model_args, input_shape, n_classes)
        except ConfigError as exc:
            raise ConfigError(f"task {task.name!r}: {exc}") from None
        except Exception as exc:  # a plugin model that cannot be built on the meta device
            if not is_plugin(task.model):
                raise
            n = None
            why = " ".join(str(exc).split())[:80]
            lines = [f"{head}: parameters unknown (not buildable on the meta device: "
                     f"{type(exc).__name__}: {why})"]
        if n is not None:
            paper = " (the paper's network for this dataset)" \
                if PAPER_MODELS.get(task.dataset) == task.model else ""
            lines = [f"{head}, {n:,} parameters, input {tuple(input_shape)}, "
                     f"{n_classes} classes{paper}"]
    if task.model == "mlp" and task.dataset in ("mnist", "fmnist") \
            and list(task.model_args.get("hidden", ())) != list(MODELS["paper_mlp"].args["hidden"]):
        paper_n = count_params("paper_mlp", {}, (1, 28, 28), 10)
        lines.append(f"  note: task {task.name}: model 'mlp' with hidden "
                     f"{list(task.model_args.get('hidden', ()))} is not the paper's MLP; that "
                     f"is model 'paper_mlp' (784-200-200-10, {paper_n:,} parameters)"
                     + ("" if task.dataset == "mnist" else
                        "; the paper trains 'lenet5' on fmnist"))
    return lines
