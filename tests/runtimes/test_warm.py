"""What a runtime does before its cold starts: which modules, imports without tensors, device init, the warm-up
forward, and giving memory back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from harness.config import option_dict
from runtimes.warm import BASE_MODULES, init_device, modules_of, preimport, rss_bytes, warm_forward

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def test_modules_of_lists_each_target_module_once_in_order() -> None:
    configs = [option_dict("loader", "safetensors"), {"_target_": "tests.harness.fakes.SlowLoader", "sleep_s": 1},
               option_dict("loader", "safetensors"), {"_target_": "Bare"}, {}]
    assert modules_of(configs) == ["loaders.safetensors", "tests.harness.fakes"]


def test_preimport_imports_modules_and_each_models_modeling_code_in_a_fresh_process() -> None:
    """In a new interpreter (this one imported everything long ago): the modules and LLaMA's modeling module are
    there afterwards, the loader's module is not unless listed."""
    llama = json.dumps(option_dict("model", "tiny-llama"))
    code = (
        "import json, sys\n"
        "from runtimes.warm import preimport\n"
        f"took = preimport(['json', 'loaders.safetensors'], [json.loads({llama!r})])\n"
        "print(json.dumps([took, [m in sys.modules for m in ('loaders.safetensors', "
        "'transformers.models.llama.modeling_llama', 'transformers.models.opt.modeling_opt')]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    took, present = json.loads(out.stdout.splitlines()[-1])
    assert took > 0
    assert present == [True, True, False]


def test_preimport_of_a_missing_module_raises() -> None:
    with pytest.raises(ModuleNotFoundError, match="coldstart_no_such_module"):
        preimport(["json", "coldstart_no_such_module"])


def test_base_modules_import() -> None:
    assert preimport(BASE_MODULES) >= 0


def test_init_device_and_warm_forward_on_cpu() -> None:
    assert 0 <= init_device("cpu") < 5  # nothing to create on the CPU
    took = warm_forward([option_dict("model", "tiny-opt"), option_dict("model", "tiny-llama")], "fp16", "cpu", 8)
    assert took > 0


def test_rss_bytes_is_this_process_rss() -> None:
    ours, theirs = rss_bytes(), psutil.Process().memory_info().rss
    assert abs(ours - theirs) < 0.05 * theirs


# Run in a fresh interpreter: in the pytest process, hundreds of earlier tests leave freed, still-resident heap pages
# that glibc hands out again, so new allocations need not raise RSS at all (issue 25: it depended on what ran before).
RELEASE_PROBE = """
import gc, json
from runtimes.warm import release_memory, rss_bytes
base = rss_bytes()
freed, kept = [], []
for _ in range(3500):  # interleaved on the heap: freeing one kind leaves holes, not a free top to shrink
    freed.append(bytes(60_000))
    kept.append(bytes(600))
peak = rss_bytes()
del freed
gc.collect()
before_trim = rss_bytes()
release_memory("cpu")
print(json.dumps({"base": base, "peak": peak, "before_trim": before_trim, "after": rss_bytes(), "kept": len(kept)}))
"""


def test_release_memory_gives_freed_heap_pages_back() -> None:
    """Blocks freed between blocks still held stay resident until glibc's heap is trimmed (in a process whose heap
    holds nothing else, so the numbers do not depend on what ran before)."""
    out = subprocess.run([sys.executable, "-c", RELEASE_PROBE], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout.splitlines()[-1])
    grown = m["peak"] - m["base"]
    assert grown > 100 * MiB  # most of the 3500 × 60 kB became resident (calloc leaves fresh heap pages untouched)
    assert m["before_trim"] - m["base"] > 0.7 * grown  # freeing alone gives almost nothing back (the holes stay)
    assert m["after"] - m["base"] < 0.3 * grown  # the trim does
    assert m["kept"] == 3500
