"""Builds the stand-in container runtime (tests/slurm/apptainer/main.go, see its header) and a stand-in image.

The runtime is compiled with the Debian ``golang-go`` toolchain (tests/setup_system.sh) once per test session,
never committed as a binary. The "image" is a text file of KEY=VALUE lines, the image's %environment: its PATH
puts this checkout's venv first, so ``python`` inside the container is the venv that has this worktree
installed (editable) and ``--cleanenv`` may drop PYTHONPATH without losing the package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "apptainer"


def missing() -> str | None:
    """Why the stand-in cannot be built here, or None."""
    if shutil.which("go") is None:
        return "go is not installed (apt-get install golang-go; tests/setup_system.sh does it)"
    return None


def build(bin_dir: Path, cache: Path, name: str = "apptainer") -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    out = bin_dir / name
    env = {**os.environ, "GOCACHE": str(cache), "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0", "GO111MODULE": "on"}
    subprocess.run(["go", "build", "-o", str(out), "."], cwd=SOURCE, env=env, check=True, capture_output=True,
                   timeout=300)
    return out


def make_image(path: Path, python: str = sys.executable) -> Path:
    """A stand-in .sif: the image's environment, with the Python that plays the image's own first on PATH."""
    path.write_text(f"PATH={Path(python).parent}:/usr/local/bin:/usr/bin:/bin\nPYTHONUNBUFFERED=1\n")
    return path


def path_with(bin_dir: Path | None, environ: dict[str, str] = os.environ) -> str:
    """PATH with the stand-in first (or, with None, with every real or stand-in runtime removed)."""
    dirs = [d for d in environ.get("PATH", "").split(os.pathsep)
            if d and not any(Path(d, n).exists() for n in ("apptainer", "singularity"))]
    return os.pathsep.join(([str(bin_dir)] if bin_dir else []) + dirs)
