"""Whole messages between the processes of one server: a Unix SOCK_SEQPACKET socket served by the event loop.

The front-ends and the engine exchange small messages many thousands of times a second, so the channel's own
cost is on every request's path. It used to be ZeroMQ (DEALER/ROUTER over `ipc://`); ZeroMQ moves each message
through an I/O thread on both sides, so one round trip woke four threads instead of two. Measured side by side
on the 2-core VM (session-local ping-pong between two processes, medians of 3 alternating rounds), this socket
took 77 µs per lone round trip against 186 µs, and 58 µs of the sender's CPU against 127 µs.

SOCK_SEQPACKET keeps each datagram whole and in order and reports a peer that closes, so a process that dies is
noticed at once (`on_close`). A datagram must fit the socket's send buffer, so a message is sent as parts of at
most `PART_BYTES`: each part starts with one byte, 1 while more parts follow and 0 on the last. Sends never block
the loop: what the socket cannot take now waits in a backlog, in order, until the socket is writable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

_log = logging.getLogger(__name__)
PART_BYTES = 64 * 1024
"""The most message bytes in one datagram (the default send buffer holds about 200 KiB)."""
_BUFFER_BYTES = 4 * 1024 * 1024
"""Asked for as the send and receive buffers (the kernel caps it at net.core.wmem_max / rmem_max)."""
_MORE, _LAST = b"\x01", b"\x00"
_READS_PER_WAKE = 256
"""Datagrams read before the loop gets a turn for other work (the socket stays readable, so it comes back)."""

OnMessage = Callable[[bytes], None]
OnClose = Callable[[], None]


class MessageSocket:
    """One end of a connected channel: `send(message)` and `on_message(message)`, whole messages both ways."""

    def __init__(self, sock: socket.socket, on_message: OnMessage, on_close: OnClose | None = None) -> None:
        sock.setblocking(False)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, _BUFFER_BYTES)
        self._sock = sock
        self._fd = sock.fileno()
        self._on_message = on_message
        self._on_close = on_close
        self._buffer = bytearray(PART_BYTES + 1)
        self._view = memoryview(self._buffer)
        self._parts: list[bytes] = []
        self._backlog: deque[tuple[bytes, bytes | memoryview]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self.messages_received = 0
        self.messages_sent = 0
        """Whole messages so far, each way: with the requests they carried, what the channel cost per request."""

    @classmethod
    async def connect(
        cls, path: Path, on_message: OnMessage, on_close: OnClose | None = None, timeout: float = 120.0
    ) -> MessageSocket:
        """Connect to the listener at `path` and start receiving, waiting for it to appear (the peer process may
        still be starting); raises ConnectionError after `timeout` seconds."""
        give_up = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                sock.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() > give_up:
                    raise ConnectionError(f"nothing listens at {path} after {timeout:.0f} s") from exc
                await asyncio.sleep(0.02)
                continue
            channel = cls(sock, on_message, on_close)
            channel.start()
            return channel

    def start(self) -> None:
        """Start receiving on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._read)

    def send(self, message: bytes) -> None:
        """Send `message` whole, now or (when the socket is full) as soon as it can take it; after the peer
        closed, drop it (`on_close` has told the owner)."""
        if self.closed:
            return
        self.messages_sent += 1
        if len(message) <= PART_BYTES:
            parts = [(_LAST, message)]
        else:
            view = memoryview(message)
            ends = range(PART_BYTES, len(message) + PART_BYTES, PART_BYTES)
            parts = [(_MORE if end < len(message) else _LAST, view[end - PART_BYTES : end]) for end in ends]
        if self._backlog:
            self._backlog.extend(parts)
            return
        for index, part in enumerate(parts):
            try:
                self._sock.sendmsg(part)
            except BlockingIOError:
                self._backlog.extend(parts[index:])
                assert self._loop is not None
                self._loop.add_writer(self._fd, self._write)
                return
            except OSError:
                self._lost()
                return

    def close(self) -> None:
        """Stop using the socket (without calling `on_close`: the owner is the one closing)."""
        if self.closed:
            return
        self.closed = True
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._sock.close()

    def _write(self) -> None:
        backlog = self._backlog
        while backlog:
            try:
                self._sock.sendmsg(backlog[0])
            except BlockingIOError:
                return
            except OSError:
                self._lost()
                return
            backlog.popleft()
        assert self._loop is not None
        self._loop.remove_writer(self._fd)

    def _read(self) -> None:
        buffer, view = self._buffer, self._view
        for _ in range(_READS_PER_WAKE):
            if self.closed:
                return
            try:
                size = self._sock.recv_into(buffer)
            except BlockingIOError:
                return
            except OSError:
                size = 0
            if size == 0:
                self._lost()
                return
            part = bytes(view[1:size])
            if buffer[0]:
                self._parts.append(part)
                continue
            if self._parts:
                part = b"".join([*self._parts, part])
                self._parts = []
            self.messages_received += 1
            try:
                self._on_message(part)
            except Exception:
                _log.exception("a message from the peer could not be handled")

    def _lost(self) -> None:
        if self.closed:
            return
        self.close()
        if self._on_close is not None:
            self._on_close()


class MessageListener:
    """A listening socket at `path`: each process that connects becomes a `MessageSocket` handed to
    `on_connection` (which starts it)."""

    def __init__(self, path: Path, on_connection: Callable[[socket.socket], None]) -> None:
        self._path = path
        self._on_connection = on_connection
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        path = str(self._path)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        self._sock.bind(path)
        self._sock.listen(128)
        self._sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        if self._loop is not None and self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        with contextlib.suppress(OSError):
            self._path.unlink()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                _log.error("cannot accept a connection on %s: %s", self._path, exc)
                return
            self._on_connection(sock)
