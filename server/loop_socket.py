"""A ZeroMQ socket served by the asyncio event loop directly.

zmq.asyncio wraps every send and receive in a future and a poller registration; on the request path of the
engine and the front-ends that cost more than the rest of the message handling together (profiled with py-spy
under h2load). This watches the socket's file descriptor with `loop.add_reader` and hands each message to a
callback, and sends without blocking (high-water marks off: the peers are processes of one server, and the
front-ends bound what is in flight).

ZeroMQ's descriptor is edge-triggered: it signals that the socket's events changed, not that a message waits,
and a send may consume the signal of a message that arrived. So every wake-up and every send is followed by a
drain that reads while `EVENTS` says a message is there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import zmq

_log = logging.getLogger(__name__)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
"""As plain integers: pyzmq's enum flags make each `&` a call into Python's enum module, on every drain."""


class LoopSocket:
    def __init__(self, socket: zmq.Socket, on_message: Callable[[list[bytes]], None]) -> None:
        socket.setsockopt(zmq.SNDHWM, 0)
        socket.setsockopt(zmq.RCVHWM, 0)
        socket.setsockopt(zmq.LINGER, 0)
        self._socket = socket
        self._on_message = on_message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_scheduled = False

    def start(self) -> None:
        """Start receiving on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._socket.getsockopt(zmq.FD), self._drain)
        self._schedule_drain()

    def send(self, frames: list[bytes]) -> None:
        try:
            self._socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            _log.error("a message to the %s peer could not be queued; it is dropped", self._socket.type)
        self._schedule_drain()

    def close(self) -> None:
        if self._loop is not None and not self._socket.closed:
            self._loop.remove_reader(self._socket.getsockopt(zmq.FD))
        self._socket.close()

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        socket = self._socket
        while not socket.closed and socket.getsockopt(_EVENTS) & _POLLIN:
            frames = socket.recv_multipart(zmq.NOBLOCK)
            try:
                self._on_message(frames)
            except Exception:
                _log.exception("a message from the peer could not be handled")
