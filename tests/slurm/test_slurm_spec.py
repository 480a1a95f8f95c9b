"""Job spec and training-flag resolution: job file + flags -> one validated spec, errors that name the option."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from slurm import jobs, spec as specs, submit
from slurm.spec import JobSpec, SpecError

REPO = Path(__file__).resolve().parents[2]

V51_DS = REPO / "configs" / "jobs" / "v5.1_control_deepspeed.yaml"


def build(options=None, extra=(), job=V51_DS, **kw):
    return jobs.build_spec({"image": "/img/e.sif", **(options or {})}, job_file=str(job) if job else None,
                           extra=list(extra), cwd=REPO, **kw)


@pytest.mark.parametrize("value, seconds", [("30", 1800), ("1:30", 90), ("24:00:00", 86400), ("2-00", 172800),
                                            ("1-02:03", 93780), ("1-00:00:05", 86405)])
def test_time_accepts_every_sbatch_form(value, seconds):
    assert specs.time_to_seconds(value) == seconds


def test_every_job_file_builds_and_matches_the_seed_flags():
    for path in sorted((REPO / "configs" / "jobs").glob("*.yaml")):
        spec = build(job=path)
        assert "--resume_from_checkpoint=latest" in spec.train_args
        assert spec.deepspeed == ("--use_deepspeed" in spec.train_args), path.name


def test_extra_flags_override_the_job_file_and_suite_flags_are_added():
    spec = build(extra=["--learning_rate=1e-4", "--output_dir", "/out/run"])
    assert "--learning_rate=0.0001" in spec.train_args and "--learning_rate=2e-05" not in spec.train_args
    assert spec.output_dir == "/out/run" and "--output_dir=/out/run" in spec.train_args
    assert "--use_deepspeed" in spec.train_args


def test_relative_training_paths_resolve_against_the_submit_directory(tmp_path):
    spec = jobs.build_spec({"image": "e.sif"}, job_file=str(V51_DS), cwd=tmp_path)
    assert f"--train_data_meta={tmp_path}/datasets/internal_datasets/metadata.json" in spec.train_args
    assert spec.image == str(tmp_path / "e.sif")
    assert spec.output_dir == str(tmp_path / "runs" / "easyanimate-v5.1-control-zero2" / "output")


def test_unknown_training_flag_fails_at_submit_time():
    with pytest.raises(SpecError, match="--learning_rat"):
        build(extra=["--learning_rat=1"])
    with pytest.raises(SpecError, match="loss_type"):
        build(extra=["--loss_type=l2"])


@pytest.mark.parametrize("options, message", [
    ({"nodes": 0}, "--nodes"),
    ({"image": None}, "--image"),
    ({"nccl": "fast"}, "--nccl"),
    ({"time": "soon"}, "--time"),
    ({"signal_lead_s": 4000, "time": "1:00:00"}, "--signal-lead-s"),
    ({"name": "two\nlines"}, "--name"),
    ({"env": {"BAD-NAME": "1"}}, "--env"),
    ({"job_dir": "/scratch/a,b"}, "bind"),
])
def test_invalid_options_are_refused_with_the_option_named(options, message):
    with pytest.raises(SpecError, match=message):
        build(options)


def test_unknown_job_file_key_is_refused(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: x\nnode: 2\n")
    with pytest.raises(SpecError, match="node"):
        build(job=job)


def test_every_spec_field_meant_for_users_has_a_submit_flag():
    parser = submit.build_parser()
    dests = {a.dest for a in parser._actions}
    for f in dataclasses.fields(JobSpec):
        assert (f.name in dests) == f.metadata["cli"], f.name


def test_spec_survives_the_json_round_trip():
    spec = build(extra=["--validation_prompts", "a \"quoted\" $(prompt)", "--validation_paths", "/v.mp4"])
    assert specs.from_json(specs.to_json(spec)) == spec


def test_lead_time_default_is_one_step_plus_this_models_save_plus_margin():
    spec = build({"nodes": 1, "gpus_per_node": 8})  # the seed's model folder is not here: its YAML's published shapes
    # ZeRO-2 on one 8-GPU node: 11.80 B x (2 bf16 module + 12 fp32 master/Adam) bytes = 165.2 GB at 1 GB/s, twice.
    assert spec.signal_lead_s == math.ceil(60 + 2 * 11_799_450_176 * 14 / 1e9 + 30)
    # 4 nodes: node 0 holds the bf16 module (23.6 GB) and its 8 of 32 optimizer shards (35.4 GB)
    assert build({"nodes": 4, "gpus_per_node": 8}).signal_lead_s == math.ceil(60 + 2 * 11_799_450_176 * 5 / 1e9 + 30)
    assert build({"signal_lead_s": 90}).signal_lead_s == 90
    line = jobs.lead_time_line(spec, None)
    assert "165 GB" in line and "11.80B" in line and "published shapes" in line


def test_lead_time_counts_the_model_exactly_as_the_memory_plan_does(tiny_model_v51, tmp_path):
    v51 = str(REPO / "configs" / "easyanimate_video_v5.1_magvit_qwen.yaml")
    params, source = jobs.transformer_params({"pretrained_model_name_or_path": str(tiny_model_v51),
                                              "config_path": v51})
    assert params == sum(t.numel() for t in load_file(tiny_model_v51 / "transformer" /
                                                      "diffusion_pytorch_model.safetensors").values())
    assert str(tiny_model_v51) in source
    # Not on this machine: the published shapes of the model its YAML names (the real V5.1 12B).
    params, source = jobs.transformer_params({"pretrained_model_name_or_path": "/cluster/only", "config_path": v51})
    assert params == 11_799_450_176 and "published shapes" in source
    params, source = jobs.transformer_params({"pretrained_model_name_or_path": str(tmp_path / "absent")})
    assert params == jobs.DEFAULT_PARAMS and "12B default" in source


def test_lead_time_warns_when_the_lead_or_the_grace_time_is_too_short():
    spec = build({"signal_lead_s": 200, "nodes": 4})
    assert jobs.lead_time_warnings(spec, measured=10.0, grace=None) == []   # 60 + 2 x 10 + 30 = 110
    assert "at least 230" in jobs.lead_time_warnings(spec, measured=70.0, grace=None)[0]
    assert "GraceTime=60" in " ".join(jobs.lead_time_warnings(spec, measured=10.0, grace=60))
    with pytest.raises(SpecError, match="does not fit in --time"):
        build({"time": "5:00"})


def test_nodes_accepts_a_min_max_range_and_a_count_replaces_it():
    from slurm import render
    spec = build({"nodes": "2-4"})
    assert (spec.nodes, spec.max_nodes) == (2, 4) and render.directives(spec)["nodes"] == "2-4"
    assert render.directives(build({"nodes": "3"}))["nodes"] == 3
    with pytest.raises(SpecError, match="--nodes: '2-x'"):
        build({"nodes": "2-x"})
    with pytest.raises(SpecError, match="below --nodes 4"):
        build({"nodes": "4-2"})


def test_resubmit_changes_the_node_count_of_a_job_folder(tmp_path, capsys):
    spec = build({"nodes": "2-4", "job_dir": str(tmp_path / "job")})
    Path(spec.job_dir).mkdir()
    (Path(spec.job_dir) / "job.json").write_text(specs.to_json(spec))
    assert submit.main(["resubmit", spec.job_dir, "--nodes", "1", "--dry-run"]) == 0
    assert "#SBATCH --nodes=1\n" in capsys.readouterr().out
    assert submit.main(["resubmit", spec.job_dir, "--dry-run"]) == 0
    assert "#SBATCH --nodes=2-4\n" in capsys.readouterr().out
    assert submit.main(["resubmit", str(tmp_path), "--nodes", "1"]) == 2
    assert "not a job folder" in capsys.readouterr().err
