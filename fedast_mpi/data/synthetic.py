"""The `synthetic` dataset: LEAF Synthetic(alpha, beta) of Li et al. (FedProx), one distribution
per client."""

import numpy as np

from fedast_mpi.errors import ConfigError


def generate(args, n_clients: int, samples_per_client: int, rng: np.random.Generator):
    """Draw every client's local distribution and samples; returns (train_x, train_y, test_x,
    test_y).

    Client k: u_k ~ N(0, alpha), B_k ~ N(0, beta) (alpha and beta are standard deviations, as
    `np.random.normal` in the FedProx generator); W_k ~ N(u_k, 1) [classes x dim],
    b_k ~ N(u_k, 1); v_k ~ N(B_k, 1) per feature; x ~ N(v_k, diag(j^-1.2)); y = argmax(W_k x + b_k).
    Client k's train samples are rows k*spc..(k+1)*spc-1, its test samples rows
    k*tpc..(k+1)*tpc-1 of the test set (the union of all clients' test samples).
    """
    alpha, beta = float(args["alpha"]), float(args["beta"])
    dim, classes, tpc = int(args["dim"]), int(args["classes"]), int(args["test_per_client"])
    if alpha < 0 or beta < 0 or dim < 1 or classes < 2 or tpc < 1 or samples_per_client < 1:
        raise ConfigError("dataset 'synthetic' needs alpha, beta >= 0, dim >= 1, classes >= 2, "
                          f"test_per_client >= 1 and samples_per_client >= 1, got {dict(args)}")
    sd = np.arange(1, dim + 1, dtype=np.float64) ** -0.6  # sqrt of diag(j^-1.2)
    n = samples_per_client + tpc
    xs, ys = [], []
    for _ in range(n_clients):
        u, b_mean = rng.normal(0.0, alpha), rng.normal(0.0, beta)
        w = rng.normal(u, 1.0, size=(classes, dim))
        b = rng.normal(u, 1.0, size=classes)
        v = rng.normal(b_mean, 1.0, size=dim)
        x = v + sd * rng.standard_normal((n, dim))
        xs.append(x)
        ys.append(np.argmax(x @ w.T + b, axis=1))
    x = np.stack(xs).astype(np.float32)
    y = np.stack(ys).astype(np.int64)
    spc = samples_per_client
    return (x[:, :spc].reshape(-1, dim), y[:, :spc].reshape(-1),
            x[:, spc:].reshape(-1, dim), y[:, spc:].reshape(-1))
