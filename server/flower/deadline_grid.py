"""Flower's Grid with a deadline on every phase: no code path of a round waits without a bound.

Flower 1.41's strategies sample with `sample_nodes`, which sleeps until `min_available_nodes` are
online and has no time limit (flwr/serverapp/strategy/strategy_utils.py); `Strategy.start(timeout=)`
bounds only the wait for replies. Here each phase (training, evaluation) first waits at most
strategy.round_timeout for enough sites to be online, then hands the strategy a fixed snapshot
of the online nodes (so Flower's sampling never waits), and the replies are awaited for what
remains of the same round_timeout (at least one second).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any


class NodeSnapshot:
    """A Grid whose node list is fixed: Flower's sampling draws from it and never waits."""

    def __init__(self, grid: Any, nodes: Sequence[int]) -> None:
        self._grid, self._nodes = grid, list(nodes)

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class DeadlineGrid:
    """Wraps the run's Grid (anything with get_node_ids and send_and_receive); everything else
    is delegated. `round_timeout` in seconds; `clock`/`sleep` are injectable for tests."""

    def __init__(self, grid: Any, round_timeout: float, *, poll_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self._grid, self.round_timeout, self.poll_s = grid, round_timeout, poll_s
        self._clock, self._sleep = clock, sleep
        self._deadline: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def get_node_ids(self) -> list[int]:
        return list(self._grid.get_node_ids())

    def wait_for_nodes(self, minimum: int) -> tuple[list[int], bool]:
        """Start a phase: wait until at least `minimum` nodes are online, at most round_timeout.
        Returns (the online node ids, whether there are enough)."""
        self._deadline = self._clock() + self.round_timeout
        while True:
            nodes = self.get_node_ids()
            if len(nodes) >= minimum:
                return nodes, True
            remaining = self._deadline - self._clock()
            if remaining <= 0:
                return nodes, False
            self._sleep(min(self.poll_s, remaining))

    def snapshot(self, nodes: Sequence[int]) -> NodeSnapshot:
        return NodeSnapshot(self._grid, nodes)

    def send_and_receive(self, messages: Iterable[Any], timeout: float = 3600.0) -> list[Any]:
        """Send and wait for replies until the phase's deadline (or `timeout`, if shorter)."""
        messages = list(messages)
        if not messages:
            return []
        if self._deadline is not None:
            timeout = min(timeout, max(1.0, self._deadline - self._clock()))
        return list(self._grid.send_and_receive(messages=messages, timeout=timeout))
