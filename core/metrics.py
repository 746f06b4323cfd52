"""Metric families that add up across replicas.

Each family is a prometheus_client family (what one process's /metrics shows: the embedded server, the tests)
and, inside a Ray Serve replica, also a ``ray.serve.metrics`` family of the same name. Ray tags the latter with
the application, deployment and replica, and every node's metrics agent exports them (``ray_`` + the name), so a
scrape of each node's export port sees each replica's series once and ``sum by (...)`` over replicas is the
app's total. Scraping a load-balanced /metrics would instead see whichever replica answered.

Hand-written because neither library does both: prometheus_client has no Ray export, and ray.serve.metrics
records nothing outside a replica (and needs Ray imported, which the library path does not).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Literal

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram

logger = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]

_in_replica: bool | None = None
_lock = threading.Lock()


def in_serve_replica() -> bool:
    """Whether this process is a Ray Serve replica (decided once; a replica stays one)."""
    global _in_replica
    if _in_replica is None:
        try:
            import ray
            from ray.serve import context

            _in_replica = ray.is_initialized() and context._get_internal_replica_context() is not None
        except Exception:  # noqa: BLE001 - no Ray, or no replica context: a plain process
            _in_replica = False
    return _in_replica


def _reset_for_tests(value: bool | None = None) -> None:
    global _in_replica
    _in_replica = value


class _Child:
    __slots__ = ("_family", "_prom", "_tags")

    def __init__(self, family: Family, prom: Any, tags: dict[str, str]) -> None:
        self._family, self._prom, self._tags = family, prom, tags

    def inc(self, amount: float = 1.0) -> None:
        self._prom.inc(amount)
        ray_metric = self._family.ray_metric()
        if ray_metric is not None and amount:
            ray_metric.inc(amount, tags=self._tags)

    def observe(self, value: float) -> None:
        self._prom.observe(value)
        ray_metric = self._family.ray_metric()
        if ray_metric is not None:
            ray_metric.observe(value, tags=self._tags)

    def set(self, value: float) -> None:
        self._prom.set(value)
        ray_metric = self._family.ray_metric()
        if ray_metric is not None:
            ray_metric.set(value, tags=self._tags)

    def value(self) -> float:
        """This process's value (a counter's or a gauge's)."""
        return float(self._prom._value.get())


class Family:
    def __init__(
        self,
        kind: Kind,
        name: str,
        doc: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.kind, self.name, self.doc, self.label_names = kind, name, doc, tuple(labels)
        self.buckets = tuple(buckets) if buckets is not None else None
        reg = registry if registry is not None else DEFAULT_REGISTRY
        if kind == "counter":
            self.prom: Any = PromCounter(name, doc, self.label_names, registry=reg)
        elif kind == "gauge":
            self.prom = PromGauge(name, doc, self.label_names, registry=reg)
        else:
            self.prom = PromHistogram(name, doc, self.label_names, registry=reg, buckets=self.buckets or (1.0,))
        self._ray: Any = None
        self._ray_tried = False

    def ray_metric(self) -> Any:
        if self._ray_tried:
            return self._ray
        with _lock:
            if not self._ray_tried:
                self._ray_tried = True
                if in_serve_replica():
                    self._ray = self._make_ray()
        return self._ray

    def _make_ray(self) -> Any:
        from ray.serve import metrics as serve_metrics

        # Ray adds `_total` to a counter's name on export, as Prometheus does.
        name = self.name.removesuffix("_total") if self.kind == "counter" else self.name
        keys: Any = self.label_names  # Ray annotates tag_keys as tuple[str], meaning any length
        try:
            if self.kind == "counter":
                return serve_metrics.Counter(name, description=self.doc, tag_keys=keys)
            if self.kind == "gauge":
                return serve_metrics.Gauge(name, description=self.doc, tag_keys=keys)
            return serve_metrics.Histogram(
                name, description=self.doc, boundaries=list(self.buckets or (1.0,)), tag_keys=keys
            )
        except Exception:  # noqa: BLE001 - the family still counts in this process's registry
            logger.exception("metric %s is not exported through Ray", self.name)
            return None

    def labels(self, *values: Any) -> _Child:
        strings = tuple(str(v) for v in values)
        return _Child(
            self,
            self.prom.labels(*strings) if self.label_names else self.prom,
            dict(zip(self.label_names, strings, strict=True)),
        )

    # Families without labels record directly.
    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def set(self, value: float) -> None:
        self.labels().set(value)

    def observe(self, value: float) -> None:
        self.labels().observe(value)


def counter(name: str, doc: str, labels: Sequence[str] = (), *, registry: CollectorRegistry | None = None) -> Family:
    return Family("counter", name, doc, labels, registry=registry)


def gauge(name: str, doc: str, labels: Sequence[str] = (), *, registry: CollectorRegistry | None = None) -> Family:
    return Family("gauge", name, doc, labels, registry=registry)


def histogram(
    name: str,
    doc: str,
    labels: Sequence[str] = (),
    *,
    buckets: Sequence[float],
    registry: CollectorRegistry | None = None,
) -> Family:
    return Family("histogram", name, doc, labels, buckets=buckets, registry=registry)
