"""Which connection makes room at the cap (runtime/http_server.Connections; pure logic with
stand-in connections)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from course_audit.runtime.http_server import Connections


class Conn:
    """A stand-in for HttpConnection: records being closed to make room."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.evicted = False

    def evict(self, limit: int) -> None:
        self.evicted = True

    def __repr__(self) -> str:
        return self.name


def connections(limit: int) -> tuple[Connections, CollectorRegistry]:
    registry = CollectorRegistry()
    closed = Counter("closed", "connections closed early", ["reason"], registry=registry)
    return Connections(limit, closed), registry


def closed(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("closed_total", {"reason": reason}) or 0.0


def test_at_the_cap_the_connection_waiting_longest_makes_room() -> None:
    conns, registry = connections(3)
    a, b, c, d = Conn("a"), Conn("b"), Conn("c"), Conn("d")
    for conn in (a, b, c):
        assert conns.admit(conn)
    assert conns.admit(d)
    assert (a.evicted, b.evicted, c.evicted, d.evicted) == (True, False, False, False)
    assert len(conns) == 3 and closed(registry, "evicted") == 1


def test_a_busy_connection_is_never_closed_to_make_room() -> None:
    conns, _ = connections(2)
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    conns.admit(a)
    conns.admit(b)
    conns.busy(a)  # its request head is complete
    conns.admit(c)
    assert (a.evicted, b.evicted) == (False, True)


def test_a_connection_waiting_again_after_its_answer_is_the_newest_waiter() -> None:
    conns, _ = connections(2)
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    conns.admit(a)
    conns.admit(b)
    conns.busy(a)
    conns.waiting(a)  # answered: waits for its next head, after b
    conns.admit(c)
    assert (a.evicted, b.evicted) == (False, True)


def test_when_every_connection_is_busy_the_new_one_is_refused() -> None:
    conns, registry = connections(2)
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    for conn in (a, b):
        conns.admit(conn)
        conns.busy(conn)
    assert not conns.admit(c)
    assert not (a.evicted or b.evicted) and len(conns) == 2
    assert closed(registry, "refused") == 1


def test_a_closed_connection_frees_its_place() -> None:
    conns, _ = connections(1)
    a, b = Conn("a"), Conn("b")
    conns.admit(a)
    conns.drop(a)
    conns.waiting(a)  # a late call for a closed one changes nothing
    assert conns.admit(b)
    assert not a.evicted and len(conns) == 1
