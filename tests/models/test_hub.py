"""Hub ids (org/name, --revision) resolve through huggingface_hub's cache, offline, in the trainer and on the
submitting machine (slurm/submit.py), which hands the job the snapshot's path and mounts the whole cache folder."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from easyanimate.hub import HubModelNotCached, cache_root, resolve_model_folder
from easyanimate.models import load_components, load_model_spec
from slurm import command, jobs

from model_helpers import YAML, train_config

REPO = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_hub_cache(model: Path, cache: Path, repo_id: str) -> Path:
    """``model`` as huggingface_hub stores a download: blobs by sha256, a snapshot of relative links, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    for path in sorted(p for p in model.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(model)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_model_v51_original):
    """An original-layout V5.1 repository that also carries a model_index.json (as Hub copies may)."""
    model = tmp_path / "download"
    shutil.copytree(tiny_model_v51_original, model)
    (model / "model_index.json").write_text('{"_class_name": "EasyAnimateControlPipeline"}')
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return lay_out_hub_cache(model, tmp_path / "hub", "alibaba-pai/Tiny-Control")


@pytest.mark.parametrize("revision", [None, "main", COMMIT])
def test_a_cached_hub_id_loads_offline_and_its_layout_comes_from_the_tensor_names(hub_cache, revision):
    extra = [f"--revision={revision}"] if revision else []
    cfg = train_config("alibaba-pai/Tiny-Control", "v5.1", *extra)
    assert cfg.model_folder == hub_cache
    parts = load_components(cfg, load_model_spec(YAML["v5.1"]), device="cpu", weight_dtype=torch.float32)
    assert parts.layout == "original"  # model_index.json present, but the tensors are EasyAnimate's
    assert parts.transformer.config.in_channels == 12


def test_an_id_not_in_the_cache_says_how_to_fetch_it(hub_cache):
    with pytest.raises(HubModelNotCached, match=r"`hf download alibaba-pai/Other --revision v2`"):
        resolve_model_folder("alibaba-pai/Other", "v2")


def test_submit_resolves_the_id_before_sbatch_and_mounts_the_cache_folder(hub_cache, tmp_path):
    spec = jobs.build_spec({"image": "/img/e.sif"}, job_file=str(REPO / "configs" / "jobs" / "v5.1_control.yaml"),
                           extra=["--pretrained_model_name_or_path=alibaba-pai/Tiny-Control"], cwd=tmp_path)
    assert f"--pretrained_model_name_or_path={hub_cache}" in spec.train_args
    root = cache_root(hub_cache)
    assert root.name == "models--alibaba-pai--Tiny-Control"
    # The snapshot's files are links into blobs/: the container needs the repository's cache folder.
    assert f"{root}:{root}:ro" in command.binds(spec)


def test_submit_refuses_an_uncached_id_naming_the_fetch(hub_cache, tmp_path):
    from slurm.spec import SpecError
    with pytest.raises(SpecError, match="hf download alibaba-pai/Missing"):
        jobs.build_spec({"image": "/img/e.sif"}, job_file=str(REPO / "configs" / "jobs" / "v5.1_control.yaml"),
                        extra=["--pretrained_model_name_or_path=alibaba-pai/Missing"], cwd=tmp_path)
