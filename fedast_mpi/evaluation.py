"""Evaluation as chunks of the test set: the pure arithmetic, and the server's side of
evaluating on the workers (`run.evaluation`).

An evaluation of (task, model) is the float64 sum, chunk after chunk, of each test chunk's
(correct predictions, summed cross-entropy); chunk c holds samples [c·B, (c+1)·B) with
B = `EVAL_BATCH`. Computed in one process (`training.evaluate`) or chunk by chunk on workers
and combined here in chunk order, it gives the same bits.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

EVAL_BATCH = 1024
"""Test samples per chunk (and the batch of an in-process evaluation)."""


def n_chunks(n: int, batch_size: int = EVAL_BATCH) -> int:
    """Evaluation chunks of a test set of n samples."""
    return -(-n // batch_size)


def combine(chunks: Sequence[tuple[float, float]], n: int) -> tuple[float, float]:
    """(accuracy, mean loss) from the per-chunk sums, added in chunk order in float64."""
    correct = loss = 0.0
    for c, s in chunks:
        correct += c
        loss += s
    return correct / n, loss / n


class ChunkExecutor(Protocol):
    """What evaluating on workers needs of the transport."""

    def evaluate(self, eval_id: int, task: int, model: np.ndarray, chunks: int) -> None: ...

    def wait_eval(self, eval_id: int, chunks: int) -> list[tuple[float, float]]: ...

    def eval_done(self, eval_id: int, chunks: int) -> bool: ...

    def forget_eval(self, eval_id: int) -> None: ...


class WorkerEvaluation:
    """`evaluate(task, model)` with the chunks computed by the workers (ahead of their training,
    and between its steps); rank 0 only sends the model and adds up the chunks' sums."""

    def __init__(self, transport: ChunkExecutor, n_test: Sequence[int]) -> None:
        self.transport = transport
        self.n_test = [int(n) for n in n_test]
        self.next_id = 0
        self.tasks: dict[int, int] = {}  # evaluation id -> task, while in flight

    def __call__(self, task: int, model: np.ndarray) -> tuple[float, float]:
        """Evaluate and wait for the result."""
        return self.wait(self.launch(task, model))

    def launch(self, task: int, model: np.ndarray) -> int:
        """Send an evaluation to the workers; returns its id."""
        eval_id = self.next_id
        self.next_id += 1
        self.tasks[eval_id] = task
        self.transport.evaluate(eval_id, task, model, n_chunks(self.n_test[task]))
        return eval_id

    def poll(self, eval_id: int) -> tuple[float, float] | None:
        """The result if every chunk is in, else None (does not wait)."""
        if not self.transport.eval_done(eval_id, n_chunks(self.n_test[self.tasks[eval_id]])):
            return None
        return self.wait(eval_id)

    def wait(self, eval_id: int) -> tuple[float, float]:
        """(accuracy, loss) of a launched evaluation, waiting for its chunks."""
        task = self.tasks.pop(eval_id)
        chunks = n_chunks(self.n_test[task])
        return combine(self.transport.wait_eval(eval_id, chunks), self.n_test[task])

    def forget(self, eval_id: int) -> None:
        """An evaluation nobody needs any more: its chunks are dropped when they come."""
        if self.tasks.pop(eval_id, None) is not None:
            self.transport.forget_eval(eval_id)
