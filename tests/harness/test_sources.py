"""Real model sources: a directory or the Hugging Face cache (offline, through huggingface_hub's cache API), every
file checked before use, a fingerprint that follows the weight files, downloads only when asked."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness import sources
from harness.sources import (
    HubCacheMissError,
    NoWeightsError,
    SourceNotFoundError,
    hub_cache_dir,
    resolve,
)
from loaders.native.format import NotRegularFileError, OutsideCheckpointError
from tests.conftest import RealModels
from tests.real_fixtures import copy_tree, hub_cache


def test_a_directory_is_read_as_from_pretrained_finds_it(real_models: RealModels) -> None:
    sharded = resolve(path=str(real_models.opt_bf16_sharded))
    assert (sharded.kind, sharded.format, sharded.index) == ("local", "safetensors", "model.safetensors.index.json")
    assert len(sharded.weights) > 1
    assert all(w.endswith(".safetensors") for w in sharded.weights)
    assert sharded.has_tokenizer
    assert "tokenizer.json" in sharded.files()
    single = resolve(path=str(real_models.opt_fp32_single))
    assert (single.weights, single.index) == (("model.safetensors",), None)
    bins = resolve(path=str(real_models.opt_bin_sharded))
    assert bins.format == "torch_bin"
    assert len(bins.weights) == 2
    assert resolve(path=str(real_models.opt_bin_single)).weights == ("pytorch_model.bin",)
    assert not resolve(path=str(real_models.llama_bf16)).has_tokenizer


def test_hub_id_resolves_offline_by_branch_and_commit(real_models: RealModels,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: list[dict[str, Any]] = []
    real = huggingface_hub.snapshot_download

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    src = resolve(hf_id="org/tiny-opt", cache_dir=str(real_models.hub))
    assert (src.kind, src.path, src.revision) == ("hf_cache", real_models.hub_snapshot, real_models.hub_snapshot.name)
    pinned = resolve(hf_id="org/tiny-opt", revision=real_models.hub_snapshot.name, cache_dir=str(real_models.hub))
    assert pinned.path == src.path
    assert calls
    assert all(c.get("local_files_only") is True for c in calls)


def test_hub_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache_dir() == tmp_path / "elsewhere"
    assert hub_cache_dir(str(tmp_path / "given")) == tmp_path / "given"


def test_a_model_not_in_the_cache_is_not_downloaded_unless_asked(real_models: RealModels,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(HubCacheMissError, match=r"model\.download=true"):
        resolve(hf_id="org/absent", cache_dir=str(real_models.hub))
    with pytest.raises(HubCacheMissError, match="v9"):
        resolve(hf_id="org/tiny-opt", revision="v9", cache_dir=str(real_models.hub))
    fetched: list[dict[str, Any]] = []

    def fake_download(repo_id: str, **kwargs: Any) -> str:  # stands in for the network
        fetched.append({"repo_id": repo_id, **kwargs})
        return str(real_models.hub_snapshot)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    src = resolve(hf_id="org/absent", download=True, cache_dir=str(real_models.hub))
    assert src.path == real_models.hub_snapshot
    assert fetched[0]["repo_id"] == "org/absent"
    assert not fetched[0].get("local_files_only")
    assert "*.safetensors" in fetched[0]["allow_patterns"]


def test_bad_sources_are_named(tmp_path: Path, real_models: RealModels) -> None:
    with pytest.raises(SourceNotFoundError, match="exactly one"):
        resolve()
    with pytest.raises(SourceNotFoundError, match="exactly one"):
        resolve(path=str(tmp_path), hf_id="org/x")
    with pytest.raises(SourceNotFoundError, match="no such directory"):
        resolve(path=str(tmp_path / "nope"))
    with pytest.raises(SourceNotFoundError, match="org/name"):
        resolve(hf_id="../etc")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(NoWeightsError, match="no weights"):
        resolve(path=str(empty))
    noconfig = copy_tree(real_models.opt_fp32_single, tmp_path / "noconfig")
    (noconfig / "config.json").unlink()
    with pytest.raises(NoWeightsError, match=r"config\.json"):
        resolve(path=str(noconfig))


def test_fingerprint_follows_the_weights_not_the_tokenizer(tmp_path: Path, real_models: RealModels) -> None:
    d = copy_tree(real_models.opt_bf16_sharded, tmp_path / "m")
    before = resolve(path=str(d)).fingerprint()
    assert resolve(path=str(d)).fingerprint() == before
    os.utime(d / "tokenizer.json")
    assert resolve(path=str(d)).fingerprint() == before
    shard = sorted(d.glob("model-*.safetensors"))[1]
    os.utime(shard)  # same bytes, touched: its mtime and ctime change
    assert resolve(path=str(d)).fingerprint() != before


def _hub_with(tmp_path: Path, real_models: RealModels, hf_id: str) -> Path:
    return hub_cache(tmp_path / "hub", hf_id, real_models.opt_fp32_single)


def test_hub_links_into_the_same_repository_only(tmp_path: Path, real_models: RealModels) -> None:
    snap = _hub_with(tmp_path, real_models, "org/mine")
    assert resolve(path=str(snap)).path == snap  # a path into a snapshot follows the hub rule too
    other = hub_cache(tmp_path / "hub", "evil/other", real_models.llama_bf16)
    foreign = os.readlink(other / "model.safetensors")
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to(f"../../../models--evil--other/blobs/{Path(foreign).name}")
    with pytest.raises(OutsideCheckpointError, match="not a blob of its Hugging Face cache repository"):
        resolve(hf_id="org/mine", cache_dir=str(tmp_path / "hub"))


def test_links_out_and_special_files_are_refused(tmp_path: Path, real_models: RealModels) -> None:
    d = copy_tree(real_models.opt_fp32_single, tmp_path / "m")
    (d / "config.json").unlink()
    (d / "config.json").symlink_to("/etc/hostname")
    with pytest.raises(OutsideCheckpointError):
        resolve(path=str(d))
    snap = _hub_with(tmp_path, real_models, "org/fifo")
    (snap / "model.safetensors").unlink()
    os.mkfifo(snap / "model.safetensors")
    with pytest.raises(NotRegularFileError, match="FIFO"):
        resolve(path=str(snap))


def test_index_names_must_be_plain_files(tmp_path: Path, real_models: RealModels) -> None:
    d = copy_tree(real_models.opt_bf16_sharded, tmp_path / "m")
    index = d / "model.safetensors.index.json"
    index.write_text(index.read_text().replace("model-00001", "../escape/model-00001"))
    with pytest.raises(sources.BadWeightIndexError, match="plain file name"):
        resolve(path=str(d))
    shutil.rmtree(d)
