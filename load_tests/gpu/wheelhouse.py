"""A folder of wheels that travels in pieces: big files split into parts, joined again where they arrive.

The GPU host is reached only through transfers of a few tens of MB, so a wheel larger than that (onnxruntime-gpu
is about 255 MB) is cut into `NAME.part-aa`, `NAME.part-ab`, ... (the names `split -b 60M NAME NAME.part-` gives,
so `cat NAME.part-* > NAME` joins them too). Joining concatenates the parts in name order and then checks that
the result opens as a zip archive with intact members, because a missing or truncated part would otherwise
surface later as a baffling pip error. Only the standard library is used here.
"""

from __future__ import annotations

import hashlib
import shutil
import string
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product
from pathlib import Path

PART_MARKER = ".part-"
MEBIBYTE = 1024 * 1024
BUNDLED_H2LOAD = "h2load"
"""The folder holding a copy of h2load for a host without it (load_tests/gpu_wheels.py makes it), and the name of
its wrapper script there: run from anywhere, it finds the binary and its libraries beside itself."""


class WheelhouseError(RuntimeError):
    """The wheel folder is incomplete or damaged; the message says what to carry again."""


def _suffixes() -> Iterator[str]:
    """aa, ab, ..., zz, then aaa, ...: split's own order, which is also the names' sort order per length."""
    for length in (2, 3):
        for letters in product(string.ascii_lowercase, repeat=length):
            yield "".join(letters)


def split_file(path: Path, part_bytes: int) -> list[Path]:
    """Cut `path` into parts of at most `part_bytes` beside it and remove it; returns the parts in order.

    A file no bigger than `part_bytes` is left whole (and returned alone).
    """
    if part_bytes < 1:
        raise ValueError(f"part size must be positive, got {part_bytes}")
    if path.stat().st_size <= part_bytes:
        return [path]
    parts = []
    with path.open("rb") as source:
        for suffix in _suffixes():
            chunk = source.read(part_bytes)
            if not chunk:
                break
            part = path.with_name(f"{path.name}{PART_MARKER}{suffix}")
            part.write_bytes(chunk)
            parts.append(part)
    path.unlink()
    return parts


def part_groups(folder: Path) -> dict[str, list[Path]]:
    """Joined file name -> its parts in `folder`, in joining order (shorter suffixes first, then by name)."""
    groups: dict[str, list[Path]] = {}
    for part in folder.iterdir():
        name, marker, suffix = part.name.rpartition(PART_MARKER)
        if marker and name and suffix.isalpha():
            groups.setdefault(name, []).append(part)
    for parts in groups.values():
        parts.sort(key=lambda p: (len(p.name), p.name))
    return groups


def join_parts(folder: Path) -> list[Path]:
    """Join every split file in `folder` whose whole form is missing or of another size; returns the joined.

    Raises WheelhouseError when a joined wheel does not open as an intact zip archive (a part is missing, or
    one arrived truncated), naming the parts found.
    """
    joined = []
    for name, parts in sorted(part_groups(folder).items()):
        target = folder / name
        size = sum(part.stat().st_size for part in parts)
        if not (target.is_file() and target.stat().st_size == size):
            partial = target.with_name(target.name + ".joining")
            with partial.open("wb") as out:
                for part in parts:
                    with part.open("rb") as source:
                        shutil.copyfileobj(source, out, 16 * MEBIBYTE)
            partial.replace(target)
            joined.append(target)
        if target.suffix == ".whl":
            check_archive(target, [part.name for part in parts])
    return joined


def check_archive(path: Path, parts: list[str] | None = None) -> None:
    """Raise WheelhouseError unless `path` is a zip archive whose members all pass their CRC check."""
    origin = f" (joined from {', '.join(parts)})" if parts else ""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        raise WheelhouseError(f"{path.name}{origin} is not a readable wheel: {exc}; is a part missing?") from exc
    if damaged is not None:
        raise WheelhouseError(f"{path.name}{origin}: member {damaged} is damaged; carry its parts again")


@dataclass(frozen=True)
class CarryBatch:
    """Files small enough together to travel in one transfer."""

    paths: tuple[Path, ...]
    size: int


def tree_size(path: Path) -> int:
    """Bytes in `path`: a file's size, or the sum of the files under a folder."""
    if path.is_dir():
        return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    return path.stat().st_size


def carry_batches(paths: list[Path], limit_bytes: int, max_paths: int) -> list[CarryBatch]:
    """Group `paths` (files, or folders that travel whole) into as few batches of at most `limit_bytes` and
    `max_paths` paths as first-fit decreasing finds. Raises ValueError when one path alone is over the limit
    (split it first)."""
    batches: list[list[Path]] = []
    sizes: list[int] = []
    for path in sorted(paths, key=tree_size, reverse=True):
        size = tree_size(path)
        if size > limit_bytes:
            raise ValueError(f"{path.name} ({size / MEBIBYTE:.1f} MiB) is over the {limit_bytes / MEBIBYTE:.0f} MiB")
        for index, batch in enumerate(batches):
            if sizes[index] + size <= limit_bytes and len(batch) < max_paths:
                batch.append(path)
                sizes[index] += size
                break
        else:
            batches.append([path])
            sizes.append(size)
    return [CarryBatch(tuple(sorted(batch)), size) for batch, size in zip(batches, sizes, strict=True)]


def fingerprint(folder: Path) -> str:
    """A digest of the wheels' names and sizes: an environment installed from them is reused while it matches."""
    digest = hashlib.sha256()
    for wheel in sorted(folder.glob("*.whl")):
        digest.update(f"{wheel.name}:{wheel.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]
