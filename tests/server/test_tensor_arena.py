"""The shared tensor arena: blocks that never overlap, freed blocks that merge, and a second mapping that sees
what the first wrote (the engine maps a front-end's arena through /proc, as this test maps its own)."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from cnnserve.server.tensor_arena import ALIGNMENT, ArenaFullError, TensorArena, aligned


def test_blocks_are_aligned_and_never_overlap() -> None:
    arena = TensorArena.create(64 * ALIGNMENT)
    sizes = [1, 63, 64, 65, 324, 392, 1000]
    offsets = [arena.allocate(size) for size in sizes]
    spans = sorted((offset, offset + aligned(size)) for offset, size in zip(offsets, sizes, strict=True))
    assert all(offset % ALIGNMENT == 0 for offset in offsets)
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    arena.close()


def test_freed_blocks_merge_so_the_whole_arena_can_be_taken_again() -> None:
    arena = TensorArena.create(8 * ALIGNMENT)
    offsets = [arena.allocate(ALIGNMENT) for _ in range(8)]
    with pytest.raises(ArenaFullError, match="of 512 bytes are held"):
        arena.allocate(1)
    for offset in offsets[1::2] + offsets[0::2]:
        arena.free(offset)
    assert arena.allocated_bytes == 0
    assert arena.allocate(8 * ALIGNMENT) == 0
    arena.close()


def test_a_second_mapping_reads_and_writes_the_same_memory() -> None:
    owner = TensorArena.create(1 << 20)
    other = TensorArena.attach(os.getpid(), owner.descriptor, owner.size)
    offset = owner.allocate(4 * 81)
    written = np.arange(81, dtype=np.float32).reshape(1, 1, 9, 9)
    owner.array(offset, written.shape, written.dtype)[...] = written
    np.testing.assert_array_equal(other.array(offset, written.shape, np.float32), written)
    other.array(offset, (2,), np.float32)[...] = (7.0, 8.0)
    assert owner.array(offset, (2,), np.float32).tolist() == [7.0, 8.0]
    other.close()
    owner.close()


def test_mapping_more_than_the_arena_holds_is_refused() -> None:
    owner = TensorArena.create(4096)
    with pytest.raises(OSError, match="fewer than"):
        TensorArena.attach(os.getpid(), owner.descriptor, 8192)
    owner.close()
