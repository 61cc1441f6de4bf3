"""The lab's network (lab/netns.py): namespaces on a bridge of the lab's own, and the cuts
the network faults are made of. Checked with real sockets inside the namespaces: a cut
destination does not answer (a connect times out, as in a real partition, nobody says
"unreachable"), everything else still does, a heal brings it back, and everything made
is gone by name afterwards."""

from __future__ import annotations

import socket

import pytest

from lab.netns import LabNetwork, in_namespace, remove_by_name, still_there
from tests.tools import need_netns

PORT = 7777


@pytest.fixture
def net():
    need_netns()
    made = LabNetwork()
    made.create()
    yield made
    made.remove()


def listen(net: LabNetwork, name: str) -> socket.socket:
    """A TCP listener on the host's address, bound inside its namespace."""
    host = net.hosts[name]

    def make() -> socket.socket:
        sock = socket.socket()
        sock.bind((host.ip, PORT))
        sock.listen(8)
        return sock

    return in_namespace(host.ns, make)


def reaches(net: LabNetwork, source: str | None, ip: str, port: int = PORT) -> str:
    """'ok', 'timeout' or the error, for a connect from `source`'s namespace (None: the
    machine's own, where the lab's watcher and writer run)."""

    def attempt() -> str:
        with socket.socket() as sock:
            sock.settimeout(1.0)
            try:
                sock.connect((ip, port))
            except TimeoutError:
                return "timeout"
            except OSError as error:
                return type(error).__name__
            return "ok"

    return in_namespace(net.hosts[source].ns, attempt) if source else attempt()


def test_nodes_reach_each_other_and_the_cloud_and_a_cut_is_a_silent_loss(net):
    a, b, c = (net.add(name, f"{net.prefix}.{n}") for name, n in (("a", 10), ("b", 11), ("c", 12)))
    listeners = [listen(net, name) for name in ("a", "b", "c")]
    cloud = socket.socket()
    cloud.bind((net.cloud_ip, PORT))
    cloud.listen(8)
    try:
        assert reaches(net, "a", b.ip) == "ok" and reaches(net, "b", a.ip) == "ok"
        assert reaches(net, "a", net.cloud_ip) == "ok"
        assert reaches(net, None, c.ip) == "ok"  # the lab's own address reaches every node
        # a node's own loopback is its own: what listens on this machine's is not there
        with socket.socket() as here:
            here.bind(("127.0.0.1", 0))
            here.listen(1)
            port = here.getsockname()[1]
            assert reaches(net, None, "127.0.0.1", port) == "ok"
            assert reaches(net, "a", "127.0.0.1", port) != "ok"

        split = net.cut({"a"}, peers=True)
        assert reaches(net, "a", b.ip) == "timeout" and reaches(net, "b", a.ip) == "timeout"
        assert reaches(net, "b", c.ip) == "ok"  # the majority keeps each other
        assert reaches(net, "a", net.cloud_ip) == "ok"  # peers only: the cloud answers
        assert reaches(net, None, a.ip) == "ok"  # and the lab still sees the cut-off node

        blind = net.cut({"c"}, cloud=True)
        assert reaches(net, "c", net.cloud_ip) == "timeout"
        assert reaches(net, "c", b.ip) == "ok"

        net.heal(split)
        assert reaches(net, "a", b.ip) == "ok" and reaches(net, "b", a.ip) == "ok"
        assert reaches(net, "c", net.cloud_ip) == "timeout"  # the other cut holds
        net.heal(blind)
        assert reaches(net, "c", net.cloud_ip) == "ok"
    finally:
        for sock in (*listeners, cloud):
            sock.close()


def test_a_node_added_during_a_cut_is_on_the_majority_side(net):
    net.add("a", f"{net.prefix}.10")
    net.add("b", f"{net.prefix}.11")
    listeners = [listen(net, "a")]
    net.cut({"a"}, peers=True, cloud=True)
    late = net.add("late", f"{net.prefix}.12")
    listeners.append(listen(net, "late"))
    try:
        assert reaches(net, "late", net.hosts["a"].ip) == "timeout"
        assert reaches(net, "a", late.ip) == "timeout"
        assert reaches(net, "b", late.ip) == "ok"
    finally:
        for sock in listeners:
            sock.close()


def test_everything_made_is_removed_by_name(net):
    net.add("a", f"{net.prefix}.10")
    names = net.names()
    assert names["namespaces"] and still_there(names) == [*names["namespaces"], *names["bridge"]]
    # what `python -m lab down` does from another process, reading lab.json
    done = remove_by_name(names)
    assert f"deleted namespace {names['namespaces'][0]}" in done
    assert still_there(names) == []
    net.hosts.clear()
    net.remove()  # already gone: nothing to do, no error (the fixture removes it again)


def test_a_cut_needs_nodes_and_something_to_cut(net):
    with pytest.raises(ValueError, match="a cut needs"):
        net.cut({"a"})
    with pytest.raises(ValueError, match="a cut needs"):
        net.cut(set(), peers=True)
