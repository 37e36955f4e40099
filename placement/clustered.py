"""Clustered testbed of Sun et al. §VI: cluster 0 clients, 1 = A100s + clients, 2 = MIGs + clients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from placement.base import Network
from placement.catalog import server_types


class ClusteredTopology:
    """Three clusters, ``intra_rtt_ms`` inside a cluster and ``inter_rtt_ms`` between clusters (§VI, Table
    III)."""

    def __init__(self, a100_count: int = 2, mig_count: int = 7, clients_per_cluster: int = 1,
                 intra_rtt_ms: float = 5.0, inter_rtt_ms: float = 100.0,
                 extra_server_types: Mapping[str, Mapping[str, Any]] | None = None,
                 a100_type: str = "a100", mig_type: str = "mig") -> None:
        for key, value in (("a100_count", a100_count), ("mig_count", mig_count)):
            if value < 0:
                raise ValueError(f"{key}={value} is invalid; allowed: >= 0")
        if a100_count + mig_count < 1:
            raise ValueError("a100_count + mig_count must be >= 1 (no servers)")
        if clients_per_cluster < 1:
            raise ValueError(f"clients_per_cluster={clients_per_cluster} is invalid; allowed: >= 1")
        if intra_rtt_ms < 0 or inter_rtt_ms < 0:
            raise ValueError(f"intra_rtt_ms/inter_rtt_ms=({intra_rtt_ms}, {inter_rtt_ms}) invalid; "
                             "allowed: >= 0")
        types = server_types(extra_server_types)
        for key, name in (("a100_type", a100_type), ("mig_type", mig_type)):
            if name not in types:
                raise ValueError(f"{key}={name!r} is not a server type; allowed: {sorted(types)}")
        self.fast_type = types[a100_type]  # what the results' a100_share counts
        self.servers = (types[a100_type],) * a100_count + (types[mig_type],) * mig_count
        self.server_cluster = np.array([1] * a100_count + [2] * mig_count)
        self.client_cluster = np.repeat(np.arange(3), clients_per_cluster)
        self.intra_s, self.inter_s = intra_rtt_ms / 1e3, inter_rtt_ms / 1e3

    def _rtt(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.where(a[:, None] == b[None, :], self.intra_s, self.inter_s)

    def build(self, rng: np.random.Generator) -> Network:
        """The network (deterministic: ``rng`` is unused, kept for the topology contract)."""
        server_rtt = self._rtt(self.server_cluster, self.server_cluster)
        np.fill_diagonal(server_rtt, 0.0)
        clients = tuple(f"c{g}_{i}" for i, g in enumerate(self.client_cluster))
        return Network(self.servers, clients, self._rtt(self.client_cluster, self.server_cluster), server_rtt,
                       tuple(int(g) for g in self.client_cluster))
