"""The jobs the benchmarks run: the embedded default job and a compute-heavier CNN job.

Every workload is virtual-clock and bounded by run.max_time, so the same config always
processes the same requests (deterministic), whatever the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A single task whose requests are dominated by compute: a wider CNN (32/64 channels)
# on the embedded 8x8 digits, 20 local steps of batch 32 (about 25 ms per request on one
# core of the reference machine), versus about 1-7 ms for the default job's models.
HEAVY_YAML = """\
# benchmarks: compute-heavier single-task job (written to a temp dir by `python -m benchmarks`)
run:
  name: bench-heavy
  seed: 0
  clock: virtual
  max_time: {max_time}
  log_every: 0
algorithm:
  name: fedast
  allocation: static
clients:
  count: 100
tasks:
  - name: digits-cnn-wide
    dataset: digits
    partition: {{kind: dirichlet, alpha: 1.0, samples_per_client: 60}}
    model: cnn
    model_args: {{channels: [32, 64], hidden: 64}}
    local_steps: 20
    batch_size: 32
    local_lr: 0.05
    global_lr: 1.0
    requests: 20
    buffer_size: 5
    target_accuracy: 0.99
    eval_every: 5
    delay: {{shift: 1.0, exp_mean: 2.0, local_multi: 1.0}}
"""


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    yaml: str | None  # None: the embedded default config
    sets: tuple[str, ...] = field(default_factory=tuple)

    def config_arg(self, path: str | None) -> list[str]:
        """The CONFIG argument of `fedast-mpi run` (nothing for the embedded default)."""
        return [] if self.yaml is None else [path]


def workloads(quick: bool) -> dict[str, Workload]:
    """The workloads, sized for the default run (or --quick)."""
    small_time = 40 if quick else 80
    heavy_time = 15 if quick else 30
    return {
        "small": Workload(
            "small",
            f"embedded default job (3 tasks: logreg, cnn 16/32, mlp; 60 outstanding requests), "
            f"run.max_time={small_time}",
            None, (f"run.max_time={small_time}",)),
        "heavy": Workload(
            "heavy",
            f"one task, digits + cnn channels [32, 64], local_steps 20, batch 32, "
            f"20 outstanding requests, run.max_time={heavy_time}",
            HEAVY_YAML.format(max_time=heavy_time)),
    }
