"""Resuming a checkpoint on another number of processes (elastic resume), DeepSpeed ZeRO-2 and plain DDP.

The real processes (ckpt_worker.py under accelerate launch, gloo on CPU) check the states: the resumed run saves
what it loaded into another folder at once, and the merged views of both checkpoints (model weights, fp32 master
weights, Adam moments and step counts, LR schedule) must be equal; the original checkpoint is only read. The
real trainer resumes each case twice: the per-sample ledger follows the documented rule, and the two resumes end
bitwise equal. The plan (global batch, schedule length) and the derived random streams are checked as
functions; the data stream in sampler terms is in tests/data/test_sampler.py.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from easyanimate.training import elastic, rng_state
from easyanimate.training.checkpoint import Checkpointer
from easyanimate.training.manifest import verify
from launching import REPO, run
from test_checkpointer import trainer  # noqa: F401 (a fixture)

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
@pytest.mark.parametrize("mode, before, after", [("deepspeed", 2, 1), ("deepspeed", 1, 3), ("plain", 2, 1)])
def test_resume_on_another_world_size_keeps_every_state(mode, before, after, tiny_model_v51, tmp_path):
    """(One resume each: launches are slow on CPU; the trainer test below resumes every case twice.)"""
    model = ("--transformer", str(tiny_model_v51 / "transformer"))
    first, out = tmp_path / "first", tmp_path / "resumed"
    code, log = run(mode, [WORKER, "--output_dir", str(first), *model, "--steps", "2"], tmp_path, processes=before)
    assert code == 0, log
    (first / "result.json").unlink()
    written = digests(first / "checkpoint-2")
    shutil.copytree(first, out)
    code, log = run(mode, [WORKER, "--output_dir", str(out), *model, "--steps", "4", "--resume", "latest",
                           "--resave_to", str(tmp_path / "resaved")], tmp_path, processes=after)
    assert code == 0, log
    assert f"written by {before} processes and this run has {after}: elastic resume" in log
    assert digests(out / "checkpoint-2") == written and verify(out / "checkpoint-2", collective=False) == []
    assert not list(out.glob(".tmp-*"))
    deepspeed = mode == "deepspeed"
    if deepspeed:  # converted next to the original, and removed once the run's checkpoint-4 committed
        assert f"converted {out / 'checkpoint-2'} to DeepSpeed's universal form in {out / 'universal-checkpoint-2'}" \
            in log and f"removing {out / 'universal-checkpoint-2'}: checkpoint-4 supersedes it" in log
        assert not (out / "universal-checkpoint-2").exists()
    saved = merged(first / "checkpoint-2", deepspeed)
    if deepspeed:  # merged() converted it here: tagged with its source
        source = json.loads((first / "universal-checkpoint-2" / elastic.SOURCE).read_text())
        assert source["checkpoint"] == "checkpoint-2"
    resumed = merged(tmp_path / "resaved" / "checkpoint-2", deepspeed)
    assert_same(saved, resumed)
    steps = [v for k, v in saved.items() if k.endswith("step")]
    assert steps and all(int(s) == 2 for s in steps)  # Adam's step count, not a fresh optimizer
    assert saved["scheduler"]["last_epoch"] == 2
    assert len(set(json.loads((out / "result.json").read_text())["weights"])) == 1  # the ranks agree


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


def trainer_flags(model: Path, data: Path, out: Path, *, mode: str, steps: int, accumulation: int,
                  resume: str) -> list[str]:
    from test_exact_resume import command
    replaced = {"--gradient_accumulation_steps": str(accumulation), "--checkpointing_steps": "3",
                "--max_train_steps": str(steps), "--resume_from_checkpoint": resume}
    return [f"{flag.split('=')[0]}={replaced[flag.split('=')[0]]}" if flag.split("=")[0] in replaced else flag
            for flag in command(model, data, out, deepspeed=mode == "deepspeed")]


def ledger(out: Path) -> dict[int, list[dict]]:
    return {int(path.stem[4:]): [json.loads(line) for line in path.read_text().splitlines()]
            for path in sorted((out / "ledger").glob("rank*.jsonl"))}


@dataclass(frozen=True)
class Elastic:
    """A run of ``before`` processes x accumulation ``accumulation`` to step ``saved``, resumed on ``after``
    processes to step ``final``; ``tail``: batches of the spanning epoch the new world size drops."""

    mode: str
    before: int
    accumulation: int
    saved: int
    after: int
    final: int
    tail: int

    @property
    def new_accumulation(self) -> int:
        return self.before * self.accumulation // self.after


def dealt(total: int, world: int, rank: int, offset: int = 0) -> list[int]:
    """The documented rule: from global batch ``offset`` of the epoch on, rank r trains batches offset + r,
    offset + r + world, ...; the tail of the rest that does not divide among the ranks is dropped."""
    return list(range(offset + rank, total - (total - offset) % world, world))


def expected_ledger(ids: dict[int, list[list[int]]], case: Elastic) -> dict[int, list[dict]]:
    """Every rank's ledger by that rule: the old ranks from the start of epoch 0 to the saved step, then the new
    ranks from the saved global position of epoch 0, and epoch 1 from its first batch, to the final step."""
    total = len(ids[0])
    consumed = case.saved * case.accumulation
    assert consumed < total // case.before  # the checkpoint lies inside epoch 0 (the spanning epoch)
    lines: dict[int, list[dict]] = {}
    for rank in range(case.before):
        lines[rank] = [{"step": i // case.accumulation + 1, "epoch": 0, "ids": ids[0][b]}
                       for i, b in enumerate(dealt(total, case.before, rank)[:consumed])]
    offset, micro_steps = consumed * case.before, (case.final - case.saved) * case.new_accumulation
    for rank in range(case.after):
        stream = [(0, b) for b in dealt(total, case.after, rank, offset)] + \
                 [(1, b) for b in dealt(total, case.after, rank)]
        assert len(stream) >= micro_steps  # the resumed run ends inside epoch 1
        lines.setdefault(rank, []).extend(
            {"step": case.saved + i // case.new_accumulation + 1, "epoch": epoch, "ids": ids[epoch][b]}
            for i, (epoch, b) in enumerate(stream[:micro_steps]))
    return lines


ELASTIC_CASES = [
    # 6 of epoch 0's 10 global batches on 2 ranks; 1 rank deals the other 4 (no tail), then 2 of epoch 1.
    Elastic("deepspeed", before=2, accumulation=1, saved=3, after=1, final=6, tail=0),
    # 6 on 1 rank; 3 ranks deal 3 of the other 4 and drop the 10th (4 = 3 + 1), then epoch 1's first 3.
    Elastic("deepspeed", before=1, accumulation=3, saved=2, after=3, final=4, tail=1),
    Elastic("plain", before=2, accumulation=1, saved=3, after=1, final=6, tail=0),
]


@pytest.mark.integration
@pytest.mark.parametrize("case", ELASTIC_CASES, ids=lambda c: f"{c.mode}-{c.before}to{c.after}")
def test_trainer_resumed_on_another_world_size_trains_the_spanning_epoch_once_and_is_reproducible(
        case, tiny_model_v51, demo_data, tmp_path):
    """The real trainer (batch 1 per process) to a checkpoint inside epoch 0, then twice from it on the new world
    size across the end of epoch 0; the flags keep the first run's --gradient_accumulation_steps (the plan
    overrides it)."""
    from easyanimate.config import parse_args
    from easyanimate.data import build_train_dataloader
    zero2 = REPO / "configs" / "zero_stage2_config.json"

    def train(out: Path, steps: int, resume: str, processes: int) -> str:
        flags = trainer_flags(tiny_model_v51, demo_data, out, mode=case.mode, steps=steps,
                              accumulation=case.accumulation, resume=resume)
        code, log = run(case.mode, flags, tmp_path, processes=processes, ds_config=zero2)
        assert code == 0, log[-5000:]
        return log
    first = tmp_path / "first"
    train(first, case.saved, "latest", case.before)
    outs = []
    for name in ("A", "B"):
        out = tmp_path / name
        shutil.copytree(first, out, ignore=lambda folder, names: [  # the finished run's outputs, not its checkpoint's
            n for n in names if Path(folder) == first and n in ("transformer", "complete.json")])
        log = train(out, case.final, f"checkpoint-{case.saved}", case.after)
        assert f"elastic resume from {out / f'checkpoint-{case.saved}'}" in log, log[-5000:]
        assert f"global batch kept at {case.before * case.accumulation} samples" in log
        assert f"gradient accumulation {case.accumulation} -> {case.new_accumulation}" in log
        dump = json.loads((out / "config.json").read_text())
        assert dump["gradient_accumulation_steps"] == case.new_accumulation
        assert dump["as_given"] == {"gradient_accumulation_steps": case.accumulation}
        outs.append(out)
    a, b = (load_file(out / "transformer" / "diffusion_pytorch_model.safetensors") for out in outs)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []  # two resumes on the new world size: bitwise equal
    assert ledger(outs[0]) == ledger(outs[1])

    # In sample terms: epoch 0 is its global batch list once, but for the tail of the new world size; every line
    # of every rank (step, epoch, samples) is where the documented rule puts it.
    cfg = parse_args(trainer_flags(tiny_model_v51, demo_data, first, mode=case.mode, steps=case.final,
                                   accumulation=case.accumulation, resume="latest")[1:])
    sampler = build_train_dataloader(cfg, rank=0, world_size=1).sampler
    ids = {epoch: [[sampler.items[p].index for p in batch] for batch in sampler.global_batches(epoch)]
           for epoch in (0, 1)}
    lines = ledger(outs[0])
    trained0 = [i for rank in lines.values() for line in rank if line["epoch"] == 0 for i in line["ids"]]
    kept = ids[0][:len(ids[0]) - case.tail]  # an epoch's sample ids are distinct in the demo data
    assert sorted(trained0) == sorted(i for batch in kept for i in batch)  # none repeated, none skipped
    assert lines == expected_ledger(ids, case)


@pytest.mark.parametrize("background", [False, True], ids=["save", "background-save"])
def test_a_committed_save_removes_the_universal_forms_of_older_checkpoints(background, trainer, tmp_path):
    for step in (3, 6):
        (tmp_path / f"{elastic.UNIVERSAL_PREFIX}{step}").mkdir()
    checkpointer = Checkpointer(tmp_path)
    if background:
        checkpointer.save_in_background(trainer[0], 6, {"global_step": 6})
        assert len(list(tmp_path.glob(f"{elastic.UNIVERSAL_PREFIX}*"))) == 2  # nothing before the commit
        checkpointer.wait()
    else:
        checkpointer.save(trainer[0], 6, {"global_step": 6})
    assert [p.name for p in tmp_path.glob(f"{elastic.UNIVERSAL_PREFIX}*")] == [f"{elastic.UNIVERSAL_PREFIX}6"]
