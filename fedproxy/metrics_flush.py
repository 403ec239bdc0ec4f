"""Hot-path counts are plain integers; Prometheus sees them when scraped.

Per request, packet or connection the data paths add to plain integers instead of calling prometheus-client
(its ``labels()`` lookup and lock cost more than the rest of a fast request). Each owner registers a flush
function here; one collector, registered in the default registry before the metrics those functions write
to (their modules import this one first), calls them all at the start of every collection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Metric
from prometheus_client.registry import Collector

_FLUSHES: list[Callable[[], None]] = []


def on_scrape(flush: Callable[[], None]) -> Callable[[], None]:
    """Call ``flush`` before every collection of the default registry (usable as a decorator)."""
    _FLUSHES.append(flush)
    return flush


class _FlushHotCounts(Collector):
    def describe(self) -> Iterator[Metric]:
        return iter(())  # registering must not collect

    def collect(self) -> Iterator[Metric]:
        for flush in list(_FLUSHES):
            flush()
        return iter(())


REGISTRY.register(_FlushHotCounts())
