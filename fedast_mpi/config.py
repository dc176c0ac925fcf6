"""The job configuration: YAML loaded into typed, frozen dataclasses (SPEC §7).

Every section checks itself at construction; a bad key or value raises
`ConfigError` with a one-line message that starts with the dotted key, e.g.
``tasks.1.buffer_size: 50 exceeds tasks.1.requests (20)``. Every number is finite and
within the documented `Limits` of its key (the seed within 32 bits, rates within float32),
so a config that validates runs as written. YAML is read with `UniqueKeyLoader`, which
refuses a key given twice instead of keeping the last.

Loading resolves derived values (per-task requests from `algorithm.total_requests`,
buffer sizes from `algorithm.r_to_b`, dataset and model argument defaults), so the
`Config` a run sees, and the one `to_yaml` writes next to its results, holds only
concrete values: ``config_from_dict(yaml.safe_load(to_yaml(c))) == c``.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import importlib.resources
import math
import os
import types
import typing
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping, Sequence

import yaml

from fedast_mpi import catalog, registry
from fedast_mpi.errors import ConfigError

ALLOCATIONS: tuple[str, ...] = ("static", "dynamic")
"""Values of `algorithm.allocation` this version runs."""

DEFAULT_CONFIG = "configs/default.yaml"
"""The embedded default job, relative to the `fedast_mpi` package."""


# --------------------------------------------------------------------------- errors


class _KeyError(ConfigError):
    """A ConfigError about one key, relative to the section that raised it.

    The parent section that built the raising one prefixes its own key, so the
    message that reaches the user names the full dotted key. `detail` may hold
    ``{p}``, replaced by the key's parent path, to name sibling keys.
    """

    def __init__(self, key: str, detail: str):
        self.key = key
        self.detail = detail
        parent = key.rpartition(".")[0]
        text = detail.replace("{p}", parent + "." if parent else "")
        super().__init__(f"{key}: {text}" if key else text)

    def prefixed(self, prefix: str) -> "_KeyError":
        return _KeyError(f"{prefix}.{self.key}" if self.key else prefix, self.detail)


def _fail(key: str, detail: str) -> typing.NoReturn:
    raise _KeyError(key, detail)


class _prefix:
    """Context manager: re-raise a _KeyError from inside with `prefix.` added."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ, exc, tb) -> Literal[False]:
        if isinstance(exc, _KeyError):
            raise exc.prefixed(self.prefix) from None
        return False


def _show(value: Any) -> str:
    """A short repr of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- coercion


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(key, f"expected an integer, got {_show(value)}")
    return int(value)


def _as_float(key: str, value: Any, *, allow_inf: bool = False) -> float:
    if isinstance(value, bool):
        _fail(key, f"expected a number, got {_show(value)}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            _fail(key, f"expected a number, got {_show(value)}")
    else:
        _fail(key, f"expected a number, got {_show(value)}")
    if math.isnan(number) or (math.isinf(number) and not allow_inf):
        _fail(key, f"expected a finite number, got {_show(value)}")
    return number


def _as_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        _fail(key, f"expected a string, got {_show(value)}")
    return value


def _coerce(key: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    """Check `value` against the type hint of one field; returns the stored value."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, hint, meta)
    if value is None and meta.get("none_is_inf"):
        return math.inf
    if origin is Literal:
        if not isinstance(value, str) or value not in args:
            _fail(key, f"expected one of {', '.join(args)}; got {_show(value)}")
        return value
    if hint is int:
        return _as_int(key, value)
    if hint is float:
        return _as_float(key, value, allow_inf=bool(meta.get("none_is_inf")))
    if hint is str:
        return _as_str(key, value)
    if hint is bool:
        if not isinstance(value, bool):
            _fail(key, f"expected true or false, got {_show(value)}")
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            _fail(key, f"expected a mapping, got {_show(value)}")
        with _prefix(key):
            return _build(hint, value)
    if origin is tuple:  # tuple[Section, ...]
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            _fail(key, f"expected a list, got {_show(value)}")
        return tuple(_coerce(f"{key}.{i}", item, args[0], {}) for i, item in enumerate(value))
    if origin in (collections.abc.Mapping, dict) or hint is Mapping:
        if not isinstance(value, Mapping):
            _fail(key, f"expected a mapping, got {_show(value)}")
        return value  # checked by the owning section against the catalog
    raise TypeError(f"config field {key} has an unsupported type {hint!r}")


def _build(cls: type, data: Mapping[str, Any]) -> Any:
    """Construct section `cls` from a mapping, rejecting unknown and missing keys."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            _fail(str(key), f"unknown key (known: {', '.join(names)})")
    for f in dataclasses.fields(cls):
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and f.name not in data:
            _fail(f.name, "required key missing")
    return cls(**data)


def _arg_value(key: str, value: Any, default: Any, limits: "Limits") -> Any:
    """`value` checked against the type of a catalog default (lists element-wise); a float
    also against `limits`."""
    if isinstance(default, bool):
        return _coerce(key, value, bool, {})
    if isinstance(default, int):
        return _as_int(key, value)
    if isinstance(default, float):
        number = _as_float(key, value)
        limits.check(key, number)
        return number
    if isinstance(default, str):
        return _as_str(key, value)
    if isinstance(default, (list, tuple)):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            _fail(key, f"expected a list, got {_show(value)}")
        if not default:
            return tuple(value)
        return tuple(_arg_value(f"{key}.{i}", v, default[0], limits)
                     for i, v in enumerate(value))
    return value


def _check_args(key: str, given: Mapping[str, Any], defaults: Mapping[str, Any],
                owner: str) -> Mapping[str, Any]:
    """Merge `given` over catalog `defaults` of dataset or model `owner`, each value of its
    default's type (a float within `_ARG_LIMITS`)."""
    for name in given:
        if name not in defaults:
            known = ", ".join(defaults) if defaults else "none"
            _fail(f"{key}.{name}", f"unknown key (known: {known})")
    return MappingProxyType({
        name: _arg_value(f"{key}.{name}", given.get(name, default), default,
                         _ARG_LIMITS.get(f"{owner}.{name}", _ARG_DEFAULT_LIMITS))
        for name, default in defaults.items()
    })


@dataclass(frozen=True)
class Limits:
    """The documented values of a numeric key, `low` to `high` inclusive.

    A section's `_check` says what a key means (`local_lr` > 0); its limits (field metadata
    ``limits``, checked after `_check`) keep every number far from where a consumer would
    change or refuse it (a float32 model, a 32-bit seed, a wall-clock wait), so a config that
    validates runs as written. `why` ends the message of a value outside them.
    """

    low: float
    high: float
    why: str
    low_open: bool = False
    """True: `low` itself is outside (a rate > 0)."""

    def check(self, key: str, value: float | None) -> None:
        """Fail naming `key` when a set, finite `value` is outside the limits."""
        if value is None or (isinstance(value, float) and math.isinf(value)):
            return  # null, or run.max_time's unbounded (a non-finite value never gets here)
        above_low = value > self.low if self.low_open else value >= self.low
        if not (above_low and value <= self.high):
            _fail(key, f"must be in {'(' if self.low_open else '['}{_bound(self.low)}, "
                       f"{_bound(self.high)}] ({self.why}), got {_show(value)}")


def _bound(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _limits(low: float, high: float, why: str, *, low_open: bool = False,
            **meta: Any) -> dict[str, Any]:
    """Field metadata: `Limits(low, high, why, low_open)` plus any other metadata."""
    return {"limits": Limits(low, high, why, low_open), **meta}


SEED_MAX = 2**32 - 1
"""Largest `run.seed`: `seeding.seed_sequence` keeps its low 32 bits (one SeedSequence entropy
word), so a larger seed would silently alias a smaller one."""
_SEED = "every random stream is seeded with its 32 bits"

WALL_MAX = 1e9
"""Largest wall-clock interval (seconds, about 32 years: 'never'); `time` and `threading`
refuse waits from about 9.2e9 s."""
_WALL = "wall seconds; 1e9 is about 32 years"

SIM_TIME_MAX = 1e12
"""Largest simulated time or duration; float64 times still resolve 1e-4 there."""
_SIM = "simulated time units"

FACTOR_MIN, FACTOR_MAX = 1e-6, 1e6
"""Range of a scale factor or ratio (time scale, tier and task multipliers, Realloc's
factor, r_to_b, Dirichlet alpha): float32 (tier multipliers) holds it, and what is computed
from it (a request's duration, a period, a buffer size) stays finite and non-zero."""
_FACTOR = "a scale factor"

RATE_MAX = 1e30
"""Largest learning rate or weight decay: far beyond any useful value (a huge rate is how the
tests make a run diverge on purpose), small enough that float32 training takes it as given
(float32 ends at 3.4e38; PyTorch refuses a larger step size)."""
_RATE = "a float32 number, far beyond any useful rate"

_ARG_LIMITS: Mapping[str, Limits] = MappingProxyType({
    "digits.test_fraction": Limits(0.0, 1.0, "a fraction"),
    "synthetic.alpha": Limits(0.0, 1e3, "a standard deviation"),
    "synthetic.beta": Limits(0.0, 1e3, "a standard deviation"),
})
"""Limits of the float arguments of catalog datasets and models, by `dataset.arg` or
`model.arg`; any other float argument gets `_ARG_DEFAULT_LIMITS`."""
_ARG_DEFAULT_LIMITS = Limits(-FACTOR_MAX, FACTOR_MAX, "a catalog argument")


class _Section:
    """Base of every config section: type-checks and coerces fields, then `_check`."""

    if typing.TYPE_CHECKING:  # every section is a dataclass (for `dataclasses.fields(self)`)
        __dataclass_fields__: typing.ClassVar[dict[str, dataclasses.Field[Any]]]

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _coerce(f.name, value, hints[f.name], f.metadata))
        self._check()
        for f in dataclasses.fields(self):  # after _check: its messages say what a key means
            limits = f.metadata.get("limits")
            if limits is not None:
                limits.check(f.name, getattr(self, f.name))

    def _check(self) -> None:
        """Range and cross-field checks of the section (keys relative to it)."""


def _positive(key: str, value: float | None) -> None:
    if value is not None and not value > 0:
        _fail(key, f"must be > 0, got {value!r}")


def _non_negative(key: str, value: float | None) -> None:
    if value is not None and not value >= 0:
        _fail(key, f"must be >= 0, got {value!r}")


def _at_least(key: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        _fail(key, f"must be >= {low}, got {value!r}")


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig(_Section):
    """When rank 0 writes checkpoints (`run.checkpoint`)."""

    every_seconds: float = field(default=600.0,
                                 metadata=_limits(0.0, WALL_MAX, _WALL, low_open=True))
    """Wall seconds between checkpoints, in (0, 1e9]."""
    keep: int = 2
    """How many of the newest checkpoints to keep (>= 1)."""

    def _check(self) -> None:
        _positive("every_seconds", self.every_seconds)
        _at_least("keep", self.keep, 1)


@dataclass(frozen=True, kw_only=True)
class RunConfig(_Section):
    """Where, how long and on what a run goes (`run`)."""

    name: str = "fedast"
    """Name of the run; the run directory is named after it."""
    out_dir: str = "runs"
    """Directory the run directories are created in."""
    seed: int = field(default=0, metadata=_limits(0, SEED_MAX, _SEED))
    """Root of every random stream (`fedast_mpi.seeding`), 0..2**32 - 1 (`SEED_MAX`)."""
    clock: Literal["virtual", "real"] = "virtual"
    """`virtual`: simulated, deterministic time; `real`: wall time with injected delays."""
    time_scale: float = field(default=0.01, metadata=_limits(FACTOR_MIN, FACTOR_MAX, _FACTOR))
    """Wall seconds per simulated time unit under the real clock, in [1e-6, 1e6]."""
    max_time: float = field(default=math.inf,
                            metadata=_limits(0.0, SIM_TIME_MAX, _SIM + "; null: no limit",
                                             low_open=True, none_is_inf=True))
    """Simulated time at which the run stops, in (0, 1e12]; null (stored as inf) is
    unbounded."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where workers train: `auto` picks CUDA when present."""
    deterministic: bool = True
    """On CUDA: deterministic cuDNN and PyTorch kernels, no TF32, a fixed cuBLAS workspace
    (the same bits run after run on the same GPU model and software); false trades that for
    speed (autotuned cuDNN, TF32). No effect on CPU ranks (`fedast_mpi.devices`)."""
    batch_requests: int = 0
    """Requests of one task trained together with vmap (fedast_mpi.grouping): 0 = auto
    (16 for small models on a GPU, 1 on a CPU, where it doesn't pay), 1 = one at a time,
    N = groups of up to N. Groups are formed by rank 0, so results stay independent of
    the number of ranks; batched deltas equal one-at-a-time ones to float tolerance."""
    evaluation: Literal["auto", "server", "workers"] = "auto"
    """Where test-set evaluations run: `server` (rank 0), `workers` (split into chunks of
    1024 test samples that the workers compute ahead of their training; needs -n >= 2), or
    `auto` (workers when there are any). Results are bitwise the same either way."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint schedule."""
    log_every: float = field(default=2.0, metadata=_limits(0.0, WALL_MAX, _WALL))
    """Wall seconds between progress lines, in [0, 1e9] (0 prints none, only the final
    table)."""
    stall_timeout: float = field(default=600.0, metadata=_limits(0.0, WALL_MAX, _WALL))
    """Seconds rank 0 waits for a worker that owes it an update or an evaluation and sends
    nothing at all, in [0, 1e9] (0 = wait forever): then the run stops as failed, from its newest
    checkpoint, with one line naming the rank, host and request (`fedast_mpi.watchdog`).
    Silence is per worker, so a long queue of requests is not a stall; 10 minutes is far
    beyond one request or evaluation chunk of the paper's workloads on a CPU or a GPU."""

    def _check(self) -> None:
        if not self.name.strip():
            _fail("name", "must not be empty")
        _positive("time_scale", self.time_scale)
        _non_negative("batch_requests", self.batch_requests)
        _positive("max_time", self.max_time)
        _non_negative("log_every", self.log_every)
        _non_negative("stall_timeout", self.stall_timeout)


@dataclass(frozen=True, kw_only=True)
class ReallocConfig(_Section):
    """Parameters of dynamic request allocation, Realloc (`algorithm.realloc`)."""

    variant: Literal["paper", "code"] = "paper"
    """Which Realloc: as the paper writes it, or as its reference code does (PAPER.md §9)."""
    window: int = 8
    """Number of recent aggregations the rate estimates use (>= 2)."""
    period_factor: float = field(default=0.75,
                                 metadata=_limits(FACTOR_MIN, FACTOR_MAX, _FACTOR))
    """Realloc period factor, in [1e-6, 1e6]: paper every ceil(f · M · ΣR) updates, code
    floor(f · ΣR_initial) · M (PAPER.md §2); the paper's value is 0.75."""

    def _check(self) -> None:
        _at_least("window", self.window, 2)
        _positive("period_factor", self.period_factor)


@dataclass(frozen=True, kw_only=True)
class AlgorithmConfig(_Section):
    """The server algorithm (`algorithm`)."""

    name: str = "fedast"
    """A registered algorithm (`fedast_mpi.registry`: FedAST, its baselines, single-task
    references)."""
    allocation: str = "static"
    """How requests are shared among tasks; one of `ALLOCATIONS`."""
    total_requests: int | None = None
    """Total outstanding requests over all tasks (>= 1); split over tasks without `requests`.
    After loading it is the sum of the tasks' requests."""
    r_to_b: float = field(default=32.0, metadata=_limits(FACTOR_MIN, FACTOR_MAX, _FACTOR))
    """Requests-to-buffer ratio, in [1e-6, 1e6]: a task without `buffer_size` gets
    round(requests / r_to_b)."""
    realloc: ReallocConfig = field(default_factory=ReallocConfig)
    """Realloc parameters (used by dynamic allocation)."""
    first_k: int | None = 30
    """Sync baselines: aggregate the first k updates of a round (>= 1); null waits for all."""
    staleness_exponent: float = field(default=0.5, metadata=_limits(0.0, 100.0, "an exponent"))
    """fedasync: staleness weight (1 + s)^-a applied to each update, a in [0, 100]."""
    bayes_alpha: float = field(default=0.25, metadata=_limits(0.0, 1.0, "a weight"))
    """sync-bayes: weight of the round time against selection fairness in BODS' objective, in
    [0, 1]."""
    bayes_candidates: int = 75
    """sync-bayes: candidate assignments scored by expected improvement each round."""
    ucb_gamma: float = field(default=0.99,
                             metadata=_limits(0.0, 1.0, "a discount", low_open=True))
    """sync-ucb: discount of the per-(task, client) statistics, in (0, 1]."""

    def _check(self) -> None:
        if self.name not in registry.names():
            _fail("name", f"unknown algorithm {self.name!r} "
                          f"(known: {', '.join(registry.names())})")
        if self.allocation not in ALLOCATIONS:
            _fail("allocation", f"unknown allocation {self.allocation!r} "
                                f"(known: {', '.join(ALLOCATIONS)})")
        if self.allocation == "dynamic" and not registry.get(self.name).dynamic:
            _fail("allocation", f"dynamic allocation (Realloc) is a FedAST mechanism; "
                                f"{self.name!r} runs static")
        _at_least("total_requests", self.total_requests, 1)
        _positive("r_to_b", self.r_to_b)
        _at_least("first_k", self.first_k, 1)
        _non_negative("staleness_exponent", self.staleness_exponent)
        _at_least("bayes_candidates", self.bayes_candidates, 1)
        if not 0.0 <= self.bayes_alpha <= 1.0:
            _fail("bayes_alpha", f"must be in [0, 1], got {self.bayes_alpha}")
        if not 0.0 < self.ucb_gamma <= 1.0:
            _fail("ucb_gamma", f"must be in (0, 1], got {self.ucb_gamma}")


@dataclass(frozen=True, kw_only=True)
class TierConfig(_Section):
    """One client speed tier."""

    fraction: float = field(metadata=_limits(0.0, 1.0, "a share"))
    """Share of the clients in this tier, in [0, 1]."""
    multiplier: float = field(metadata=_limits(FACTOR_MIN, FACTOR_MAX, _FACTOR))
    """Factor on the request duration of the tier's clients, in [1e-6, 1e6]."""

    def _check(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            _fail("fraction", f"must be in [0, 1], got {self.fraction!r}")
        _positive("multiplier", self.multiplier)


_TIER_DEFAULTS = {
    "slow": {"fraction": 0.25, "multiplier": 1.3},
    "normal": {"fraction": 0.5, "multiplier": 1.0},
    "fast": {"fraction": 0.25, "multiplier": 0.7},
}


def _tier(name: str):
    return field(default_factory=lambda: TierConfig(**_TIER_DEFAULTS[name]))


@dataclass(frozen=True, kw_only=True)
class TiersConfig(_Section):
    """Client speed tiers (`clients.tiers`); a missing key takes its tier's default."""

    slow: TierConfig = _tier("slow")
    """Slow clients (default 25 %, x1.3)."""
    normal: TierConfig = _tier("normal")
    """Normal clients (default 50 %, x1.0)."""
    fast: TierConfig = _tier("fast")
    """Fast clients (default 25 %, x0.7)."""

    def __post_init__(self) -> None:
        for name, defaults in _TIER_DEFAULTS.items():
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, {**defaults, **value})
        super().__post_init__()

    def _check(self) -> None:
        total = self.slow.fraction + self.normal.fraction + self.fast.fraction
        if abs(total - 1.0) > 1e-9:
            _fail("", f"fractions must sum to 1, got {total!r}")


@dataclass(frozen=True, kw_only=True)
class ClientsConfig(_Section):
    """The simulated clients (`clients`)."""

    count: int = 100
    """Number of clients N (>= 1)."""
    available: int | None = None
    """Cap on distinct busy clients (1..count); null is no cap."""
    tiers: TiersConfig = field(default_factory=TiersConfig)
    """Speed tiers."""

    def _check(self) -> None:
        _at_least("count", self.count, 1)
        _at_least("available", self.available, 1)
        if self.available is not None and self.available > self.count:
            _fail("available", f"{self.available} exceeds {{p}}count ({self.count})")


@dataclass(frozen=True, kw_only=True)
class PartitionConfig(_Section):
    """How a task's data is split over clients (`tasks.<i>.partition`)."""

    kind: str = "iid"
    """Partition kind; one of the dataset's `catalog.DATASETS[...].partitions`."""
    alpha: float = field(default=0.5, metadata=_limits(FACTOR_MIN, FACTOR_MAX, _FACTOR))
    """Dirichlet concentration, in [1e-6, 1e6]; smaller is more heterogeneous."""
    samples_per_client: int | None = None
    """Training samples per client (>= 1); null splits the whole training set."""
    refill: Literal["class", "all"] = "class"
    """dirichlet: when a class's pool of samples runs out, `class` refills that class's pool
    alone; `all` takes it again in the same order (the authors' DirichletLoader)."""
    data_seed: int | None = field(default=None,
                                  metadata=_limits(0, SEED_MAX, "a seed, as run.seed"))
    """dirichlet with refill `all`: null draws the shards from the run seed; an integer makes
    the authors' DirichletLoader's exact shards for their `data_seed` (10 in their demos), the
    same for every run seed (`data.partition.authors_dirichlet_partition`)."""

    def _check(self) -> None:
        _positive("alpha", self.alpha)
        _at_least("samples_per_client", self.samples_per_client, 1)
        if self.data_seed is not None and (self.kind, self.refill) != ("dirichlet", "all"):
            _fail("data_seed", "needs kind 'dirichlet' with refill 'all' (the authors' loader); "
                               f"got kind {self.kind!r}, refill {self.refill!r}")


@dataclass(frozen=True, kw_only=True)
class DelayConfig(_Section):
    """Request durations: local_multi x shifted exponential(shift, exp_mean) x tier."""

    shift: float = field(default=1.0, metadata=_limits(0.0, SIM_TIME_MAX, _SIM))
    """Minimum duration, in [0, 1e12]."""
    exp_mean: float = field(default=2.0, metadata=_limits(0.0, SIM_TIME_MAX, _SIM))
    """Mean of the exponential part, in [0, 1e12]."""
    local_multi: float = field(default=1.0, metadata=_limits(FACTOR_MIN, FACTOR_MAX, _FACTOR))
    """Task-specific factor on the duration, in [1e-6, 1e6]."""

    def _check(self) -> None:
        _non_negative("shift", self.shift)
        _non_negative("exp_mean", self.exp_mean)
        _positive("local_multi", self.local_multi)
        if not self.shift + self.exp_mean > 0:
            _fail("exp_mean", "shift + exp_mean must be > 0")


@dataclass(frozen=True, kw_only=True)
class TaskConfig(_Section):
    """One task: data, model, hyper-parameters and target (`tasks.<i>`)."""

    name: str
    """Unique name; `--set tasks.<name>.key=value` uses it, so not all digits and no dots."""
    dataset: str
    """A key of `catalog.DATASETS`, or a plugin's `module:attr` (`fedast_mpi.plugins`)."""
    dataset_args: Mapping[str, Any] = field(default_factory=dict)
    """Dataset arguments; after loading, every argument of the dataset with its value."""
    data_dir: str | None = None
    """Directory of the dataset's standard files (datasets that do not ship embedded)."""
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    """Split of the data over clients."""
    model: str
    """A key of `catalog.MODELS`, or a plugin's `module:attr` (`fedast_mpi.plugins`)."""
    model_args: Mapping[str, Any] = field(default_factory=dict)
    """Model arguments; after loading, every argument of the model with its value."""
    local_steps: int = 10
    """Local SGD steps per request, tau (>= 1)."""
    batch_size: int = 32
    """Local mini-batch size (>= 1)."""
    local_lr: float = field(default=0.05,
                            metadata=_limits(0.0, RATE_MAX, _RATE, low_open=True))
    """Client learning rate, in (0, 1e30] (`RATE_MAX`)."""
    global_lr: float = field(default=1.0,
                             metadata=_limits(0.0, RATE_MAX, _RATE, low_open=True))
    """Server learning rate applied to the aggregated update, in (0, 1e30]."""
    weight_decay: float = field(default=0.0, metadata=_limits(0.0, RATE_MAX, _RATE))
    """L2 weight decay of local SGD, in [0, 1e30]."""
    buffer_size: int | None = None
    """Updates aggregated at once, b_m (1..requests); null derives it from `algorithm.r_to_b`."""
    requests: int | None = None
    """Outstanding requests R_m (>= 1); null takes a share of `algorithm.total_requests`."""
    target_accuracy: float | None = field(
        metadata=_limits(0.0, 1.0, "a fraction; null: no target", low_open=True))
    """Test accuracy at which the task is done, in (0, 1]; null: no target, the task trains
    until `run.max_time`."""
    eval_every: int = 1
    """Evaluate the global model every this many aggregations (>= 1)."""
    delay: DelayConfig = field(default_factory=DelayConfig)
    """Request duration model."""
    stream_index: int | None = None
    """Draw this task's random streams (initial model, request delays) as the task at this
    position of a config would (>= 0); null: its own position. `compare` sets it when a
    single-task algorithm trains one task of a multi-task config alone, so that the task starts
    from the same model and sees the same delays as in the multi-task runs."""

    def streams(self, index: int) -> int:
        """The position this task's random streams are keyed by, when it is at `index`."""
        return index if self.stream_index is None else self.stream_index

    def _check(self) -> None:
        name = self.name
        if not name:
            _fail("name", "must not be empty")
        if name.isdigit():
            _fail("name", f"{name!r} must not be all digits (--set tasks.<index> uses those)")
        if any(c in name for c in ".=") or any(c.isspace() for c in name):
            _fail("name", f"{name!r} must not contain '.', '=' or spaces")
        from fedast_mpi import plugins  # `module:attr` names (imported, checked, not called)
        spec = catalog.DATASETS.get(self.dataset)
        if plugins.is_plugin(self.dataset):
            spec = self._plugin("dataset", plugins)
        elif spec is None:
            _fail("dataset", f"unknown dataset {self.dataset!r} "
                             f"(known: {', '.join(catalog.DATASETS)})")
        if not plugins.is_plugin(self.dataset):
            object.__setattr__(self, "dataset_args",
                               _check_args("dataset_args", self.dataset_args, spec.args,
                                           self.dataset))
        if self.partition.kind not in spec.partitions:
            _fail("partition.kind", f"{self.partition.kind!r} is not a partition of dataset "
                                    f"{self.dataset!r} (known: {', '.join(spec.partitions)})")
        if not spec.embedded and self.data_dir is None:
            from fedast_mpi import datadirs
            known = datadirs.find_known(self.dataset)  # e.g. Debian's dataset-fashion-mnist
            if known is not None:
                object.__setattr__(self, "data_dir", known)
        if not spec.embedded and self.data_dir is None:
            _fail("data_dir", f"dataset {self.dataset!r} reads its standard files from a "
                              f"directory (fedast-mpi data download {self.dataset} --to DIR)")
        if ((self.dataset == "shakespeare" or plugins.is_plugin(self.dataset))
                and self.partition.kind == "natural"
                and self.partition.samples_per_client is not None):
            _fail("partition.samples_per_client", "must be null with kind 'natural': each "
                                                  "client holds one LEAF user's samples")
        model = catalog.MODELS.get(self.model)
        if plugins.is_plugin(self.model):
            model = self._plugin("model", plugins)
        elif model is None:
            _fail("model", f"unknown model {self.model!r} (known: {', '.join(catalog.MODELS)})")
        if not plugins.is_plugin(self.model):
            object.__setattr__(self, "model_args",
                               _check_args("model_args", self.model_args, model.args,
                                           self.model))
        for key in ("local_steps", "batch_size", "buffer_size", "requests", "eval_every"):
            _at_least(key, getattr(self, key), 1)
        _at_least("stream_index", self.stream_index, 0)
        for key in ("local_lr", "global_lr"):
            _positive(key, getattr(self, key))
        _non_negative("weight_decay", self.weight_decay)
        if self.target_accuracy is not None and not 0.0 < self.target_accuracy <= 1.0:
            _fail("target_accuracy", f"must be in (0, 1], got {self.target_accuracy!r}")
        if (self.buffer_size is not None and self.requests is not None
                and self.buffer_size > self.requests):
            _fail("buffer_size", f"{self.buffer_size} exceeds {{p}}requests ({self.requests})")

    def _plugin(self, key: str, plugins: Any) -> Any:
        """A `module:attr` dataset or model (`fedast_mpi.plugins`): imported and checked to be
        callable, not called; its `<key>_args` pass through unchecked (no catalog defaults).
        Returns a catalog spec standing in for it."""
        path = getattr(self, key)
        try:
            plugins.resolve(path, key, self.name)
        except ConfigError as exc:
            _fail(key, str(exc))
        given = getattr(self, f"{key}_args")
        if not isinstance(given, Mapping):
            _fail(f"{key}_args", f"expected a mapping, got {_show(given)}")
        args = MappingProxyType({str(k): v for k, v in given.items()})
        object.__setattr__(self, f"{key}_args", args)
        if key == "dataset":
            return catalog.DatasetSpec(args=args, partitions=plugins.PLUGIN_PARTITIONS)
        return catalog.ModelSpec(args=args)


@dataclass(frozen=True, kw_only=True)
class Config(_Section):
    """A whole job. Built by `load_config` / `config_from_dict`, resolved on construction."""

    run: RunConfig = field(default_factory=RunConfig)
    """Run identity, clock, limits and checkpoints."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """Server algorithm and request allocation."""
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    """Simulated clients."""
    tasks: tuple[TaskConfig, ...]
    """The tasks trained simultaneously (at least one)."""
    compare: Mapping[str, Any] = field(default_factory=dict)
    """`fedast-mpi compare`: per-algorithm overrides, {algorithm: {dotted key: value}}; a key
    `tasks.*.KEY` applies to every task (e.g. sync's global_lr 1 against FedAST's 0.1)."""

    def _check(self) -> None:
        tasks = self.tasks
        if not tasks:
            _fail("tasks", "must list at least one task")
        for algo, overrides in self.compare.items():
            if algo not in registry.names():
                _fail(f"compare.{algo}",
                      f"unknown algorithm (known: {', '.join(registry.names())})")
            if not isinstance(overrides, Mapping):
                _fail(f"compare.{algo}",
                      f"expected a mapping of KEY: VALUE, got {_show(overrides)}")
        name = self.algorithm.name
        if registry.get(name).single_task and len(tasks) != 1:
            _fail("algorithm.name", f"{name!r} is a single-task reference; the config has "
                                    f"{len(tasks)} tasks")
        if math.isinf(self.run.max_time) and all(t.target_accuracy is None for t in tasks):
            _fail("run.max_time", "null with no task target (every target_accuracy is null): "
                                  "the run would never end; set run.max_time or a target")
        seen: dict[str, int] = {}
        for i, task in enumerate(tasks):
            if task.name in seen:
                _fail(f"tasks.{i}.name",
                      f"duplicate task name {task.name!r} (also tasks.{seen[task.name]}.name)")
            seen[task.name] = i
        object.__setattr__(self, "tasks", self._resolve(tasks))

    def _resolve(self, tasks: tuple[TaskConfig, ...]) -> tuple[TaskConfig, ...]:
        """Concrete requests and buffer sizes; `algorithm.total_requests` becomes their sum."""
        algo = self.algorithm
        total = algo.total_requests
        unset = [i for i, t in enumerate(tasks) if t.requests is None]
        given = sum(t.requests for t in tasks if t.requests is not None)
        # 0 for the unset ones: each of them is filled in below (or _fail raises)
        requests = [0 if t.requests is None else t.requests for t in tasks]
        if unset:
            if total is None:
                _fail(f"tasks.{unset[0]}.requests",
                      "required when algorithm.total_requests is null")
            left = total - given
            if left < len(unset):
                _fail("algorithm.total_requests",
                      f"{total} leaves {left} requests for {len(unset)} task(s) without "
                      f"requests (tasks set {given})")
            share, extra = divmod(left, len(unset))
            for j, i in enumerate(unset):
                requests[i] = share + (1 if j < extra else 0)
        elif total is not None and total != given:
            _fail("algorithm.total_requests",
                  f"{total} differs from the sum of the tasks' requests ({given})")
        spec = registry.get(algo.name)
        resolved = []
        for i, (task, r) in enumerate(zip(tasks, requests)):
            if task.buffer_size is None:
                b = spec.buffer(min(r, max(1, round(r / algo.r_to_b))))
            else:
                b = spec.buffer(task.buffer_size)
            with _prefix(f"tasks.{i}"):
                resolved.append(dataclasses.replace(task, requests=r, buffer_size=b))
        object.__setattr__(self, "algorithm",
                           dataclasses.replace(algo, total_requests=sum(requests)))
        return tuple(resolved)

    @property
    def task_names(self) -> tuple[str, ...]:
        """Names of the tasks, in config order."""
        return tuple(t.name for t in self.tasks)

    def task_index(self, name: str) -> int:
        """Index of the task named `name` (an all-digit string is taken as an index)."""
        return _task_index(self.task_names, str(name), f"tasks.{name}")


def _task_index(names: Sequence[Any], ref: str, key: str) -> int:
    if ref.isdigit():
        if int(ref) < len(names):
            return int(ref)
        raise ConfigError(f"{key}: no task with index {ref} (there are {len(names)})")
    for i, name in enumerate(names):
        if name == ref:
            return i
    known = ", ".join(str(n) for n in names) or "none"
    raise ConfigError(f"{key}: no task named {ref!r} (tasks: {known})")


# --------------------------------------------------------------------------- API


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Check and resolve a raw config mapping (as read from YAML)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: top level must be a mapping, got {_show(data)}")
    try:
        return _build(Config, data)
    except _KeyError as exc:
        raise ConfigError(str(exc)) from None


def apply_override(data: dict, item: str) -> None:
    """Apply one `--set KEY=VALUE` to a raw config dict in place.

    KEY is dotted (`run.checkpoint.keep`); a task is named by index or name
    (`tasks.0.buffer_size`, `tasks.digits.buffer_size`), every task by `*`
    (`tasks.*.local_lr`). VALUE is parsed as YAML.
    """
    key, eq, text = item.partition("=")
    key = key.strip()
    if not eq:
        raise ConfigError(f"{key or item}: expected KEY=VALUE in --set {item!r}")
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"{key or '(empty)'}: bad key in --set {item!r}")
    if parts[:2] == ["tasks", "*"] and len(parts) > 2:  # every task, as in `compare:` sections
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise ConfigError(f"{key}: tasks.* needs a list of tasks in the config")
        for i in range(len(tasks)):
            apply_override(data, f"tasks.{i}.{'.'.join(parts[2:])}={text}")
        return
    try:
        value = yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{key}.{exc.key}: duplicate key in --set {item!r}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {text!r}: {_one_line(exc)}") from None
    node: Any = data
    for depth, part in enumerate(parts):
        path = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            names = [t.get("name") if isinstance(t, Mapping) else None for t in node]
            index = _task_index(names, part, path)
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            parent = ".".join(parts[:depth])
            raise ConfigError(f"{path}: {parent} is not a mapping")
        if last:
            node[part] = value
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A YAML mapping that holds `key` (dotted from the document's root) twice."""

    def __init__(self, key: str, first: int, node: yaml.Node):
        self.key, self.first, self.line = key, first, node.start_mark.line + 1
        super().__init__(problem=f"duplicate key {key} (first on line {first})",
                         problem_mark=node.start_mark)


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a mapping holding a key twice, where PyYAML silently
    keeps the last value: a config's second `seed:` would override the first unseen.

    The check runs on the composed node tree before anything is constructed, so the error
    names the dotted key and both lines. A merge key (`<<: *base`) may still be overridden.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_unique(node, "", set())
        return super().construct_document(node)

    def _check_unique(self, node: yaml.Node, path: str, done: set[int]) -> None:
        if id(node) in done:  # an alias: checked where it was anchored (and no cycles)
            return
        done.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_unique(item, f"{path}.{i}" if path else str(i), done)
        if not isinstance(node, yaml.MappingNode):
            return
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key: Any = "?"
            if key_node.tag != "tag:yaml.org,2002:merge" and isinstance(key_node, yaml.ScalarNode):
                key = self.construct_object(key_node)
                dotted = f"{path}.{key}" if path else str(key)
                if key in first:
                    raise DuplicateKeyError(dotted, first[key], key_node)
                first[key] = key_node.start_mark.line + 1
            self._check_unique(value_node, f"{path}.{key}" if path else str(key), done)


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML `text` (from `where`, e.g. ``config file 'x.yaml'``) with `UniqueKeyLoader`;
    a ConfigError names `where`, the line and the problem."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{where} line {exc.line}: duplicate key {exc.key} "
                          f"(first on line {exc.first})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or _one_line(exc)
        raise ConfigError(f"{where}{line}: YAML syntax error: {problem}") from None


def _read_text(path: str | os.PathLike | None) -> tuple[str, str]:
    if path is None:
        resource = importlib.resources.files("fedast_mpi").joinpath(DEFAULT_CONFIG)
        return "<embedded default>", resource.read_text(encoding="utf-8")
    shown = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return shown, handle.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {shown!r} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {shown!r} is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {shown!r} cannot be read: {_one_line(exc)}") from None


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (None: the embedded default), apply `--set` overrides, resolve."""
    shown, text = _read_text(path)
    data = load_yaml(text, f"config file {shown!r}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {shown!r}: top level must be a mapping, "
                          f"got {type(data).__name__}")
    data = copy.deepcopy(data)
    for item in overrides:
        apply_override(data, item)
    return config_from_dict(data)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return None  # only run.max_time may be inf: null means unbounded
    return value


def to_dict(cfg: Config) -> dict:
    """The resolved config as plain dicts, lists and scalars (inf max_time as None)."""
    return _plain(cfg)


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, in field order; loads back to an equal Config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
