"""The clients' shards of a federated run's training rows (``tunesmith federate``).

Three ways, as federated studies cut one file: by a column that names each row's site (the real
case: one client per site), or a seeded split of the rows, either IID (each client a random
equal share) or non-IID by label, where each label's rows are spread over the clients in
proportions drawn from a symmetric Dirichlet(alpha) (Hsu et al. 2019, the field's usual label
skew: a small alpha such as 0.3 leaves each client with a few labels mostly). The draws are a
function of the seed only. Written here because it is a few lines of numpy; Flower's own
partitioners (flwr-datasets) read Hugging Face datasets, not the task's prepared table.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tunesmith.errors import TunesmithError

MIN_ROWS = 2
"""Fewest rows a client may hold: a Dirichlet draw that leaves one with fewer is drawn again."""
DRAWS = 100


def iid_shards(count: int, clients: int, *, seed: int) -> list[np.ndarray]:
    """The sorted row positions of each client: a random permutation cut into ``clients`` parts
    whose sizes differ by at most one."""
    if count < clients * MIN_ROWS:
        raise TunesmithError(f"{count} training rows cannot be shared among {clients} clients "
                             f"(at least {MIN_ROWS} each): use fewer clients (federated.clients)")  # fmt: skip
    order = np.random.default_rng(seed).permutation(count)
    return [np.sort(part) for part in np.array_split(order, clients)]


def dirichlet_shards(labels: np.ndarray, clients: int, *, alpha: float, seed: int) -> list[np.ndarray]:
    """Each label's rows spread over the clients in proportions drawn from Dirichlet(alpha);
    drawn again (up to 100 times, each a function of the seed) while a client holds fewer
    than 2 rows.

    Raises:
        TunesmithError: no draw gave every client 2 rows (too few rows, or alpha too small).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    for _ in range(DRAWS):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for label in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for client, piece in enumerate(np.split(rows, cuts)):
                parts[client].extend(piece.tolist())
        if min(len(p) for p in parts) >= MIN_ROWS:
            return [np.sort(np.asarray(p, dtype=int)) for p in parts]
    raise TunesmithError(
        f"no Dirichlet(alpha={alpha}) split of {len(labels)} training rows gave each of {clients} clients "
        f"{MIN_ROWS} rows in {DRAWS} draws: use fewer clients, a larger federated.alpha, or partition=iid"
    )


def site_shards(sites: np.ndarray, *, column: str) -> tuple[list[np.ndarray], list[str]]:
    """One client per distinct value of ``sites`` (in sorted order; a missing value is its own
    site, "(missing)"), with the row positions of each, and the site names.

    Raises:
        TunesmithError: a single site (nothing to federate).
    """
    names = np.asarray(["(missing)" if pd.isna(v) else str(v) for v in sites], dtype=object)
    found = sorted(set(names.tolist()))
    if len(found) < 2:
        raise TunesmithError(f"federated.site_column={column!r} names one site only ({found[0]!r}): "
                             "a federation needs two or more")  # fmt: skip
    return [np.flatnonzero(names == site) for site in found], found


def shard_summary(shards: list[np.ndarray], labels: np.ndarray | None, names: list[str]) -> list[dict[str, Any]]:
    """Per client: its name, row count and (with labels) rows per label."""
    rows = []
    for name, shard in zip(names, shards):
        entry: dict[str, Any] = {"client": name, "rows": int(len(shard))}
        if labels is not None:
            values, counts = np.unique(np.asarray(labels)[shard], return_counts=True)
            entry["labels"] = {str(v): int(c) for v, c in zip(values, counts)}
        rows.append(entry)
    return rows
