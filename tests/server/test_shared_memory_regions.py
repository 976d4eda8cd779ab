"""The registry of system shared memory regions as a multi-process server uses it: every front-end adopts the
regions registered on any of them, and an input that lies in a region is sent to the engine by reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnserve.server.shared_memory import SystemSharedMemory


def shared_object(root: Path, key: str, size: int) -> None:
    (root / key).write_bytes(bytes(size))


def test_an_array_viewing_a_region_is_located_in_it(tmp_path: Path) -> None:
    shared_object(tmp_path, "inputs", 4096)
    regions = SystemSharedMemory(root=tmp_path)
    regions.register("batch", "/inputs", offset=1024, byte_size=2048)
    rows = np.frombuffer(regions.get("batch").view(324, 4 * 81, "input"), np.float32).reshape(1, 1, 9, 9)
    assert regions.locate(rows) == ("batch", 324)
    assert regions.locate(np.zeros((1, 1, 9, 9), np.float32)) is None, "a copy lies in no region"
    regions.close()


def test_adopting_the_servers_regions_maps_new_ones_and_drops_gone_or_moved_ones(tmp_path: Path) -> None:
    for key in ("a", "b", "c"):
        shared_object(tmp_path, key, 1024)
    regions = SystemSharedMemory(root=tmp_path)
    regions.register("kept", "/a", 0, 512)
    regions.register("moved", "/b", 0, 512)
    regions.register("gone", "/c", 0, 512)
    regions.adopt({"kept": ("/a", 0, 512), "moved": ("/b", 256, 512), "new": ("/c", 0, 1024), "broken": ("/x", 0, 8)})
    placements = {region.name: region.placement for region in regions.status("")}
    assert placements == {"kept": ("/a", 0, 512), "moved": ("/b", 256, 512), "new": ("/c", 0, 1024)}
    regions.close()
