"""Topology Zoo graphs: parsing, RTT = 2 × shortest-path delay, seeding, malformed/disconnected files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from placement.base import DisconnectedTopologyError, TopologyFormatError
from placement.topology_zoo import TopologyZooTopology, read_graph, shortest_delays_us

GRAPH = """NODES 3
label x y
a 0 0
b 1 0
c 2 0

EDGES 4
label src dest weight bw delay
e0 0 1 1 100 1000
e1 1 0 1 100 1000
e2 1 2 1 100 2500
e3 2 1 1 100 2500
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "g.graph"
    path.write_text(text)
    return path


def test_rtt_is_twice_the_shortest_path_delay(tmp_path: Path) -> None:
    topo = TopologyZooTopology(path=str(_write(tmp_path, GRAPH)), num_servers=3, a100_fraction=1 / 3)
    net = topo.build(np.random.default_rng(0))
    delays = shortest_delays_us(3, topo.edges, [0, 1, 2])
    assert delays[0, 2] == 3500
    assert sorted(net.server_rtt_s.ravel().round(6).tolist()).count(0.007) == 2  # a↔c: 2 × 3.5 ms
    assert sum(s.name == "a100" for s in net.servers) == 1


def test_shared_graphs_parse() -> None:
    for name, nodes in (("Abvt.graph", 23), ("Bellcanada.graph", 48), ("GtsCe.graph", 149)):
        topo = TopologyZooTopology(file=name, num_servers=9)
        assert len(topo.nodes) == nodes
        net = topo.build(np.random.default_rng(0))
        assert np.isfinite(net.client_rtt_s).all()
        assert (net.client_rtt_s >= 0).all()


def test_selection_is_seeded() -> None:
    topo = TopologyZooTopology(file="Abvt.graph", num_servers=9, a100_fraction=0.5)
    a, b = topo.build(np.random.default_rng(4)), topo.build(np.random.default_rng(4))
    assert np.array_equal(a.client_rtt_s, b.client_rtt_s)
    assert a.servers == b.servers


@pytest.mark.parametrize(("text", "line"), [
    (GRAPH.replace("NODES 3", "NODES x"), 1),
    (GRAPH.replace("b 1 0", "b 1"), 4),
    (GRAPH.replace("e2 1 2 1 100 2500", "e2 1 9 1 100 2500"), 11),
    (GRAPH.replace("e2 1 2 1 100 2500", "e2 1 2 1 100"), 11),
    (GRAPH.replace("e3 2 1 1 100 2500", "e3 2 1 1 100 -5"), 12),
])
def test_malformed_graph_names_the_line(tmp_path: Path, text: str, line: int) -> None:
    with pytest.raises(TopologyFormatError, match=f"line {line}") as info:
        read_graph(_write(tmp_path, text))
    assert info.value.line_no == line


def test_disconnected_graph_is_rejected(tmp_path: Path) -> None:
    text = GRAPH.replace("e2 1 2 1 100 2500\ne3 2 1 1 100 2500\n", "e2 0 1 1 100 5\ne3 1 0 1 100 5\n")
    # Node c is cut off: rejected at construction, whichever nodes a seed would pick.
    with pytest.raises(DisconnectedTopologyError, match=r"1 of 3 nodes \(c\)") as info:
        TopologyZooTopology(path=str(_write(tmp_path, text)), num_servers=3)
    assert info.value.unreachable == ["c"]


def test_one_way_edges_are_disconnected(tmp_path: Path) -> None:
    text = GRAPH.replace("EDGES 4", "EDGES 3").replace("e3 2 1 1 100 2500\n", "")
    with pytest.raises(DisconnectedTopologyError, match="c"):
        TopologyZooTopology(path=str(_write(tmp_path, text)), num_servers=3)


def test_bad_arguments_name_the_key() -> None:
    with pytest.raises(ValueError, match="a100_fraction"):
        TopologyZooTopology(a100_fraction=1.5)
    with pytest.raises(ValueError, match="num_servers"):
        TopologyZooTopology(num_servers=0)
    with pytest.raises(ValueError, match="a100_type='h100'"):
        TopologyZooTopology(a100_type="h100")


def test_a_missing_graph_file_names_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.graph"
    with pytest.raises(FileNotFoundError) as info:
        TopologyZooTopology(path=str(missing))
    assert str(missing) in str(info.value)
    assert str(missing) in repr(info.value)  # what Hydra's instantiate error shows
