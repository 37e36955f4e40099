"""The clustered testbed: 2 A100 in cluster 1, 7 MIG in cluster 2, 5 ms inside / 100 ms between clusters."""

from __future__ import annotations

import numpy as np
import pytest

from placement.clustered import ClusteredTopology


def test_layout_and_rtts() -> None:
    net = ClusteredTopology().build(np.random.default_rng(0))
    assert [s.name for s in net.servers] == ["a100"] * 2 + ["mig"] * 7
    assert net.client_groups == (0, 1, 2)
    assert net.client_rtt_s[0].tolist() == [0.1] * 9
    assert net.client_rtt_s[1].tolist() == [0.005] * 2 + [0.1] * 7
    assert net.client_rtt_s[2].tolist() == [0.1] * 2 + [0.005] * 7
    assert net.server_rtt_s[0, 1] == 0.005
    assert net.server_rtt_s[0, 2] == 0.1
    assert net.server_rtt_s[3, 3] == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mig_count"):
        ClusteredTopology(mig_count=-1)
    with pytest.raises(ValueError, match="inter_rtt_ms"):
        ClusteredTopology(inter_rtt_ms=-5)
    with pytest.raises(ValueError, match="a100_type"):
        ClusteredTopology(a100_type="h100")
