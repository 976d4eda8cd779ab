"""The channel between a server's processes: whole messages in order whatever their size, a sender that never
blocks on a peer that does not read, a peer process that dies noticed at once, and a connect that waits for the
listener to appear."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnserve.server.message_socket import PART_BYTES, MessageListener, MessageSocket


class Peer:
    """The listening side of one connection: what it received, and whether its peer closed."""

    def __init__(self, path: Path, echo: bool = False) -> None:
        self.received: list[bytes] = []
        self.closed = asyncio.Event()
        self.connected = asyncio.Event()
        self.channel: MessageSocket | None = None
        self._echo = echo
        self.listener = MessageListener(path, self._accept)
        self.listener.start()

    def _accept(self, sock) -> None:
        self.channel = MessageSocket(sock, self._on_message, self.closed.set)
        self.channel.start()
        self.connected.set()

    def _on_message(self, message: bytes) -> None:
        self.received.append(message)
        if self._echo:
            assert self.channel is not None
            self.channel.send(message)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        self.listener.close()


async def wait_until(condition, seconds: float = 10.0) -> None:
    give_up = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < give_up, "timed out"
        await asyncio.sleep(0.005)


async def test_messages_of_every_size_arrive_whole_and_in_order(tmp_path: Path) -> None:
    peer = Peer(tmp_path / "engine.sock", echo=True)
    echoed: list[bytes] = []
    client = await MessageSocket.connect(tmp_path / "engine.sock", echoed.append)
    sizes = [0, 1, 100, PART_BYTES - 1, PART_BYTES, PART_BYTES + 1, 3 * PART_BYTES + 17, 5_000_000, 40]
    sent = [bytes([index % 251]) * size + index.to_bytes(4, "little") for index, size in enumerate(sizes * 20)]
    for message in sent:
        client.send(message)
    await wait_until(lambda: len(echoed) == len(sent), seconds=60)
    assert peer.received == sent
    assert echoed == sent
    client.close()
    peer.close()


async def test_a_peer_that_does_not_read_never_blocks_the_sender(tmp_path: Path) -> None:
    received: list[bytes] = []
    accepted: list[MessageSocket] = []
    listener = MessageListener(
        tmp_path / "engine.sock", lambda sock: accepted.append(MessageSocket(sock, received.append))
    )
    listener.start()
    client = await MessageSocket.connect(tmp_path / "engine.sock", lambda message: None)
    message = os.urandom(100_000)
    started = time.monotonic()
    for _ in range(400):  # 40 MB: far more than the socket buffers hold
        client.send(message)
    assert time.monotonic() - started < 5.0
    await wait_until(lambda: bool(accepted))
    accepted[0].start()
    await wait_until(lambda: len(received) == 400, seconds=60)
    assert all(each == message for each in received)
    client.close()
    accepted[0].close()
    listener.close()


async def test_a_peer_process_that_dies_is_noticed_at_once(tmp_path: Path) -> None:
    path = tmp_path / "engine.sock"
    peer = Peer(path)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
            "s.connect(sys.argv[1])\n"
            "s.send(b'\\x00hello')\n"
            "time.sleep(60)\n",
            str(path),
        ]
    )
    try:
        await wait_until(lambda: peer.received == [b"hello"])
        assert not peer.closed.is_set()
        child.send_signal(signal.SIGKILL)
        await asyncio.wait_for(peer.closed.wait(), timeout=5)
    finally:
        child.kill()
        child.wait()
    assert peer.channel is not None and peer.channel.closed
    peer.channel.send(b"to nobody")  # dropped, not raised
    peer.close()


async def test_the_owner_closing_its_end_tells_only_the_other_side(tmp_path: Path) -> None:
    peer = Peer(tmp_path / "engine.sock")
    client_closed = asyncio.Event()
    client = await MessageSocket.connect(tmp_path / "engine.sock", lambda message: None, client_closed.set)
    await asyncio.wait_for(peer.connected.wait(), timeout=5)
    client.close()
    await asyncio.wait_for(peer.closed.wait(), timeout=5)
    await asyncio.sleep(0.05)
    assert not client_closed.is_set()
    peer.close()


async def test_connect_waits_for_the_listener_to_appear(tmp_path: Path) -> None:
    path = tmp_path / "engine.sock"
    connecting = asyncio.create_task(MessageSocket.connect(path, lambda message: None))
    await asyncio.sleep(0.2)
    assert not connecting.done()
    peer = Peer(path)
    client = await asyncio.wait_for(connecting, timeout=5)
    client.send(b"late but there")
    await wait_until(lambda: peer.received == [b"late but there"])
    client.close()
    peer.close()


async def test_connect_gives_up_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match=r"nothing listens at .*engine\.sock after 0 s"):
        await MessageSocket.connect(tmp_path / "engine.sock", lambda message: None, timeout=0.1)


async def test_a_front_end_fails_its_waiting_calls_the_moment_the_engine_connection_closes(tmp_path: Path) -> None:
    from cnnserve.server.engine_client import EngineClient
    from cnnserve.server.errors import UnavailableError

    engine = Peer(tmp_path / "engine.sock")
    client = EngineClient(tmp_path / "engine.sock", 1 << 20)
    lost = asyncio.Event()
    client.on_lost(lost.set)
    await client.connect()
    await wait_until(lambda: len(engine.received) == 1)  # the Hello
    waiting = asyncio.create_task(client.control("statistics"))
    await wait_until(lambda: len(engine.received) == 2)  # the Control, which this engine never answers
    assert engine.channel is not None
    engine.channel.close()  # as the kernel does for an engine that dies
    with pytest.raises(UnavailableError, match="inference engine of this server stopped"):
        await asyncio.wait_for(waiting, timeout=5)
    assert lost.is_set() and client.lost
    with pytest.raises(UnavailableError):
        await client.control("statistics")
    client.close()
    engine.close()
