"""The seed's four commands, changed only in paths, sizes, workers and step count, train end to end."""

import math

import pytest

from seed_commands import SEED
from trainer_runs import launch, ledger_ids, metrics, seed_command

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not SEED.exists(), reason="seed document missing")]

# (title, model, processes, launched as `-m easyanimate.train_control` instead of the file path)
CASES = [
    ("EasyAnimateV5.1 without deepspeed", "tiny_model_v51", 1, False),
    ("EasyAnimateV5.1 with deepspeed", "tiny_model_v51", 2, False),
    ("EasyAnimateV5 without deepspeed", "tiny_model_v5", 1, True),
    ("EasyAnimateV5 with deepspeed", "tiny_model_v5", 2, True),
]


@pytest.mark.parametrize("title,model_fixture,processes,as_module", CASES, ids=[c[0] for c in CASES])
def test_seed_command_trains_and_checkpoints(title, model_fixture, processes, as_module, request, demo_data,
                                             tmp_path):
    model = request.getfixturevalue(model_fixture)
    output = tmp_path / "out"
    launch_flags, flags = seed_command(title, model=model, data=demo_data, output=output, steps=3)
    result = launch(launch_flags, flags + ["--sample_ledger"], processes=processes, as_module=as_module)
    assert result.returncode == 0, result.stderr[-6000:]
    losses = [m["loss"] for m in metrics(output)]
    # One metrics line per step: exactly one rank writes the shared log.
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert (output / "complete.json").exists()
    seen = [ledger_ids(output, rank) for rank in range(processes)]
    assert all(len(ids) >= 3 for ids in seen)
    if processes == 2:
        # ZeRO-2 optimizer shards, one per rank: DeepSpeed really ran with two processes.
        assert len(list((output / "checkpoint-3").rglob("*zero_pp_rank_*_optim_states.pt"))) == 2
        assert not set(seen[0]) & set(seen[1]), "two ranks trained on the same samples"
