"""System shared memory regions (the Open Inference Protocol's shared-memory extension, as Triton has it).

A client on the same host puts its input tensor into a POSIX shared memory object (`/dev/shm/<key>`), registers
it under a name, and then sends requests that only point into it: no tensor bytes cross gRPC, and the server
hands ONNX Runtime a view of the mapped memory without copying it. Outputs can be written back the same way.
This is how Triton's clients (`tritonclient.utils.shared_memory`) feed a server on the same machine at full
speed, and they work against cnnserve unchanged.

The client owns the object and its contents: it must not change a region while a request that reads it is in
flight. The server maps what it is told to, within /dev/shm only, and never creates or removes an object. Only
processes on the server's host can use this, and they are trusted as much as Triton trusts them: a process that
shrinks an object while a request reads it can crash the server (SIGBUS). The size is checked at every use, so
that only a shrink racing with a request can do that; `--no-allow-shared-memory` turns the extension off.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnserve.server.errors import (
    CnnserveError,
    InvalidInputError,
    SharedMemoryDisabledError,
    SharedMemoryRegionExistsError,
    SharedMemoryRegionNotFoundError,
    TooManySharedMemoryRegionsError,
)

_log = logging.getLogger(__name__)
SHARED_MEMORY_ROOT = Path("/dev/shm")
MAX_REGIONS = 256
"""Registered regions at once; a leaking client is refused instead of mapping without end."""


@dataclass(frozen=True)
class SharedMemoryRegion:
    """A registered region: `byte_size` bytes at `offset` of the shared memory object `key`."""

    name: str
    key: str
    offset: int
    byte_size: int
    memory: mmap.mmap = field(repr=False, compare=False)
    descriptor: int = field(repr=False, compare=False)
    """Kept open to check, at every use, that the object still holds the region."""
    address: int = field(repr=False, compare=False, default=0)
    """Where the mapping starts in this process's memory (to tell whether an array is a view of the region)."""

    def view(self, offset: int, byte_size: int, purpose: str) -> memoryview:
        """`byte_size` bytes at `offset` inside the region, without copying; InvalidInputError when out of it."""
        if offset < 0 or byte_size < 0 or offset + byte_size > self.byte_size:
            raise InvalidInputError(
                f"invalid offset + byte size for shared memory region '{self.name}' ({purpose}): "
                f"{offset} + {byte_size} is beyond its {self.byte_size} bytes"
            )
        start = self.offset + offset
        if os.fstat(self.descriptor).st_size < start + byte_size:
            raise InvalidInputError(
                f"shared memory object '{self.key}' of region '{self.name}' was shrunk below the region; "
                "unregister and register it again"
            )
        return memoryview(self.memory)[start : start + byte_size]

    @property
    def placement(self) -> tuple[str, int, int]:
        return (self.key, self.offset, self.byte_size)

    def release(self) -> None:
        """Close the descriptor, and unmap now if no request holds a view (else the last view's release does)."""
        os.close(self.descriptor)
        with contextlib.suppress(BufferError):
            self.memory.close()


def _address_of(memory: mmap.mmap) -> int:
    pointer = ctypes.c_char.from_buffer(memory)
    try:
        return ctypes.addressof(pointer)
    finally:
        del pointer


def shared_memory_disabled() -> SharedMemoryDisabledError:
    """What a client that uses shared memory hears from a server started with --no-allow-shared-memory."""
    return SharedMemoryDisabledError(
        "system shared memory is turned off on this server (--no-allow-shared-memory); send tensors in the "
        "messages instead"
    )


class SystemSharedMemory:
    """The regions clients have registered, by name."""

    def __init__(self, root: Path = SHARED_MEMORY_ROOT, max_regions: int = MAX_REGIONS) -> None:
        self._root = root
        self._max_regions = max_regions
        self._regions: dict[str, SharedMemoryRegion] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> SharedMemoryRegion:
        """Map `byte_size` bytes at `offset` of the object `key` under `name`.

        Raises SharedMemoryRegionExistsError for a name in use, InvalidInputError for a bad key, for a size or
        offset the object does not have or for no object at all, and TooManySharedMemoryRegionsError when
        MAX_REGIONS are registered.
        """
        if not name:
            raise InvalidInputError("a shared memory region needs a name")
        if name in self._regions:
            raise SharedMemoryRegionExistsError(
                f"shared memory region '{name}' is already registered; unregister it first or use another name"
            )
        if len(self._regions) >= self._max_regions:
            raise TooManySharedMemoryRegionsError(
                f"{self._max_regions} shared memory regions are registered, the most this server holds; "
                "unregister regions that are no longer used"
            )
        if byte_size <= 0 or offset < 0:
            raise InvalidInputError(
                f"shared memory region '{name}' needs a positive byte_size and an offset >= 0, "
                f"got byte_size {byte_size} and offset {offset}"
            )
        path = self._path_of(key)
        try:
            descriptor = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise InvalidInputError(
                f"unable to open shared memory region '{name}': no shared memory object '{key}' "
                f"({exc.strerror}); create it (shm_open) before registering"
            ) from exc
        try:
            object_size = os.fstat(descriptor).st_size
            if offset + byte_size > object_size:
                raise InvalidInputError(
                    f"shared memory region '{name}' asks for {byte_size} bytes at offset {offset}, but object "
                    f"'{key}' holds {object_size} bytes"
                )
            memory = mmap.mmap(descriptor, offset + byte_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(descriptor)
            raise
        region = SharedMemoryRegion(name, key, offset, byte_size, memory, descriptor, _address_of(memory))
        self._regions[name] = region
        return region

    def unregister(self, name: str) -> None:
        """Forget `name` (every region when `name` is empty). Unknown names are fine, as in Triton.

        The mapping goes away once no request in flight still reads or writes it.
        """
        names = list(self._regions) if not name else [name]
        for each in names:
            region = self._regions.pop(each, None)
            if region is not None:
                region.release()

    def adopt(self, regions: dict[str, tuple[str, int, int]]) -> None:
        """Hold exactly `regions` (name to key, offset, byte size): the regions clients registered with the
        server's other front-ends. One that cannot be mapped here is left out (its uses answer NOT_FOUND)."""
        for name in [name for name, region in self._regions.items() if regions.get(name) != region.placement]:
            self.unregister(name)
        for name, (key, offset, byte_size) in regions.items():
            if name not in self._regions:
                try:
                    self.register(name, key, offset, byte_size)
                except CnnserveError as exc:
                    _log.warning("shared memory region %r registered elsewhere cannot be mapped here: %s", name, exc)

    def get(self, name: str) -> SharedMemoryRegion:
        try:
            return self._regions[name]
        except KeyError:
            raise SharedMemoryRegionNotFoundError(f"unable to find system shared memory region: '{name}'") from None

    def locate(self, array: np.ndarray) -> tuple[str, int] | None:
        """The registered region `array` lies in and its offset in the region, None when it lies in none (a
        front-end then copies it into its arena; the engine maps the region itself)."""
        if not self._regions:
            return None
        start = array.__array_interface__["data"][0]
        end = start + array.nbytes
        for region in self._regions.values():
            begin = region.address + region.offset
            if begin <= start and end <= begin + region.byte_size:
                return region.name, start - begin
        return None

    def status(self, name: str) -> list[SharedMemoryRegion]:
        """Every region, or just `name` (SharedMemoryRegionNotFoundError when it is not registered)."""
        return [self.get(name)] if name else list(self._regions.values())

    def close(self) -> None:
        self.unregister("")

    def _path_of(self, key: str) -> Path:
        """The file of shared memory object `key` ("/name" or "name"); anything that leaves the root is refused."""
        bare = key[1:] if key.startswith("/") else key
        if not bare or "/" in bare or bare in (".", ".."):
            raise InvalidInputError(
                f"invalid shared memory key '{key}': it must name one object, like '/my_input' (shm_open's form)"
            )
        return self._root / bare
