"""Shared fixtures: a per-test checkpoint store, composed configs, and the gpu marker's skip; every test process
(each pytest-xdist worker too) gets its own checkpoint cache, results folder and DRAM tier, so no test reads what
another process wrote, and nothing lands in the user's own ``~/.cache/coldstart``, ``results/`` or DRAM tier."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from harness.checkpoints import CheckpointStore
from harness.config import compose_config, instantiate_option
from harness.zoo import ModelSpec

# what each test process points the harness at (conf/ reads these variables); removed when the process ends
ISOLATED_ENV = ("COLDSTART_CACHE", "COLDSTART_RESULTS", "COLDSTART_DRAM_DIR")
_ISOLATED: pytest.StashKey[list[Path]] = pytest.StashKey()


def pytest_configure(config: pytest.Config) -> None:
    # A suite started as a background job of a script (`make test &`, nohup) inherits SIGINT ignored: Python then
    # installs no Ctrl-C handler, and the tests that interrupt a run wait for an interrupt that never comes. Restore
    # it (a handled signal is reset to its default across exec, so the processes the tests start get it back too).
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    worker = getattr(config, "workerinput", {}).get("workerid", "main")
    base = Path(tempfile.mkdtemp(prefix=f"coldstart-tests-{worker}-"))
    shm = Path("/dev/shm")
    dram = Path(tempfile.mkdtemp(prefix=f"coldstart-tests-{worker}-dram-", dir=shm)) if shm.is_dir() else base / "dram"
    os.environ["COLDSTART_CACHE"] = str(base / "cache")
    os.environ["COLDSTART_RESULTS"] = str(base / "results")
    os.environ["COLDSTART_DRAM_DIR"] = str(dram)
    config.stash[_ISOLATED] = [base, dram]


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in config.stash.get(_ISOLATED, []):
        shutil.rmtree(path, ignore_errors=True)


RAY_GROUP = "ray"


def _uses_ray(item: pytest.Item) -> bool:
    """The test joins the session's local Ray (``ray_local``), directly or through a ``ray`` executor parameter."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return bool({"ray_local", "ray_executor"} & set(getattr(item, "fixturenames", ()))) or "ray" in params.values()


def _shared_fixture_group(item: pytest.Item) -> str | None:
    """Tests sharing a module- or class-scoped fixture (a dry run, a pool, a worker) run in one xdist worker, which
    sets it up once, instead of once per worker; their module names the group."""
    info = getattr(item, "_fixtureinfo", None)  # pytest's own record of the item's fixtures (no public accessor)
    defs = getattr(info, "name2fixturedefs", {})
    if any(d[-1].scope in ("module", "class") for d in defs.values() if d):
        return getattr(getattr(item, "module", None), "__name__", None)
    return None


def _start_order(item: pytest.Item) -> tuple[bool, float]:
    """``slow`` tests first, the longest (``@pytest.mark.slow(seconds=...)``, a rough figure) first among them."""
    slow = item.get_closest_marker("slow")
    return slow is None, -float(slow.kwargs.get("seconds", 0)) if slow else 0.0


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks and pytest-random-order shuffles
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``slow`` tests first (:func:`_start_order`), so parallel workers do not end on one long test; tests that
    use Ray in one xdist worker (one local Ray instance, 2 CPUs, per run), and so do the tests of a module that share
    a module-scoped fixture; without CUDA the ``gpu`` tests are reported as skipped."""
    items.sort(key=_start_order)  # stable: file order otherwise
    for item in items:
        group = RAY_GROUP if _uses_ray(item) else _shared_fixture_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible): run on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_host_arena_left_installed() -> Iterator[None]:
    """A test that leaves a host arena installed in this process (``loaders.arena``: a pool worker's, built in-process)
    fails, and the arena is removed, so no later test's load reads into it (found by a shuffled run: remote loads
    took the arena's path in tests that expect the SSD-tier files mapped)."""
    from loaders import arena

    before = arena.current()
    yield
    after = arena.current()
    if after is not before:
        arena.install(before)
        if after is not None:
            after.close()
        pytest.fail(f"the test left a host arena installed ({after!r}); close what installed it "
                    "(runtimes.warm.stop_arena, ModelInstance.close, TrialWorker.close)")


def model_spec(name: str) -> ModelSpec:
    spec = instantiate_option("model", name)
    assert isinstance(spec, ModelSpec)
    return spec


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "ckpts", safetensors_shard_bytes=200_000, torch_shard_bytes=200_000)


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> CheckpointStore:
    """A store reused across tests that only read checkpoints."""
    return CheckpointStore(tmp_path_factory.mktemp("shared-ckpts"), safetensors_shard_bytes=200_000,
                           torch_shard_bytes=200_000)


def compose(*overrides: str | list[str]) -> DictConfig:
    """The app's config as ``coldstart OVERRIDES...`` composes it: ``compose("experiment=x", ["smoke=true"])``."""
    flat = [o for ov in overrides for o in ([ov] if isinstance(ov, str) else ov)]
    return compose_config(flat)


@pytest.fixture(scope="session")
def compose_cfg() -> Callable[..., DictConfig]:
    """``compose_cfg(overrides)`` or ``compose_cfg(*overrides)`` → the app's config as Hydra composes it."""
    return compose


@pytest.fixture
def extra_options() -> Iterator[Callable[[str, str, dict[str, Any]], None]]:
    """``extra_options(group, name, node)``: a test-only option, composed by Hydra like any file under ``conf/``
    (stored in Hydra's ConfigStore), removed when the test ends."""
    added: list[tuple[str, str]] = []

    def _add(group: str, name: str, node: dict[str, Any]) -> None:
        ConfigStore.instance().store(group=group, name=name, node=node)
        added.append((group, name))

    yield _add
    repo = ConfigStore.instance().repo
    for group, name in added:
        repo[group].pop(f"{name}.yaml", None)


@dataclass(frozen=True)
class RealModels:
    """Real checkpoints made once per session (tests/real_fixtures.py): treat them as read-only user files."""

    root: Path
    opt_bf16_sharded: Path  # save_pretrained shards + index, bf16, tied embeddings, with a trained tokenizer
    opt_fp32_single: Path  # one model.safetensors, fp32, tokenizer
    llama_bf16: Path  # untied head, grouped KV heads, no tokenizer
    opt_bin_sharded: Path  # .bin shards + index, fp32 (transformers 4's layout)
    opt_bin_single: Path  # one pytorch_model.bin, bf16, tokenizer
    hub: Path  # a Hugging Face hub cache ($HF_HOME/hub) holding org/tiny-opt (opt_bf16_sharded's files)
    hub_snapshot: Path


@pytest.fixture(scope="session")
def real_models(tmp_path_factory: pytest.TempPathFactory) -> RealModels:
    import torch as t

    from tests import real_fixtures as rf

    root = tmp_path_factory.mktemp("real-models")
    opt_bf16 = rf.save_safetensors(root / "opt-bf16-sharded", rf.TINY_OPT, t.bfloat16, sharded=True)
    hub = root / "hf" / "hub"
    return RealModels(root, opt_bf16,
                      rf.save_safetensors(root / "opt-fp32", rf.TINY_OPT, t.float32, seed=1),
                      rf.save_safetensors(root / "llama-bf16", rf.TINY_LLAMA, t.bfloat16, tokenizer=False, seed=2),
                      rf.save_bin(root / "opt-bin-sharded", rf.TINY_OPT, t.float32, sharded=True, seed=3),
                      rf.save_bin(root / "opt-bin", rf.TINY_OPT, t.bfloat16, tokenizer=True, seed=4),
                      hub, rf.hub_cache(hub, "org/tiny-opt", opt_bf16))


@pytest.fixture(scope="session")
def ray_local() -> Iterator[object]:
    """One local Ray instance (loopback, 2 CPUs) for the whole test session, shut down at its end.

    ray is installed by ``make test`` (extra ``ray``); its absence fails the test that asks for it, loudly.
    """
    from harness.raycluster import ray_session

    with ray_session(num_cpus=2) as ray:
        yield ray
