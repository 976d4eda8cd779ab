"""Shared memory that a front-end process and the engine both map, so tensors cross between them uncopied.

A front-end owns one arena: an anonymous memory file (`memfd_create`, so it is not bounded by the size of
/dev/shm, which containers often keep at 64 MB) that it maps and the engine maps too, by opening the front-end's
descriptor under /proc. The front-end writes a request's model input into a block it allocates, the engine's
batcher reads it in place and writes the probabilities into the same block, and the front-end frees the block
only once the engine has answered that request (also when the request was cancelled), so the engine never reads
memory that was handed to another request. Pages are committed as they are first touched; an arena only costs
what its busiest moment used.

The allocator is first fit over a sorted free list with coalescing: a few dozen blocks are live at a time, so a
linear scan is cheaper than anything cleverer. It is used from the front-end's event loop thread only.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os

import numpy as np

ALIGNMENT = 64
"""Block offsets and sizes are multiples of a cache line, so that arrays in the arena are aligned for SIMD."""


def aligned(nbytes: int) -> int:
    """`nbytes` rounded up to a multiple of ALIGNMENT (at least one)."""
    return max(ALIGNMENT, -(-nbytes // ALIGNMENT) * ALIGNMENT)


class ArenaFullError(Exception):
    """No free block is large enough right now."""


class TensorArena:
    """A shared memory region of `size` bytes with an allocator (in the owner) and array views (in both)."""

    def __init__(self, descriptor: int, size: int, *, owner: bool) -> None:
        self.descriptor = descriptor
        self.size = size
        self._memory = mmap.mmap(descriptor, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._owner = owner
        self._free_offsets: list[int] = [0]
        self._free_sizes: dict[int, int] = {0: size}
        self._allocated: dict[int, int] = {}

    @classmethod
    def create(cls, size: int) -> TensorArena:
        """A new arena, owned by this process (the front-end)."""
        descriptor = os.memfd_create("cnnserve-tensors", 0)
        os.ftruncate(descriptor, size)
        return cls(descriptor, size, owner=True)

    @classmethod
    def attach(cls, pid: int, descriptor: int, size: int) -> TensorArena:
        """Map the arena that process `pid` holds open as `descriptor` (the engine's side).

        Raises OSError when the process is gone or its descriptor cannot be opened.
        """
        own = os.open(f"/proc/{pid}/fd/{descriptor}", os.O_RDWR)
        try:
            if os.fstat(own).st_size < size:
                raise OSError(f"the arena of process {pid} holds fewer than {size} bytes")
            return cls(own, size, owner=False)
        finally:
            os.close(own)

    @property
    def allocated_bytes(self) -> int:
        return sum(self._allocated.values())

    def allocate(self, nbytes: int) -> int:
        """The offset of a free block of at least `nbytes`; ArenaFullError when none is large enough."""
        need = aligned(nbytes)
        for index, offset in enumerate(self._free_offsets):
            size = self._free_sizes[offset]
            if size < need:
                continue
            del self._free_offsets[index]
            del self._free_sizes[offset]
            if size > need:
                rest = offset + need
                self._free_offsets.insert(index, rest)
                self._free_sizes[rest] = size - need
            self._allocated[offset] = need
            return offset
        raise ArenaFullError(
            f"{nbytes} bytes do not fit: {self.allocated_bytes} of {self.size} bytes are held by requests in flight"
        )

    def free(self, offset: int) -> None:
        """Return the block at `offset`, merging it with free neighbours."""
        size = self._allocated.pop(offset)
        index = bisect.bisect(self._free_offsets, offset)
        if index < len(self._free_offsets) and offset + size == self._free_offsets[index]:
            following = self._free_offsets.pop(index)
            size += self._free_sizes.pop(following)
        if index > 0:
            previous = self._free_offsets[index - 1]
            if previous + self._free_sizes[previous] == offset:
                self._free_sizes[previous] += size
                return
        self._free_offsets.insert(index, offset)
        self._free_sizes[offset] = size

    def array(self, offset: int, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
        """A numpy view of the arena at `offset` (no copy); writes through it are seen by the other process."""
        return np.ndarray(shape, dtype, buffer=self._memory, offset=offset)

    def close(self) -> None:
        """Unmap (once no view is left; the last view's release unmaps otherwise) and close the owner's file."""
        with contextlib.suppress(BufferError):
            self._memory.close()
        if self._owner:
            os.close(self.descriptor)
