"""The pipeline's clients over Serve: each call a DeploymentHandle call, retried once where running it twice is
harmless and the replica that took it went away (Serve sends the retry to a live one)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

from services.pipeline.clients import RetrieverClient, RouterClient, WorkerClient

logger = logging.getLogger(__name__)


async def once_more(method: Any, *args: Any, **kwargs: Any) -> Any:
    """``method.remote(*args, **kwargs)``, sent again once when the replica that took it died or went away: Serve
    routes the retry to a live replica. Only for calls that may run twice (reads, and generation that is
    not streamed: nothing of it reached the client)."""
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import ReplicaUnavailableError

    try:
        return await method.remote(*args, **kwargs)
    except (RayActorError, ActorUnavailableError, ReplicaUnavailableError) as exc:
        logger.warning(
            "a replica went away during %s (%s); retrying once", getattr(method, "_method_name", "a call"), exc
        )
        return await method.remote(*args, **kwargs)


class Remote:
    """A deployment's DeploymentHandle met as its client protocol: each call is ``once_more`` (sent again once
    if its replica went away), save the calls named ``not_repeated`` (writes, and work a second replica would
    redo), the ``probes`` (readiness and metrics: a 5 s limit, never retried) and the ``streamed`` ones (a
    stream of the handle's, iterated; nothing of it is sent twice: part may have reached the client).
    Written by hand, as `services.pipeline.clients.InProcess` is: the Serve half of the same protocols."""

    def __init__(
        self,
        handle: Any,
        *,
        not_repeated: frozenset[str] = frozenset(),
        streamed: frozenset[str] = frozenset(),
        probes: frozenset[str] = frozenset({"ready", "metrics_text"}),
    ) -> None:
        self.handle = handle
        self._not_repeated, self._streamed, self._probes = not_repeated, streamed, probes

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._streamed:

            async def stream(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                async for item in getattr(self.handle.options(stream=True), name).remote(*args, **kwargs):
                    yield item

            return stream
        method = getattr(self.handle, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if name in self._probes:
                return await asyncio.wait_for(method.remote(*args, **kwargs), timeout=PROBE_TIMEOUT_S)
            if name in self._not_repeated:
                return await method.remote(*args, **kwargs)
            return await once_more(method, *args, **kwargs)

        return call


# How long a readiness or metrics call may take before the replica counts as not answering.
PROBE_TIMEOUT_S = 5.0


def remote_retriever(handle: Any) -> RetrieverClient:
    return cast(RetrieverClient, Remote(handle, not_repeated=frozenset({"ingest", "remove"})))


def remote_worker(handle: Any) -> WorkerClient:
    # One replica takes a precompute (Serve's router picks it); with several replicas the others compute a chunk
    # on its first sight. With several replicas, each metrics scrape shows the series of the one that answered.
    return cast(WorkerClient, Remote(handle, not_repeated=frozenset({"precompute"}), streamed=frozenset({"stream"})))


def remote_router(handle: Any) -> RouterClient:
    # A route retried after the router died may leave the first try's reservation open: its lease releases it;
    # settling (finish) is idempotent per ticket. The SLA view and metrics are reads of one replica's.
    return cast(
        RouterClient,
        Remote(handle, not_repeated=frozenset({"sla", "metrics_text"}), probes=frozenset({"ready"})),
    )
