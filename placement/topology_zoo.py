"""Topology Zoo graphs (Repetita format, delays in µs): RTT = 2 × shortest-path delay (Sun et al. §VI)."""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from harness.paths import shared_file
from placement.base import DisconnectedTopologyError, Network, TopologyFormatError
from placement.catalog import server_types


def read_graph(path: Path) -> tuple[list[str], list[tuple[int, int, float]]]:
    """Parse ``NODES n`` / header / n nodes, ``EDGES e`` / header / e ``label src dest weight bw delay``
    lines."""
    if not path.is_file():
        # One message argument: Hydra's instantiate error shows only repr(args), which for OSError(errno, text)
        # would drop the file name.
        raise FileNotFoundError(f"{path}: topology graph file not found (topology.path or topology.file); "
                                f"give an existing Repetita-format .graph file")
    lines = path.read_text().splitlines()

    def expect_count(idx: int, word: str) -> int:
        if idx >= len(lines):
            raise TopologyFormatError(str(path), idx + 1, f"expected '{word} <count>', found end of file")
        parts = lines[idx].split()
        if len(parts) != 2 or parts[0] != word or not parts[1].isdigit():
            raise TopologyFormatError(str(path), idx + 1, f"expected '{word} <count>', found {lines[idx]!r}")
        return int(parts[1])

    n = expect_count(0, "NODES")
    if len(lines) < 2 + n:
        raise TopologyFormatError(str(path), len(lines), f"file ends before the {n} node lines")
    nodes = []
    for i in range(2, 2 + n):
        parts = lines[i].split()
        if len(parts) != 3:
            raise TopologyFormatError(str(path), i + 1, f"node line needs 'label x y', found {lines[i]!r}")
        nodes.append(parts[0])
    idx = 2 + n
    while idx < len(lines) and not lines[idx].strip():
        idx += 1
    e = expect_count(idx, "EDGES")
    edges = []
    for i in range(idx + 2, idx + 2 + e):
        if i >= len(lines):
            raise TopologyFormatError(str(path), i + 1, f"file ends before the {e} edge lines")
        parts = lines[i].split()
        try:
            src, dst, delay = int(parts[1]), int(parts[2]), float(parts[5])
        except (IndexError, ValueError):
            raise TopologyFormatError(str(path), i + 1,
                                      f"edge line needs 'label src dest weight bw delay', found {lines[i]!r}"
                                      ) from None
        if not (0 <= src < n and 0 <= dst < n):
            raise TopologyFormatError(str(path), i + 1, f"edge endpoint outside 0..{n - 1}: {src} -> {dst}")
        if delay < 0:
            raise TopologyFormatError(str(path), i + 1, f"negative delay {delay} µs")
        edges.append((src, dst, delay))
    return nodes, edges


def shortest_delays_us(n: int, edges: list[tuple[int, int, float]], sources: list[int]) -> np.ndarray:
    """Dijkstra (heapq) from each source: ``out[k, v]`` = shortest delay source_k → v in µs (inf if
    unreachable)."""
    adj: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for src_node, dst_node, delay in edges:
        adj[src_node].append((dst_node, delay))
    out = np.full((len(sources), n), np.inf)
    for k, src in enumerate(sources):
        dist = out[k]
        dist[src] = 0.0
        heap: list[tuple[float, int]] = [(0.0, int(src))]
        while heap:
            d, u = heapq.heappop(heap)
            if d > dist[u]:
                continue
            for v, w in adj[u]:
                if d + w < dist[v]:
                    dist[v] = d + w
                    heapq.heappush(heap, (d + w, v))
    return out


def check_connected(path: str, nodes: list[str], edges: list[tuple[int, int, float]]) -> None:
    """DisconnectedTopologyError unless every node reaches node 0 and node 0 reaches every node (edges are
    directed in the file), so that any seeded choice of client and server nodes has finite RTTs."""
    n = len(nodes)
    if n == 0:
        raise DisconnectedTopologyError(path, [], 0)
    forward = np.isfinite(shortest_delays_us(n, edges, [0])[0])
    backward = np.isfinite(shortest_delays_us(n, [(d, s, w) for s, d, w in edges], [0])[0])
    bad = [nodes[v] for v in range(n) if not (forward[v] and backward[v])]
    if bad:
        raise DisconnectedTopologyError(path, bad, n)


class TopologyZooTopology:
    """C servers and ``num_clients`` clients on random nodes of a Topology Zoo graph; a fraction η are
    A100s."""

    def __init__(self, file: str = "Abvt.graph", num_servers: int = 9, a100_fraction: float = 0.2,
                 num_clients: int = 1, path: str | None = None,
                 extra_server_types: Mapping[str, Mapping[str, Any]] | None = None,
                 a100_type: str = "a100", mig_type: str = "mig") -> None:
        if num_servers < 1:
            raise ValueError(f"num_servers={num_servers} is invalid; allowed: >= 1")
        if not 0.0 <= a100_fraction <= 1.0:
            raise ValueError(f"a100_fraction={a100_fraction} is invalid; allowed: 0 <= eta <= 1")
        if num_clients < 1:
            raise ValueError(f"num_clients={num_clients} is invalid; allowed: >= 1")
        self.path = Path(path) if path else shared_file("data", "topologies", file)
        self.nodes, self.edges = read_graph(self.path)
        check_connected(str(self.path), self.nodes, self.edges)
        types = server_types(extra_server_types)
        for key, name in (("a100_type", a100_type), ("mig_type", mig_type)):
            if name not in types:
                raise ValueError(f"{key}={name!r} is not a server type; allowed: {sorted(types)} "
                                 "(or define it under extra_server_types)")
        self.a100, self.mig = types[a100_type], types[mig_type]
        self.fast_type = self.a100  # what the results' a100_share counts
        self.num_servers, self.a100_fraction, self.num_clients = num_servers, a100_fraction, num_clients

    def build(self, rng: np.random.Generator) -> Network:
        """Pick client and server nodes with ``rng`` (servers on distinct nodes while C ≤ n) and compute
        RTTs."""
        n = len(self.nodes)
        server_nodes = rng.choice(n, size=self.num_servers, replace=self.num_servers > n)
        client_nodes = rng.choice(n, size=self.num_clients, replace=self.num_clients > n)
        num_a100 = round(self.a100_fraction * self.num_servers)
        is_a100 = np.zeros(self.num_servers, dtype=bool)
        is_a100[rng.choice(self.num_servers, size=num_a100, replace=False)] = True
        sources = sorted({int(v) for v in server_nodes} | {int(v) for v in client_nodes})
        delays = shortest_delays_us(n, self.edges, sources)
        row = {v: k for k, v in enumerate(sources)}
        client_rtt = np.array([[delays[row[int(c)], int(s)] for s in server_nodes] for c in client_nodes])
        server_rtt = np.array([[delays[row[int(a)], int(b)] for b in server_nodes] for a in server_nodes])
        servers = tuple(self.a100 if a else self.mig for a in is_a100)
        clients = tuple(self.nodes[int(c)] for c in client_nodes)
        # RTT = 2 × one-way shortest-path delay; µs → s.
        return Network(servers, clients, 2 * client_rtt / 1e6, 2 * server_rtt / 1e6,
                       tuple(0 for _ in clients))
