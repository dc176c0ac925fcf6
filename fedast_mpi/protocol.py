"""The wire protocol: tags, fixed-size headers and message layouts, in one place.

Server -> worker: a CTRL header (64 bytes) on TAG_CTRL; a MODEL header is
followed by the model's flat float32 vector on TAG_MODEL. Messages between
one pair of ranks are non-overtaking, so a model always arrives before the
requests that need it.

A REQUEST with group_size g > 1 is one of g consecutive REQUESTs (same task,
sorted by request id; only MODEL messages may come between them) that the
worker trains as one batch (fedast_mpi.grouping, fedast_mpi.batched).

Worker -> server: one message per update on TAG_UPDATE + task: UPDATE_HEADER
bytes (with the delta's L2 norm, computed by the worker where the delta is hot, so
rank 0 never reads it just for the event log) followed by the flat float32 delta,
received straight into a landing slot of that task's pool (the FedAST buffer holds
the slot: no copy). A worker that stops sends FINAL (its count of updates sent) so the
server can drain; a worker that fails sends its error line on TAG_ERROR so that rank 0
can mark the run file `failed` before it aborts the job.

Evaluation (`run.evaluation: workers`): the server sends an EVAL header (32 bytes) on
TAG_EVAL per test chunk a worker is to evaluate; the first header of an evaluation to a
worker is followed by the model on TAG_EVAL_MODEL (evaluation models are named by their
evaluation id, apart from the training models, which are named by (task, version)). A
worker serves evaluation headers before its queued training, also between the steps of a
training, and answers each chunk with EVAL_RESULT (float64 sums) on TAG_EVAL_RESULT.

A REQUEST's `request` field, echoed in its update's header, is the request id with the
server's retraction generation above bit WIRE_GEN_SHIFT (`wire_id`): a request sent ahead of
a confirmation and retracted at a rollback (fedast_mpi.speculation) may be sent again under
the same id with other contents, and its stale update must not pass for the new one. Until
the first retraction the generation is 0 and the field is the plain id.
"""

from __future__ import annotations

import numpy as np

TAG_CTRL = 1
TAG_MODEL = 2
TAG_FINAL = 3
TAG_ERROR = 4
ERROR_BYTES = 1024  # a failing worker's one-line message, utf-8, zero padded
TAG_EVAL = 5
TAG_EVAL_MODEL = 6
TAG_EVAL_RESULT = 7
TAG_UPDATE = 100  # + task index

# Control kinds (server -> worker).
REQUEST = 1
MODEL = 2
CANCEL_TASK = 3
STOP = 4  # carries the exit code the worker ends with (`exit_code`)

CTRL_DTYPE = np.dtype([
    ("kind", "<i2"), ("exit_code", "<i2"), ("task", "<i4"), ("client", "<i4"),
    ("group_size", "<i4"),
    ("request", "<i8"), ("version", "<i8"), ("seed", "<i8"),
    ("finish_time", "<f8"), ("release_wall", "<f8"), ("n_params", "<i8"),
])
assert CTRL_DTYPE.itemsize == 64

UPDATE_DTYPE = np.dtype([
    ("request", "<i8"), ("task", "<i4"), ("worker", "<i4"),
    ("train_loss", "<f4"), ("n_samples", "<i4"), ("compute", "<f4"), ("norm", "<f4"),
])
HEADER_BYTES = UPDATE_DTYPE.itemsize
assert HEADER_BYTES == 32

WIRE_GEN_SHIFT = 40
"""Request ids stay below 2**40; the retraction generation sits above them."""
WIRE_ID_MASK = (1 << WIRE_GEN_SHIFT) - 1


def wire_id(rid: int, gen: int) -> int:
    """The `request` field of request `rid` sent in retraction generation `gen`."""
    return rid | (gen << WIRE_GEN_SHIFT)


def request_of(wire: int) -> int:
    """The request id in a `request` field."""
    return wire & WIRE_ID_MASK

FINAL_DTYPE = np.dtype([("worker", "<i4"), ("evals", "<i4"), ("sent", "<i8")])
"""A stopping worker's counts: updates (`sent`) and evaluation chunks (`evals`) it sent."""

EVAL_DTYPE = np.dtype([
    ("eval", "<i8"), ("n_params", "<i8"), ("task", "<i4"), ("chunk", "<i4"),
    ("chunks_here", "<i4"), ("model_follows", "<i4"),
])
"""One test chunk to evaluate: `chunks_here` of evaluation `eval` go to this worker (it keeps
the model until it has done them all); `model_follows` when the model comes next."""
assert EVAL_DTYPE.itemsize == 32

EVAL_RESULT_DTYPE = np.dtype([
    ("eval", "<i8"), ("correct", "<f8"), ("loss", "<f8"), ("compute", "<f8"),
    ("task", "<i4"), ("chunk", "<i4"), ("worker", "<i4"), ("pad", "<i4"),
])
"""A chunk's float64 sums (correct predictions, cross-entropy) and its compute seconds."""
assert EVAL_RESULT_DTYPE.itemsize == 48


def ctrl(kind: int, **fields) -> np.ndarray:
    """A one-element CTRL header with the given fields (others zero)."""
    return record(CTRL_DTYPE, kind=kind, **fields)


def record(dtype: np.dtype, **fields) -> np.ndarray:
    """A one-element message of `dtype` with the given fields (others zero)."""
    msg = np.zeros(1, dtype)
    for name, value in fields.items():
        msg[name] = value
    return msg


def update_message(n_params: int) -> np.ndarray:
    """An uninitialised update message buffer (bytes) for a model of n_params."""
    return np.empty(HEADER_BYTES + 4 * n_params, np.uint8)


def update_header(buf: np.ndarray) -> np.ndarray:
    """The header view (one UPDATE_DTYPE record) of an update message."""
    return buf[:HEADER_BYTES].view(UPDATE_DTYPE)


def update_payload(buf: np.ndarray) -> np.ndarray:
    """The flat float32 delta view of an update message."""
    return buf[HEADER_BYTES:].view(np.float32)
