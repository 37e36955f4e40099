"""ServerlessLLM's published loading results (sllm-store cannot run here: CUDA only, Python 3.10, torch 2.7 pin).

Only what was published is typed in: load times, speedups, the hardware and its ceiling. Throughputs, speedups
from times and fractions of the ceiling are computed from these by ``experiments.loading.reference``. Sources:
``ANCHORS.md`` §1 and §2 (which cite the ServerlessLLM repository's ``sllm_store/README.md`` and the OSDI'24 paper).
"""

from __future__ import annotations

from dataclasses import dataclass

H100_HOST = "8x H100 SXM host, NVMe 29.4 GB/s (sllm-store repo, Dec 2025)"
PAPER_TESTBED = "8x A5000 24 GB server, 1 TB DRAM, 2x NVMe RAID0 ~12 GB/s (ServerlessLLM, OSDI'24)"


@dataclass(frozen=True)
class PublishedLoad:
    """One published sllm-store loading result.

    ``cache_state`` uses this harness's words: ``cold`` = read from the SSD (the repo's "Random": distinct copies
    in random order), ``hot`` = already in sllm-store's pinned DRAM pool (the repo's "Cached"). ``model`` is a
    ``conf/model`` option, so checkpoint bytes come from the zoo's exact count for that architecture.
    Times (seconds) where published; otherwise the published speedups. ``ceiling_gbps`` is the bound of the
    path the bytes took on that hardware (``None`` where the source gives no absolute time to compare).
    """

    source: str
    model: str
    dtype: str
    cache_state: str
    hardware: str
    ceiling_name: str
    ceiling_gbps: float | None
    load_s: float | None = None
    safetensors_load_s: float | None = None
    torch_load_s: float | None = None
    published_speedup_vs_safetensors: float | None = None
    published_speedup_vs_torch: float | None = None
    published_bytes: float | None = None
    note: str = ""


SLLM_STORE_RESULTS: tuple[PublishedLoad, ...] = (
    PublishedLoad(
        source="sllm-store repo README", model="qwen3-32b", dtype="fp16", cache_state="cold", hardware=H100_HOST,
        ceiling_name="nvme_read", ceiling_gbps=29.4, load_s=3.22, safetensors_load_s=20.59, published_bytes=65.5e9,
        published_speedup_vs_safetensors=6.4,
        note="'Random': 30 distinct copies loaded in random order, from NVMe to one GPU; ~20 GB/s published"),
    PublishedLoad(
        source="sllm-store repo README", model="qwen3-32b", dtype="fp16", cache_state="hot", hardware=H100_HOST,
        ceiling_name="pcie_gen5_x16_h2d", ceiling_gbps=55.0, load_s=1.25, safetensors_load_s=12.47,
        published_bytes=65.5e9, published_speedup_vs_safetensors=9.95,
        note="'Cached': from sllm-store's pinned DRAM pool (safetensors from the page cache); ~52 GB/s published, "
             "'≈ one PCIe Gen5 x16 link'; ceiling = the top of the 50-55 GB/s published for PCIe Gen5 x16 H2D"),
    PublishedLoad(
        source="sllm-store repo README", model="llama-3.1-8b", dtype="fp16", cache_state="cold", hardware=H100_HOST,
        ceiling_name="nvme_read", ceiling_gbps=29.4, load_s=0.68, safetensors_load_s=4.44,
        published_speedup_vs_safetensors=6.54, note="'Random' scenario (Llama-3.1-8B-Instruct)"),
    PublishedLoad(
        source="ServerlessLLM paper (secondary)", model="opt-2.7b", dtype="fp16", cache_state="cold",
        hardware=PAPER_TESTBED, ceiling_name="nvme_raid0_read", ceiling_gbps=None,
        published_speedup_vs_torch=6.0, published_speedup_vs_safetensors=3.6,
        note="low ends of the published ranges (6-8.2x vs torch.load, 3.6-4.7x vs safetensors); the paper reports "
             "~100% of fio's NVMe RAID0 bandwidth but no absolute load time in our sources"),
    PublishedLoad(
        source="ServerlessLLM paper (secondary)", model="llama-2-70b", dtype="fp16", cache_state="cold",
        hardware=PAPER_TESTBED, ceiling_name="nvme_raid0_read", ceiling_gbps=None,
        published_speedup_vs_torch=8.2, published_speedup_vs_safetensors=4.7,
        note="high ends of the published ranges (8.2x is LLaMA-2-70B vs torch.load; pairing 4.7x with it is by "
             "range end)"),
)
