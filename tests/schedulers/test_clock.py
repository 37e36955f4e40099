"""The lifecycle's clocks: timers in time order (ties in the order asked), a past time fires now, ``post`` from
another thread runs on the clock's thread."""

from __future__ import annotations

import threading

from schedulers.clock import SimClock, WallClock


def test_sim_clock_runs_timers_in_time_order_ties_first_come() -> None:
    clock = SimClock()
    seen: list[tuple[str, float]] = []
    clock.at(2.0, lambda: seen.append(("b", clock.now())))
    clock.at(1.0, lambda: seen.append(("a", clock.now())))
    clock.at(2.0, lambda: seen.append(("c", clock.now())))

    def later() -> None:
        seen.append(("d", clock.now()))
        clock.at(0.5, lambda: seen.append(("past", clock.now())))  # already past: fires now, after what is due now
        clock.after(0.25, lambda: seen.append(("after", clock.now())))
        clock.post(lambda: seen.append(("post", clock.now())))

    clock.at(1.0, later)
    clock.run()
    assert seen == [("a", 1.0), ("d", 1.0), ("past", 1.0), ("post", 1.0), ("after", 1.25), ("b", 2.0), ("c", 2.0)]
    assert clock.pending() == 0


def test_sim_clock_stops_when_told() -> None:
    clock = SimClock()
    for t in (1.0, 2.0, 3.0):
        clock.at(t, lambda: None)
    clock.run(until=lambda: clock.now() >= 2.0)
    assert (clock.now(), clock.pending()) == (2.0, 1)


def test_wall_clock_runs_posts_from_other_threads_on_its_own_thread() -> None:
    clock = WallClock()
    clock.start()
    ran: list[tuple[str, int]] = []
    clock.at(0.05, lambda: ran.append(("timer", threading.get_ident())))
    threading.Thread(target=lambda: clock.post(lambda: ran.append(("post", threading.get_ident())))).start()
    clock.run(until=lambda: len(ran) == 2, idle_s=0.01)
    assert sorted(kind for kind, _ in ran) == ["post", "timer"]
    assert {ident for _, ident in ran} == {threading.get_ident()}
    assert clock.now() >= 0.05
