"""The DRAM tier's page size: parsing mounts and shmem_enabled, and (as root) a real huge-page tmpfs."""

from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

import pytest
import torch

from loaders.base import LoadResult
from loaders.native import hugetmpfs
from loaders.native.convert import convert
from loaders.native.loader import NativeLoader

MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw,relatime,size=24683568k 0 0
tmpfs /dev/shm/coldstart-dram tmpfs rw,relatime,size=16777216k,huge=always 0 0
tmpfs /mnt/within tmpfs rw,huge=within_size 0 0
tmpfs /mnt/advise tmpfs rw,huge=advise 0 0
tmpfs /mnt/my\\040dir tmpfs rw,huge=always 0 0
"""
NEVER = "always within_size advise [never] deny force"


@pytest.mark.parametrize(("path", "huge"), [
    ("/dev/shm/other", False),                      # /dev/shm itself: no huge= option
    ("/dev/shm/coldstart-dram", True),
    ("/dev/shm/coldstart-dram/opt-1.3b", True),     # inside the mount
    ("/dev/shm/coldstart-dramX", False),            # a sibling whose name merely starts the same
    ("/mnt/within/x", True),
    ("/mnt/advise/x", False),                       # advise needs madvise on a mapping; the tier writes with write(2)
    ("/mnt/my dir/x", True),                        # /proc/mounts escapes spaces as \040
    ("/var/tmp/x", False),                          # not a tmpfs
])
def test_huge_pages_reads_the_mount_holding_the_path(path: str, huge: bool) -> None:
    assert hugetmpfs.huge_pages(path, MOUNTS, NEVER) is huge


def test_shmem_enabled_force_and_deny_override_the_mount_option() -> None:
    force = "always within_size advise never deny [force]"
    deny = "always within_size advise never [deny] force"
    assert hugetmpfs.huge_pages("/dev/shm/x", MOUNTS, force) is True
    assert hugetmpfs.huge_pages("/dev/shm/coldstart-dram", MOUNTS, deny) is False
    assert hugetmpfs.huge_pages("/var/tmp/x", MOUNTS, force) is False  # ext4 is not shmem


def test_the_last_mount_on_a_point_is_the_visible_one() -> None:
    stacked = MOUNTS + "tmpfs /dev/shm/coldstart-dram tmpfs rw,size=1024k 0 0\n"
    assert hugetmpfs.huge_pages("/dev/shm/coldstart-dram", stacked, NEVER) is False


def test_mount_without_root_says_how(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(hugetmpfs.MountError, match=r"needs root.*make dram-tier"):
        hugetmpfs.mount(tmp_path / "dram", "64M")


def _pmd_mapped_kb() -> int:
    """kB of tmpfs pages this process maps 2 MiB at a time."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("ShmemPmdMapped:"):
            return int(line.split()[1])
    raise AssertionError("no ShmemPmdMapped line in /proc/self/smaps_rollup")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None,
                    reason="mounting a tmpfs needs root and mount(8)")
def test_hot_load_from_a_huge_page_tier_maps_2mib_pages(tmp_path: Path) -> None:
    dram = tmp_path / "dram"
    (dram / "entry").mkdir(parents=True)
    with pytest.raises(hugetmpfs.MountError, match="holds DRAM-tier entries"):
        hugetmpfs.mount(dram, "256M")  # would hide them: refused
    (dram / "entry").rmdir()
    try:
        print(hugetmpfs.mount(dram, "256M"))
    except hugetmpfs.MountError as exc:  # root without CAP_SYS_ADMIN (a container): a failure, not a skip
        pytest.fail(f"root, but the huge-page tmpfs could not be mounted: {exc}")
    try:
        assert "already" in hugetmpfs.mount(dram, "256M")
        gen = torch.Generator().manual_seed(0)
        weights = {f"w{i}": torch.randn(1024, 1024, generator=gen) for i in range(4)}  # 16 MiB: 2 MiB pages
        ckpt = tmp_path / "ckpt"
        convert(weights, ckpt, progress=False)
        loader = NativeLoader(dram_dir=str(dram), dram_capacity_bytes=200 << 20)
        assert loader.dram is not None
        assert loader.dram.huge_pages
        loader.stage_in_dram(ckpt)
        before = _pmd_mapped_kb()
        hot: LoadResult | None = loader.load(ckpt, torch.device("cpu"))
        assert hot is not None
        assert set(hot.bytes_by_tier) == {"dram"}
        assert hot.phases_s["dram_huge_pages"] == 1.0
        assert _pmd_mapped_kb() - before >= 2048, "the hot load's mapping holds no 2 MiB entry"
        assert all(torch.equal(hot.state_dict[k], v) for k, v in weights.items())
    finally:
        hot = None
        gc.collect()  # the mappings go with the tensors; a busy mount would not unmount
        try:
            hugetmpfs.unmount(dram)
        finally:  # never leave a mount behind, even when a failed assertion kept a mapping alive
            hugetmpfs.unmount(dram, lazy=True)
    assert hugetmpfs.mount_of(dram)[0] != str(dram)
