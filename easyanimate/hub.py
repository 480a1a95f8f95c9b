"""Hub ids in --pretrained_model_name_or_path: ``org/name`` (with --revision) is taken from huggingface_hub's
local cache, never downloaded here.

Compute nodes rarely reach the internet; login nodes usually do. So a model is fetched once with ``hf download``
where there is a network, and every later step (``slurm/submit.py`` on the submitting machine, the trainer) only
reads the cache. A cached snapshot is a folder of links into the repository's ``blobs/``, so whoever mounts it
elsewhere (a container) must mount the repository's cache folder, not only the snapshot (``cache_root``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class HubModelNotCached(FileNotFoundError):
    """A hub id that is not in the local cache; the message says how to fetch it."""


def is_hub_id(value: str, base: str | Path = ".") -> bool:
    """``org/name`` that is not a path on this machine (relative paths taken from ``base``)."""
    return bool(HUB_ID.match(value)) and not os.path.exists(os.path.join(base, value)) and ".." not in value


def _fetch_hint(repo_id: str, revision: str | None) -> str:
    return f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")


def resolve_model_folder(name_or_path: str, revision: str | None = None) -> Path:
    """The local folder: a path as given, or the cached snapshot of a hub id at ``revision`` (default: main)."""
    if not is_hub_id(name_or_path):
        return Path(name_or_path)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name_or_path, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        raise HubModelNotCached(
            f"--pretrained_model_name_or_path {name_or_path}"
            + (f" --revision {revision}" if revision else "")
            + f": neither a folder nor in the Hugging Face cache ({constants.HF_HUB_CACHE}). Fetch it once where "
            f"there is a network (a login node): `{_fetch_hint(name_or_path, revision)}` (same HF_HOME / "
            "HF_HUB_CACHE as here), or pass a local folder.") from None


def cache_root(folder: Path) -> Path | None:
    """The repository cache folder (``models--org--name``) holding a snapshot's links and blobs, or None."""
    folder = Path(folder)
    if folder.parent.name == "snapshots" and folder.parents[1].name.startswith("models--"):
        return folder.parents[1]
    return None


def resolve_flags(flags: dict, base: str | Path = ".") -> list[str]:
    """For a job submitted from this machine: replace a hub id in ``flags["pretrained_model_name_or_path"]`` by
    its cached snapshot's path (compute nodes then need no network) and return the folders a container must
    mount for it (the repository's cache folder: the snapshot's links point into its blobs/)."""
    value = flags.get("pretrained_model_name_or_path")
    if not isinstance(value, str) or not is_hub_id(value, base):
        return []
    folder = resolve_model_folder(value, flags.get("revision"))
    flags["pretrained_model_name_or_path"] = str(folder)
    root = cache_root(folder)
    return [str(root)] if root else []
