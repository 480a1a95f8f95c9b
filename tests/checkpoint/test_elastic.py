"""Resuming a checkpoint on another number of processes (elastic resume), DeepSpeed ZeRO-2 and plain DDP.

The real processes (ckpt_worker.py under accelerate launch, gloo on CPU) check the states: the resumed run saves
what it loaded into another folder at once, and the merged views of both checkpoints (model weights, fp32 master
weights, Adam moments and step counts, LR schedule) must be equal; two resumes of one checkpoint on the new world
size must end bitwise equal; the original checkpoint is only read. The plan (global batch, schedule length) and
the derived random streams are checked as functions; the data stream in sampler terms is in
tests/data/test_sampler.py and through the real trainer in tests/training/test_elastic_training.py.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from easyanimate.training import elastic, rng_state
from easyanimate.training.manifest import verify
from launching import REPO, run

WORKER = str(REPO / "tests" / "checkpoint" / "ckpt_worker.py")


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def merged(checkpoint: Path, deepspeed: bool) -> dict:
    """World-size independent view of a checkpoint: every tensor of model, master weights, optimizer, schedule."""
    if deepspeed:
        engine = elastic.universal_form(checkpoint) / elastic.DEEPSPEED_TAG
        view = {f"{d.name}/{f.stem}": torch.load(f, weights_only=False)
                for d in sorted((engine / "zero").iterdir()) if d.is_dir() for f in sorted(d.iterdir())}
        view = {key: value["param"] if isinstance(value, dict) else value for key, value in view.items()}
        common = torch.load(engine / "zero" / "optimizer_state.pt", weights_only=False)
        view["param_groups"] = [{k: v for k, v in group.items() if k != "params"}
                                for group in common["param_groups"]]
        module = torch.load(engine / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    else:
        optimizer = torch.load(checkpoint / "optimizer.bin", weights_only=False)
        view = {f"{index}/{name}": value for index, state in optimizer["state"].items()
                for name, value in state.items()}
        view["param_groups"] = [{k: v for k, v in group.items() if k != "params"}
                                for group in optimizer["param_groups"]]
        module = load_file(checkpoint / "model.safetensors")
    view |= {f"module/{name}": tensor for name, tensor in module.items()}
    view["scheduler"] = torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=False)
    return view


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        if torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.integration
@pytest.mark.parametrize("mode, before, after, resumes", [("deepspeed", 2, 1, 1), ("deepspeed", 1, 3, 2),
                                                         ("plain", 2, 1, 1)])
def test_resume_on_another_world_size_keeps_every_state_and_is_reproducible(mode, before, after, resumes,
                                                                           tiny_model_v51, tmp_path):
    """(Two resumes of one checkpoint once: launches are slow on CPU; the trainer test below repeats it.)"""
    model = ("--transformer", str(tiny_model_v51 / "transformer"))
    first = tmp_path / "first"
    code, log = run(mode, [WORKER, "--output_dir", str(first), *model, "--steps", "2"], tmp_path, processes=before)
    assert code == 0, log
    (first / "result.json").unlink()
    written = digests(first / "checkpoint-2")
    weights = []
    for name in ("A", "B")[:resumes]:  # resumes of the same checkpoint on the new world size
        out = tmp_path / name
        shutil.copytree(first, out)
        code, log = run(mode, [WORKER, "--output_dir", str(out), *model, "--steps", "4", "--resume", "latest",
                               "--resave_to", str(tmp_path / f"{name}-resaved")], tmp_path, processes=after)
        assert code == 0, log
        assert f"written by {before} processes and this run has {after}: elastic resume" in log
        weights.append(json.loads((out / "result.json").read_text())["weights"])
        assert digests(out / "checkpoint-2") == written and verify(out / "checkpoint-2", collective=False) == []
        assert not list(out.glob(".tmp-*"))
        if mode == "deepspeed":  # the converted form sits next to the original, tagged with its source
            source = json.loads((out / "universal-checkpoint-2" / elastic.SOURCE).read_text())
            assert source["checkpoint"] == "checkpoint-2"
    deepspeed = mode == "deepspeed"
    saved = merged(first / "checkpoint-2", deepspeed)
    resumed = merged(tmp_path / "A-resaved" / "checkpoint-2", deepspeed)
    assert_same(saved, resumed)
    steps = [v for k, v in saved.items() if k.endswith("step")]
    assert steps and all(int(s) == 2 for s in steps)  # Adam's step count, not a fresh optimizer
    assert saved["scheduler"]["last_epoch"] == 2
    assert len(set(weights[0])) == 1 and all(w == weights[0] for w in weights)


def write_checkpoint(folder: Path, world: int, record: dict | None) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"world_size": world}))
    (folder / "rank_states").mkdir()
    torch.save({"global_step": 10, **({"batch": record} if record else {})}, folder / "rank_states" / "rank00000.pt")
    return folder


def config(**flags):
    from types import SimpleNamespace
    return SimpleNamespace(**{"train_batch_size": 2, "gradient_accumulation_steps": 1, **flags})


def test_plan_keeps_the_global_batch_by_changing_the_accumulation(tmp_path):
    path = write_checkpoint(tmp_path / "checkpoint-10", 4, elastic.batch_record(4, 2, 3, 500))
    plan = elastic.plan(path, config(gradient_accumulation_steps=3), world=6)
    assert (plan.accumulation, plan.global_batch, plan.max_train_steps) == (2, 24, 500)
    assert "global batch kept at 24" in plan.describe() and "accumulation 3 -> 2" in plan.describe()
    assert elastic.plan(path, config(gradient_accumulation_steps=3), world=1).accumulation == 12
    same = elastic.plan(path, config(gradient_accumulation_steps=5), world=4)
    assert not same.changed and same.accumulation == 5  # same world size: the flag is the user's
    with pytest.raises(elastic.ElasticError, match=r"5 processes cannot keep it.*\[1, 2, 3, 4, 6, 12\]"):
        elastic.plan(path, config(gradient_accumulation_steps=3), world=5)
    with pytest.raises(elastic.ElasticError, match="--train_batch_size 2"):
        elastic.plan(path, config(train_batch_size=4, gradient_accumulation_steps=3), world=2)


def test_plan_for_a_checkpoint_without_the_record_assumes_the_flags(tmp_path):
    path = write_checkpoint(tmp_path / "checkpoint-10", 2, None)
    plan = elastic.plan(path, config(gradient_accumulation_steps=2), world=1)
    assert (plan.saved_accumulation, plan.accumulation, plan.max_train_steps) == (2, 4, None)


def test_derived_streams_depend_on_rank_world_and_step_only():
    def draw(step, rank, world):
        generator = torch.Generator()
        random.seed(123), np.random.seed(5), torch.manual_seed(7)  # whatever came before must not matter
        rng_state.derive(42, step, rank, world, {"train": generator})
        return (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=generator).item())
    assert draw(10, 1, 3) == draw(10, 1, 3)
    others = {draw(10, 0, 3), draw(10, 2, 3), draw(11, 1, 3), draw(10, 1, 2)}
    assert draw(10, 1, 3) not in others and len(others) == 4


def trainer_flags(model: Path, data: Path, out: Path, *, steps: int, accumulation: int, resume: str) -> list[str]:
    from test_exact_resume import command
    replaced = {"--gradient_accumulation_steps": str(accumulation), "--checkpointing_steps": "3",
                "--max_train_steps": str(steps), "--resume_from_checkpoint": resume}
    flags = [f"{flag.split('=')[0]}={replaced[flag.split('=')[0]]}" if flag.split("=")[0] in replaced else flag
             for flag in command(model, data, out, deepspeed=True)]
    return flags


def ledger(out: Path) -> list[dict]:
    return [json.loads(line) for path in sorted((out / "ledger").glob("rank*.jsonl"))
            for line in path.read_text().splitlines()]


@pytest.mark.integration
def test_trainer_resumed_on_one_process_finishes_the_epoch_of_two_and_is_reproducible(tiny_model_v51, demo_data,
                                                                                     tmp_path):
    """ZeRO-2, 2 processes x batch 1 x accumulation 1 to step 3 (6 of epoch 0's global batches), then twice from
    that checkpoint on 1 process (accumulation 2) to step 6, across the end of epoch 0."""
    from easyanimate.config import parse_args
    from easyanimate.data import build_train_dataloader
    zero2 = REPO / "configs" / "zero_stage2_config.json"
    first = tmp_path / "first"
    code, log = run("deepspeed", trainer_flags(tiny_model_v51, demo_data, first, steps=3, accumulation=1,
                                               resume="latest"), tmp_path, processes=2, ds_config=zero2)
    assert code == 0, log[-5000:]
    outs = []
    for name in ("A", "B"):
        out = tmp_path / name
        shutil.copytree(first, out, ignore=lambda folder, names: [  # the finished run's outputs, not its checkpoint's
            n for n in names if Path(folder) == first and n in ("transformer", "complete.json")])
        flags = trainer_flags(tiny_model_v51, demo_data, out, steps=6, accumulation=1, resume="checkpoint-3")
        code, log = run("deepspeed", flags, tmp_path, processes=1, ds_config=zero2)
        assert code == 0, log[-5000:]
        assert "elastic resume" in log and "global batch kept at 2 samples" in log, log[-5000:]
        assert "gradient accumulation 1 -> 2" in log
        outs.append(out)
    a, b = (load_file(out / "transformer" / "diffusion_pytorch_model.safetensors") for out in outs)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []  # two resumes on one process: bitwise equal
    assert ledger(outs[0]) == ledger(outs[1])

    # In sample terms: epoch 0 is its global batch list once, 6 batches from 2 ranks and the rest from 1 (a single
    # rank divides any rest: no tail); epoch 1 is a 1-process epoch from its first batch.
    cfg = parse_args(trainer_flags(tiny_model_v51, demo_data, first, steps=6, accumulation=2, resume="latest")[1:])
    sampler = build_train_dataloader(cfg, rank=0, world_size=1).sampler
    ids = {epoch: [[sampler.items[p].index for p in batch] for batch in sampler.global_batches(epoch)]
           for epoch in (0, 1)}
    lines = ledger(outs[0])
    trained0 = sorted(i for line in lines if line["epoch"] == 0 for i in line["ids"])
    assert trained0 == sorted(i for batch in ids[0] for i in batch)
    two_ranks = [line for line in lines if line["step"] <= 3]
    assert len(two_ranks) == 6 and {line["epoch"] for line in two_ranks} == {0}
    one_rank = [line["ids"] for line in lines if line["step"] > 3]
    assert len(one_rank) == 6  # 3 steps x accumulation 2 on one process
    rest = len(ids[0]) - 6
    assert one_rank[:rest] == ids[0][6:] and one_rank[rest:] == ids[1][:6 - rest]


def test_a_save_removes_the_universal_forms_of_older_checkpoints(tmp_path):
    for step in (3, 6):
        (tmp_path / f"{elastic.UNIVERSAL_PREFIX}{step}").mkdir()
    elastic.remove_converted(tmp_path, before_step=6)
    assert [p.name for p in tmp_path.iterdir()] == [f"{elastic.UNIVERSAL_PREFIX}6"]
