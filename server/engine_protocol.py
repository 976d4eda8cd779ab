"""What front-end processes and the engine say to each other: a small typed message set.

Each front-end holds one connection to the engine's Unix socket in the server's run folder
(server/message_socket.py); the engine knows each front-end by its connection. Messages are msgspec Structs
encoded as msgpack arrays (a few microseconds to encode and decode); tensors never travel in them, only where
they lie in the front-end's `TensorArena`.

Front-end to engine: `Hello` (once, with the arena to map), `Submit` (a request's rows), `Cancel`, `Finished`
(the statistics of answered requests), `Control` (load, unload, statistics), `CountsSent`. Engine to front-end:
`Catalog` (every version and what it needs to be served, on every change), `Result` or `Failure` (exactly one
per `Submit`, also for a cancelled one: only then may the front-end reuse the request's block), `Regions` (the
shared memory regions clients registered), `ControlReply`, `SendCounts`.

A front-end sends its `Finished` records within COUNT_FLUSH_SECONDS (server/metrics.py), not at once, and writes
its metrics on the same schedule. Before the engine reads the statistics or the metrics files for someone, it
sends every front-end `SendCounts` and waits for each one's `CountsSent`, which follows whatever that front-end
had counted.

The catalog and control payloads are pickled: they are rare, come from a process of the same server, and carry
the model specifications as the engine built them.
"""

from __future__ import annotations

import msgspec

ENDPOINT_FILE = "engine.sock"
"""The engine's socket, in the run folder the supervisor makes."""


class Hello(msgspec.Struct, tag="hello", array_like=True):
    pid: int
    arena_descriptor: int
    arena_bytes: int


class Submit(msgspec.Struct, tag="submit", array_like=True):
    """Infer the rows at `offset` of the sender's arena; write the probabilities at `output_offset`."""

    id: int
    model: str
    version: int
    offset: int
    shape: tuple[int, ...]
    dtype: str
    output_offset: int
    output_width: int
    deadline: float
    """On time.monotonic() (CLOCK_MONOTONIC: one clock for every process of the machine)."""
    priority: int
    region: str = ""
    """When set, the rows lie at `offset` of this registered system shared memory region (the client's), which
    the engine maps itself, instead of in the sender's arena."""
    background: bool = False
    """Queue in the batcher's background lane (explanations' rows), below every priority level."""
    raw: bool = False
    """Answer the graph's own output (`output_width` columns of it) instead of probabilities."""
    output: str = ""
    """A background request's other graph output to answer (a layer's activations, flattened to
    `output_width` values per row), instead of the model's own."""
    company: bool = False
    """The front-end has other calls on their way here: accepted, not yet sent. The batcher may then wait for them
    (server/batcher.py, `_AdaptiveDelay`) even when its batches have been holding one request each."""


class Cancel(msgspec.Struct, tag="cancel", array_like=True):
    id: int


class Finished(msgspec.Struct, tag="finished", array_like=True):
    """`count` requests to one version that the front-end has answered with one outcome, for the model statistics
    (which the engine keeps for every process): their durations and images summed. A failure's figures after
    `seconds` are zeros."""

    model: str
    version: int
    succeeded: bool
    seconds: float = 0.0
    compute_input: float = 0.0
    queue: float = 0.0
    compute_infer: float = 0.0
    compute_output: float = 0.0
    inferences: int = 0
    count: int = 1


class Control(msgspec.Struct, tag="control", array_like=True):
    id: int
    operation: str
    """"load", "unload", "statistics", "register_region" (argument: JSON [name, key, offset, byte size]) or
    "unregister_region" (argument: the name; empty for every region)."""
    argument: str = ""


class SendCounts(msgspec.Struct, tag="send_counts", array_like=True):
    """Send the `Finished` records and write the metrics counted so far, then answer `CountsSent` with `id`."""

    id: int


class CountsSent(msgspec.Struct, tag="counts_sent", array_like=True):
    id: int


class Catalog(msgspec.Struct, tag="catalog", array_like=True):
    loaded: bool
    """The engine has loaded every model of the repository once (until then, readiness waits)."""
    cards: bytes
    """A pickled list of `VersionCard`."""
    board_pid: int
    board_descriptor: int
    board_bytes: int
    """The queue board: one int64 per version (its card's `queue_slot`), the rows queued in its batcher, which
    the front-ends read to refuse a request before decoding it when the queue is full."""


class Regions(msgspec.Struct, tag="regions", array_like=True):
    """Every system shared memory region a client registered, on whichever front-end: name to (key, offset,
    byte size). Sent on every change, so a client may register on one connection and infer on another."""

    regions: dict[str, tuple[str, int, int]]


class Result(msgspec.Struct, tag="result", array_like=True):
    id: int
    queue: float
    compute_input: float
    compute_infer: float
    compute_output: float
    inferences: int


class Failure(msgspec.Struct, tag="failure", array_like=True):
    id: int
    error: str
    """The CnnserveError class name, or CANCELLED for a request the engine dropped on a `Cancel`."""
    message: str


class ControlReply(msgspec.Struct, tag="reply", array_like=True):
    id: int
    error: str
    message: str
    payload: bytes = b""


CANCELLED = "CANCELLED"
ToEngine = Hello | Submit | Cancel | Finished | Control | CountsSent
ToFrontend = Catalog | Regions | Result | Failure | ControlReply | SendCounts
encode = msgspec.msgpack.Encoder().encode
"""Encodes a list of messages: each side sends, once per event-loop iteration, every message that iteration made
(in order), so a burst of requests costs one message and reaches the batcher together."""
decode_to_engine = msgspec.msgpack.Decoder(list[ToEngine]).decode
decode_to_frontend = msgspec.msgpack.Decoder(list[ToFrontend]).decode
