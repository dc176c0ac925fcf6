"""The jobs the benchmarks run: the embedded default job, a compute-heavier CNN job, and
the paper's MNIST MLP and CIFAR-10 CNN (SPEC §11 overhead targets).

Every workload is virtual-clock and bounded by run.max_time, so the same config always
processes the same requests (deterministic), whatever the number of workers. The paper's
datasets cannot be downloaded everywhere: `python -m benchmarks` writes files in their
standard formats with random pixels (fedast_mpi.data.sample_files; the timing depends on
the shapes only) into its temp dir and points the tasks' data_dir there.
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


# The paper's homogeneous settings (configs/paper/homogeneous-{mnist,cifar10}-m2.yaml): one of
# the identical tasks, with its local_steps, batch size, learning rates, weight decay,
# partition, R_m = 150 outstanding requests, b_m = 5 and delays. Smaller files than the real
# datasets (PAPER_TRAIN / PAPER_TEST images) and 300 clients: set-up only, not timed.
PAPER_TRAIN, PAPER_TEST = 6000, 1000
PAPER_YAML = """\
# benchmarks: one task of configs/paper/homogeneous-{dataset}-m2.yaml on generated files
run:
  name: bench-{name}
  seed: 0
  clock: virtual
  max_time: {max_time}
  log_every: 0
  device: cpu
algorithm:
  name: fedast
  allocation: static
clients:
  count: 300
tasks:
  - name: {name}
    dataset: {dataset}
    data_dir: {data_dir}
    partition: {{kind: dirichlet, alpha: 0.1, samples_per_client: 300}}
    model: {model}
    model_args: {model_args}
    local_steps: 27
    batch_size: 32
    local_lr: 0.1
    global_lr: 0.1
    weight_decay: {weight_decay}
    buffer_size: 5
    requests: 150
    target_accuracy: {target}
    eval_every: 4
    delay: {{shift: {shift}, exp_mean: {exp_mean}, local_multi: 27}}
"""


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    yaml: str | None  # None: the embedded default config
    sets: tuple[str, ...] = field(default_factory=tuple)
    datasets: tuple[str, ...] = ()  # standard datasets whose files the session must generate
    target: float | None = None  # overhead target (run / bare), None: not an overhead workload

    def config_arg(self, path: str | None) -> list[str]:
        """The CONFIG argument of `fedast-mpi run` (nothing for the embedded default)."""
        if self.yaml is None:
            return []
        if path is None:
            raise ValueError(f"workload {self.name!r}: the path of its config file is missing")
        return [path]


def paper_workload(name: str, dataset: str, model: str, model_args: str, weight_decay: float,
                   target_accuracy: float, shift: float, max_time: float, data_dir: str,
                   target: float) -> Workload:
    exp_mean = 2 * shift
    return Workload(
        name,
        f"one {dataset} task of the paper's homogeneous config: {model}, local_steps 27, "
        f"batch 32, lr 0.1, weight_decay {weight_decay}, dirichlet 0.1 x 300 samples, "
        f"150 outstanding requests, buffer 5, eval every 4 on {PAPER_TEST} test images; "
        f"generated files ({PAPER_TRAIN} train images), run.max_time={max_time}",
        PAPER_YAML.format(name=name, dataset=dataset, model=model, model_args=model_args,
                          weight_decay=weight_decay, target=target_accuracy, shift=shift,
                          exp_mean=exp_mean, max_time=max_time, data_dir=data_dir),
        datasets=(dataset,), target=target)


def workloads(quick: bool, data_dir: str = "DATA_DIR") -> dict[str, Workload]:
    """The workloads, sized for the default run (or --quick); data_dir: the generated files."""
    small_time = 40 if quick else 80
    heavy_time = 15 if quick else 30
    # Virtual time: a request lasts 27 x tier x (shift + Exp(2 shift)) (about 6 units for
    # MNIST, 9 for CIFAR-10; the first ones finish after about 2) and 150 are outstanding:
    # max_time sets how many finish: MNIST ~70 updates (--quick) / ~250, CIFAR-10 5 / 10
    # updates (one CIFAR request trains ~0.8 s on a core of the reference machine).
    mnist_time = 6 if quick else 15
    cifar_time = 2.6 if quick else 3.0
    return {
        "small": Workload(
            "small",
            f"embedded default job (3 tasks: logreg, cnn 16/32, mlp; 60 outstanding requests), "
            f"run.max_time={small_time}",
            None, (f"run.max_time={small_time}",), target=1.25),
        "heavy": Workload(
            "heavy",
            f"one task, digits + cnn channels [32, 64], local_steps 20, batch 32, "
            f"20 outstanding requests, run.max_time={heavy_time}",
            HEAVY_YAML.format(max_time=heavy_time), target=1.10),
        "mnist-mlp": paper_workload("mnist-mlp", "mnist", "mlp", "{hidden: [200, 200]}", 0.0003,
                                    0.93, 0.074, mnist_time, data_dir, target=1.25),
        "cifar-cnn": paper_workload("cifar-cnn", "cifar10", "cifar_cnn", "{}", 0.0007,
                                    0.63, 0.114, cifar_time, data_dir, target=1.10),
    }
