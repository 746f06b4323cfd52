"""A TCP proxy on loopback that can pass, delay, blackhole or refuse what goes through it, put between the
service and its Redis to make the faults a network gives.

- ``pass``: bytes go both ways as they come.
- ``delay``: each chunk of bytes, either way, is held ``delay_s`` before it goes on.
- ``blackhole``: connections are accepted (and open ones kept), but nothing goes through either way, as with
  a host that vanished or a partition: callers wait for their own timeouts.
- ``refuse``: the listening socket is closed and open connections are reset: callers get "connection
  refused" at once.

Written here because no maintained Python package does this in-process (toxiproxy is a Go server, not on
this machine's package lists). It runs its own event loop on a thread, so a test or a benchmark can flip
modes from synchronous code.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Literal

Mode = Literal["pass", "delay", "blackhole", "refuse"]
MODES: tuple[Mode, ...] = ("pass", "delay", "blackhole", "refuse")


class FaultProxy:
    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.delay_s = 0.5
        self._requested_port = port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _run(self, make: Callable[[], Awaitable[Any]]) -> Any:
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout=10)  # type: ignore[arg-type]

    def start(self) -> FaultProxy:
        self._thread.start()
        if not self._requested_port:
            # Bind once to learn a free port, so `refuse` can close the listener and `pass` reopen the same one.
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self._requested_port = s.getsockname()[1]
        self.port = self._requested_port
        self._run(self._listen)
        return self

    def set(self, mode: Mode, delay_s: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
        if delay_s is not None:
            self.delay_s = delay_s
        self._run(lambda: self._switch(mode))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self._close_all)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    # -- on the proxy's loop -------------------------------------------------------------------
    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _switch(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "refuse":
            await self._close_all()
        else:
            await self._listen()

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                sock = w.get_extra_info("socket")
                if sock is not None:  # a reset, not a polite close
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                w.close()
        self._writers.clear()
        for t in list(self._pipes):
            t.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                while self.mode == "blackhole":  # held, never delivered while the hole lasts
                    await asyncio.sleep(0.05)
                if self.mode == "delay":
                    await asyncio.sleep(self.delay_s)
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()
            self._writers.discard(dst)
