"""The seed's four commands (kept in configs/jobs/), changed only in paths, sizes, workers and step count, train
end to end; and the job files say what the seed document says."""

import dataclasses
import math

import pytest

from easyanimate.config import parse_args
from seed_commands import SEED, TITLES, seed_commands, seed_document_commands
from trainer_runs import launch, ledger_ids, metrics, seed_command

# The seed document's shell variables (its `export` lines).
SEED_VARIABLES = {"$DATASET_NAME": "datasets/internal_datasets/",
                  "$DATASET_META_NAME": "datasets/internal_datasets/metadata.json"}
MODELS = {"V5.1": "models/Diffusion_Transformer/EasyAnimateV5.1-12b-zh-Control",
          "V5": "models/Diffusion_Transformer/EasyAnimateV5-12b-zh-Control"}


def _as_written_here(title: str, tokens: list[str]) -> list[str]:
    """The seed's spelling mapped onto the repository's: variables expanded, config/ is configs/."""
    variables = dict(SEED_VARIABLES, **{"$MODEL_NAME": MODELS[title.split()[0].removeprefix("EasyAnimate")]})
    out = []
    for token in tokens:
        for name, value in variables.items():
            token = token.replace(name, value)
        out.append(token.replace("config/", "configs/"))
    return out


def test_job_files_hold_the_four_seed_commands():
    commands = seed_commands()
    assert list(commands) == list(TITLES)
    for title, (launch_flags, flags) in commands.items():
        cfg = parse_args(flags)
        assert cfg.loss_type == ("flow" if "V5.1" in title else "ddpm")
        assert cfg.use_deepspeed == ("with deepspeed" in title) == ("--use_deepspeed" in launch_flags)
    if not SEED.exists():  # the seed document lies beside the repository only in the development checkout
        return
    for title, (seed_launch, seed_flags) in seed_document_commands().items():
        launch_flags, flags = commands[title]
        assert launch_flags == _as_written_here(title, seed_launch), title
        ours, theirs = (dataclasses.asdict(parse_args(f)) for f in (flags, _as_written_here(title, seed_flags)))
        # The job files leave the run folder to the SLURM layer (inside the job folder).
        ours.pop("output_dir"), theirs.pop("output_dir")
        assert ours == theirs, title

# (title, model, processes, launched as `-m easyanimate.train_control` instead of the file path)
CASES = [
    ("EasyAnimateV5.1 without deepspeed", "tiny_model_v51", 1, False),
    ("EasyAnimateV5.1 with deepspeed", "tiny_model_v51", 2, False),
    ("EasyAnimateV5 without deepspeed", "tiny_model_v5", 1, True),
    ("EasyAnimateV5 with deepspeed", "tiny_model_v5", 2, True),
]


@pytest.mark.integration
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
