"""The placement contract: plain data (model, servers, network, workload), decisions, protocols and errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

GB = 1e9  # the paper quotes decimal GB (s_m ≈ 1.3234 GB, s_c = 8.49 MB)
GIB = 2**30


class InfeasiblePlacementError(RuntimeError):
    """Server memory cannot cover all L blocks for the design concurrency |R|."""

    DEFAULT_FIX = "add servers, lower the design concurrency |R| or the output length l_max"

    def __init__(self, shortfall_blocks: int, shortfall_gb: float, detail: str = "", fix: str | None = None) -> None:
        self.shortfall_blocks = shortfall_blocks
        self.shortfall_gb = shortfall_gb
        self.fix = fix or self.DEFAULT_FIX
        super().__init__(
            f"infeasible placement: {shortfall_blocks} block(s) short, about {shortfall_gb:.3f} GB of server "
            f"memory missing{'; ' + detail if detail else ''}. Fix: {self.fix}."
        )


class NoRouteError(RuntimeError):
    """No chain of servers covers blocks 0..L-1 for a client under the current placement."""


class DisconnectedTopologyError(ValueError):
    """A topology graph has nodes that cannot reach each other (RTTs would be infinite)."""

    def __init__(self, path: str, unreachable: list[str], total: int) -> None:
        self.path = path
        self.unreachable = unreachable
        shown = ", ".join(unreachable[:5]) + (" ..." if len(unreachable) > 5 else "")
        super().__init__(
            f"{path}: graph is disconnected: {len(unreachable)} of {total} nodes ({shown}) cannot reach or be "
            f"reached from node 0. Fix: add the missing EDGES lines or pick a connected graph."
        )


class TopologyFormatError(ValueError):
    """A topology file is malformed; names the file and the 1-based line number."""

    def __init__(self, path: str, line_no: int, message: str) -> None:
        self.path = path
        self.line_no = line_no
        super().__init__(f"{path}, line {line_no}: {message}")


def _require(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r} is invalid; allowed: {allowed}")


@dataclass(frozen=True)
class BlockModel:
    """A model as L identical blocks (Sun et al. §III): block weights s_m and per-session cache s_c.

    s_m follows PETALS' ``get_block_size``: parameters of one block × bits per parameter / 8 × (1 + 1%
    metadata overhead). BLOOM-176B: 12h² + 13h = 2,466,437,120 parameters at NF4 4.25 bits (4-bit codes +
    fp16 absmax per 64 values) → 2,466,437,120 × 4.25 / 8 × 1.01 = 1.3234 GB, the paper's s_m.
    """

    name: str
    num_blocks: int
    block_params: int
    d_model: int
    weight_bits: float = 4.25
    metadata_overhead: float = 0.01
    cache_dtype_bytes: int = 2
    reserve_gib: float | None = None  # None: PETALS' rule below; 0 for synthetic test models
    kv_dim: int | None = None  # width of K (and V) per token; None = d_model (no grouped-query attention)

    def __post_init__(self) -> None:
        _require(self.num_blocks >= 1, "num_blocks", self.num_blocks, ">= 1")
        _require(self.block_params >= 1, "block_params", self.block_params, ">= 1")
        _require(self.d_model >= 1, "d_model", self.d_model, ">= 1")
        _require(self.weight_bits > 0, "weight_bits", self.weight_bits, "> 0")
        _require(self.reserve_gib is None or self.reserve_gib >= 0, "reserve_gib", self.reserve_gib,
                 "null or >= 0")
        _require(self.metadata_overhead >= 0, "metadata_overhead", self.metadata_overhead, ">= 0")
        _require(self.kv_dim is None or 1 <= self.kv_dim <= self.d_model, "kv_dim", self.kv_dim,
                 f"null or 1..d_model={self.d_model}")

    @property
    def block_gb(self) -> float:
        """s_m in GB (PETALS get_block_size, see class docstring)."""
        return self.block_params * self.weight_bits / 8 * (1 + self.metadata_overhead) / GB

    def cache_gb(self, tokens: int) -> float:
        """s_c in GB for one session on one block: 2 (K, V) · d_model · tokens · dtype bytes (Sun et al.
        §III); with grouped-query attention K and V are ``kv_dim`` = d_model · kv_heads / heads wide."""
        width = self.d_model if self.kv_dim is None else self.kv_dim
        return 2 * width * tokens * self.cache_dtype_bytes / GB

    @property
    def reserve_gb(self) -> float:
        """PETALS' autograd reserve, 2 GiB × d_model / 14336 (ANCHORS §3), kept free on every server."""
        if self.reserve_gib is not None:
            return self.reserve_gib * GIB / GB
        return 2 * GIB * self.d_model / 14336 / GB

    @classmethod
    def from_zoo(cls, spec: object, weight_bits: float = 4.25) -> BlockModel:
        """Build from a ``harness.zoo.ModelSpec`` (counts one decoder layer's parameters on the meta
        device)."""
        layer_bytes = spec.layer_bytes("fp16")  # type: ignore[attr-defined]
        hf = dict(getattr(spec, "hf_config", {}) or {})
        d_model = spec.hidden_size  # type: ignore[attr-defined]
        heads, kv_heads = hf.get("num_attention_heads"), hf.get("num_key_value_heads")
        kv_dim = d_model * int(kv_heads) // int(heads) if heads and kv_heads and kv_heads != heads else None
        return cls(
            name=spec.name,  # type: ignore[attr-defined]
            num_blocks=spec.num_layers,  # type: ignore[attr-defined]
            block_params=layer_bytes // 2,
            d_model=d_model,
            weight_bits=weight_bits,
            kv_dim=kv_dim,
        )


@dataclass(frozen=True)
class ServerType:
    """A GPU kind: memory, per-block decode time τ and prefill time τ^I = slope·l^I + base (Sun et al.
    §VI)."""

    name: str
    mem_gb: float
    tau_s: float
    tau_in_slope_s: float
    tau_in_base_s: float
    max_blocks: int | None = None
    inference_rps: float = 1.0  # PETALS throughput figures (ANCHORS §3), used by PETALS' policies only
    network_rps: float = 1.0

    def __post_init__(self) -> None:
        _require(self.mem_gb > 0, f"{self.name}.mem_gb", self.mem_gb, "> 0")
        _require(self.tau_s > 0, f"{self.name}.tau_s", self.tau_s, "> 0")
        _require(self.tau_in_slope_s >= 0, f"{self.name}.tau_in_slope_s", self.tau_in_slope_s, ">= 0")
        _require(self.tau_in_base_s >= 0, f"{self.name}.tau_in_base_s", self.tau_in_base_s, ">= 0")
        _require(self.max_blocks is None or self.max_blocks >= 1, f"{self.name}.max_blocks", self.max_blocks,
                 "null or >= 1")
        _require(self.inference_rps > 0 and self.network_rps > 0, f"{self.name}.inference_rps/network_rps",
                 (self.inference_rps, self.network_rps), "> 0")

    def tau_in_s(self, input_tokens: int) -> float:
        """Prefill time per block for l^I input tokens (linear fit, Sun et al. §VI)."""
        return self.tau_in_slope_s * input_tokens + self.tau_in_base_s


@dataclass(frozen=True, eq=False)
class Network:
    """Servers and clients with RTTs in seconds: ``client_rtt_s[c, j]`` and ``server_rtt_s[i, j]``."""

    servers: tuple[ServerType, ...]
    clients: tuple[str, ...]
    client_rtt_s: np.ndarray
    server_rtt_s: np.ndarray
    client_groups: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        s, c = len(self.servers), len(self.clients)
        _require(s >= 1, "servers", s, ">= 1 server")
        _require(c >= 1, "clients", c, ">= 1 client")
        _require(self.client_rtt_s.shape == (c, s), "client_rtt_s.shape", self.client_rtt_s.shape,
                 f"({c}, {s})")
        _require(self.server_rtt_s.shape == (s, s), "server_rtt_s.shape", self.server_rtt_s.shape,
                 f"({s}, {s})")
        _require(bool(np.all(self.client_rtt_s >= 0)) and bool(np.all(self.server_rtt_s >= 0)), "rtt_s",
                 "negative", "finite non-negative RTTs")


@dataclass(frozen=True)
class Overheads:
    """Fixed costs of the authors' simulator (Sun et al. §VI / ANCHORS §4), in seconds."""

    per_token_s: float = 0.100  # per hop, per generated token, on top of the RTT
    input_base_s: float = 0.067  # per hop for the prefill message: 0.7049·l^I ms + 67 ms
    input_per_token_s: float = 0.0007049
    initial_s: float = 0.070  # once per request
    petals_serialization_s: float = 0.018  # PETALS' edge-weight constant


@dataclass(frozen=True, eq=False)
class Problem:
    """Everything a placement or routing policy sees: model, network, workload and design concurrency |R|."""

    model: BlockModel
    network: Network
    input_tokens: int = 20
    max_tokens: int = 128
    design_concurrency: int = 1
    overheads: Overheads = field(default_factory=Overheads)

    def __post_init__(self) -> None:
        _require(self.input_tokens >= 1, "input_tokens", self.input_tokens, ">= 1")
        _require(self.max_tokens >= 1, "max_tokens", self.max_tokens, ">= 1")
        _require(self.design_concurrency >= 1, "design_concurrency", self.design_concurrency, ">= 1")

    @property
    def num_blocks(self) -> int:
        return self.model.num_blocks

    @property
    def cache_gb(self) -> float:
        """s_c for this workload (l^I + l_max tokens)."""
        return self.model.cache_gb(self.input_tokens + self.max_tokens)

    def usable_mem_gb(self, j: int) -> float:
        """M_j: server memory minus the runtime reserve (the same serving stack runs every policy)."""
        return self.network.servers[j].mem_gb - self.model.reserve_gb


@dataclass(frozen=True)
class Placement:
    """Server j hosts blocks ``start[j] .. start[j]+count[j]-1`` (0-based; count 0 = unused).

    ``cache_slots[j]`` is the server's attention-cache capacity in block-sessions (one request on one block).
    """

    start: tuple[int, ...]
    count: tuple[int, ...]
    cache_slots: tuple[int, ...]
    policy: str = ""

    def end(self, j: int) -> int:
        return self.start[j] + self.count[j]

    def covered(self, num_blocks: int) -> bool:
        """True when every block 0..L-1 is hosted by some server."""
        hit = np.zeros(num_blocks, dtype=bool)
        for a, m in zip(self.start, self.count, strict=True):
            hit[a:a + m] = True
        return bool(hit.all())


@dataclass(frozen=True)
class Hop:
    """Server ``server`` processes blocks ``first .. last-1`` for the request."""

    server: int
    first: int
    last: int

    @property
    def blocks(self) -> int:
        return self.last - self.first


@dataclass(frozen=True)
class Route:
    """An ordered chain of hops from block 0 to block L (client-centric relaying)."""

    hops: tuple[Hop, ...]

    def label(self) -> str:
        return ">".join(f"{h.server}[{h.first}:{h.last}]" for h in self.hops)


@dataclass(frozen=True)
class SlotView:
    """Read-only cache state for online routers: free slots now and, per server, (seconds from now, slots)
    that running sessions release."""

    free: tuple[int, ...]
    releases: tuple[tuple[tuple[float, int], ...], ...]

    @classmethod
    def idle(cls, placement: Placement) -> SlotView:
        return cls(placement.cache_slots, tuple(() for _ in placement.cache_slots))


class PlacementPolicy(Protocol):
    """``conf/placement/<name>.yaml`` → ``placement/<name>.py: …Placement``."""

    def place(self, problem: Problem, rng: np.random.Generator) -> Placement: ...


class Router(Protocol):
    """``conf/routing/<name>.yaml`` → ``placement/<name>.py: …Router``."""

    waits_in_queue: bool  # True: wait for cache slots; False: retry with PETALS backoff
    allocation_delay_s: float

    def route(self, problem: Problem, placement: Placement, client: int, view: SlotView) -> Route: ...
