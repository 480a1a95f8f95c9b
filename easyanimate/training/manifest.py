"""A checkpoint folder's manifest: the size and checksum of every file, written last by the save that commits
it, and the check of a folder against it (resume re-checks, because disks and people truncate files).

Checksums are computed by a thread pool, large files in 64 MiB pieces in parallel; "sampled-sha256" hashes huge
shards from spread blocks. Both are standard library + torch.distributed helpers only.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from easyanimate import distributed
from easyanimate.runfolder import MANIFEST, checkpoint_step

FORMAT_VERSION = 1
PIECE = 64 << 20
READ_BLOCK = 8 << 20
SAMPLED_BLOCK = 1 << 20
SAMPLED_BLOCKS = 64

Checksum = Literal["sha256", "sampled-sha256"]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used as asked; the message says why and what to do."""


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_digest(path: Path, checksum: Checksum) -> str:
    return digest_files([path], checksum)[path]


def digest_files(paths: list[Path], checksum: Checksum, *, fsync: bool = False) -> dict[Path, str]:
    """Checksums of ``paths``, computed by a thread pool (hashlib and file reads release the GIL).

    "sha256": every byte; files over 64 MiB are hashed as sha256 of their size and of the sha256 of each 64 MiB
    piece, so one big shard is read and hashed in parallel. "sampled-sha256" (for huge shards): files over
    64 MiB are hashed from their size and 64 spread 1 MiB blocks, which still catches truncation, a zero-filled
    tail and a file swapped for another checkpoint's. With ``fsync``, each file is also flushed to disk, in the
    same pool, so the disk flushes while the CPUs hash.
    """
    jobs = {path: _pieces(path, checksum) for path in paths}
    with ThreadPoolExecutor(_threads()) as pool:
        synced = [pool.submit(_fsync_file, path) for path in paths] if fsync else []
        hashed = {path: [pool.submit(_hash_ranges, path, ranges) for ranges in pieces]
                  for path, pieces in jobs.items()}
        for future in synced:
            future.result()
        digests = {path: [future.result() for future in futures] for path, futures in hashed.items()}
    return {path: parts[0].hex() if len(parts) == 1 else
            hashlib.sha256(str(path.stat().st_size).encode() + b"".join(parts)).hexdigest()
            for path, parts in digests.items()}


def _pieces(path: Path, checksum: Checksum) -> list[list[tuple[int, int]]]:
    """The (offset, length) ranges each hashing task reads; one task when the file is small."""
    size = path.stat().st_size
    if size <= PIECE:
        return [[(0, size)]]
    if checksum == "sampled-sha256":
        last = size - SAMPLED_BLOCK
        return [[(last * i // (SAMPLED_BLOCKS - 1), SAMPLED_BLOCK) for i in range(SAMPLED_BLOCKS)]]
    return [[(offset, min(PIECE, size - offset))] for offset in range(0, size, PIECE)]


def _hash_ranges(path: Path, ranges: list[tuple[int, int]]) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for offset, length in ranges:
            file.seek(offset)
            while length > 0:
                block = file.read(min(length, READ_BLOCK))
                if not block:
                    break
                digest.update(block)
                length -= len(block)
    return digest.digest()


def _threads() -> int:
    # Share the node's CPUs with the other ranks on it.
    cpus = len(os.sched_getaffinity(0)) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(2, min(16, cpus))


def read_manifest(path: Path) -> dict:
    try:
        return json.loads((Path(path) / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no {MANIFEST}: it was not written by a finished save") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}/{MANIFEST} is not valid JSON ({error})") from None


def verify_files(path: Path, manifest: dict, share: tuple[int, int] = (0, 1)) -> list[str]:
    """Problems with the files of ``path`` against its manifest; ``share=(i, n)`` checks every n-th file from i
    (largest first), so n ranks split the reading."""
    entries = sorted(manifest["files"].items(), key=lambda item: (-item[1]["size"], item[0]))
    problems, to_hash = [], {}
    for relpath, entry in entries[share[0]::share[1]]:
        file = path / relpath
        if not file.is_file():
            problems.append(f"{relpath} is missing")
        elif file.stat().st_size != entry["size"]:
            problems.append(f"{relpath} has {file.stat().st_size} bytes, the manifest says {entry['size']} "
                            "(truncated or overwritten)")
        else:
            to_hash[file] = relpath
    for file, digest in digest_files(list(to_hash), manifest["checksum"]).items():
        if digest != manifest["files"][to_hash[file]]["digest"]:
            problems.append(f"{to_hash[file]} does not match its {manifest['checksum']} checksum")
    return problems


def verify(path: Path, *, collective: bool = True) -> list[str]:
    """Every reason ``path`` cannot be resumed from (empty when it verifies). With ``collective`` (every rank
    calls it) the ranks split the reading; otherwise this process checks everything (e.g. rank 0 exporting)."""
    share = (distributed.rank(), distributed.world_size()) if collective else (0, 1)
    problems = []
    try:
        manifest = read_manifest(path)
        if manifest.get("format") != FORMAT_VERSION:
            problems.append(f"manifest format {manifest.get('format')} is not {FORMAT_VERSION}")
        elif manifest["step"] != checkpoint_step(path):
            problems.append(f"manifest says step {manifest['step']} but the folder is named {Path(path).name}")
        else:
            problems = verify_files(Path(path), manifest, share)
    except CheckpointError as error:
        problems.append(str(error))
    return sorted(set(distributed.gather_lists(problems) if collective else problems))
