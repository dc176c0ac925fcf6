"""Evaluation in chunks (run.evaluation: workers) gives the bits of an evaluation in one piece."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedast_mpi.evaluation import EVAL_BATCH, WorkerEvaluation, combine, n_chunks
from fedast_mpi.models import build_model
from fedast_mpi.params import FlatModel
from fedast_mpi.training import evaluate, evaluate_chunk
from test_paper_models import SHAPES, _input


def evaluate_before_chunks(fm, vec, x, y, batch_size=1024):
    """`training.evaluate` as it was before evaluations could be split (commit c76c297)."""
    n = len(y)
    fm.load(vec)
    module = fm.module
    module.eval()
    correct = torch.zeros((), dtype=torch.float64)
    loss = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, n, batch_size):
            logits = module(x[s:s + batch_size])
            yb = y[s:s + batch_size]
            loss += F.cross_entropy(logits, yb, reduction="none").to(torch.float64).sum()
            correct += (logits.argmax(dim=1) == yb).sum().to(torch.float64)
    return correct.item() / n, loss.item() / n


HEAVY = ("resnet18_gn", "cifar_cnn", "lstm")  # evaluated in chunks of 8 (the same code path)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_chunks_combined_in_order_are_bitwise_the_whole_evaluation(name):
    b = 8 if name in HEAVY else EVAL_BATCH
    n = 2 * b + b // 2 + 1  # not a multiple of the chunk: a short last one
    shape, n_classes = SHAPES[name]
    gen = torch.Generator().manual_seed(1)
    x = _input(name, n, gen)
    y = torch.randint(0, n_classes, (n,), generator=gen)
    fm = FlatModel(build_model(name, {}, shape, n_classes, 0))
    vec = (fm.numpy() + 0.01 * np.random.default_rng(2).standard_normal(fm.n_params)
           ).astype(np.float32)
    whole = evaluate(fm, vec, x, y, b)
    assert whole == evaluate_before_chunks(fm, vec, x, y, b)
    # a worker evaluates on its own copy of the module, one chunk at a time, in any order
    other = FlatModel(copy.deepcopy(fm.module))
    order = list(range(n_chunks(n, b)))[::-1]
    sums = {c: evaluate_chunk(other, vec, x, y, c, b) for c in order}
    assert combine([sums[c] for c in range(n_chunks(n, b))], n) == whole
    assert n_chunks(n, b) == 3


def test_combine_adds_in_chunk_order():
    parts = [(1e16, 1.0), (1.0, 1e16), (-1e16, -1e16)]
    assert combine(parts, 1) == ((1e16 + 1.0) - 1e16, (1.0 + 1e16) - 1e16)


class FakeChunks:
    """The transport's side of an evaluation, answering every chunk at once."""

    def __init__(self):
        self.sent = []

    def evaluate(self, eval_id, task, model, chunks):
        self.sent.append((eval_id, task, chunks))
        self.answer = [(float(c), 2.0 * c) for c in range(chunks)]

    def wait_eval(self, eval_id, chunks):
        return self.answer


def test_worker_evaluation_numbers_evaluations_and_combines_their_chunks():
    fake = FakeChunks()
    ev = WorkerEvaluation(fake, [2048, 1500])
    assert ev(1, np.zeros(3, np.float32)) == combine([(0.0, 0.0), (1.0, 2.0)], 1500)
    ev(0, np.zeros(3, np.float32))
    assert fake.sent == [(0, 1, 2), (1, 0, 2)]
