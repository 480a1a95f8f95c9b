"""Site options and resource defaults: what experienced users pass through to sbatch/srun, what a job asks SLURM for
when they pass nothing, and status when slurmctld has forgotten the job."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slurm import jobs, render, resources, status, submit
from slurm.spec import SpecError

REPO = Path(__file__).resolve().parents[2]
V51_DS = REPO / "configs" / "jobs" / "v5.1_control_deepspeed.yaml"
SITE = ["--sbatch", "gres-flags=enforce-binding", "--sbatch", "overcommit", "--srun-arg=--mpi=pmix",
        "--setup", "module load cuda/12.8", "--setup", "source /etc/profile.d/site.sh", "--reservation", "big",
        "--exclude", "gpu[007-008]", "--nodelist", "gpu[001-004]", "--mail-type", "END,FAIL",
        "--mail-user", "me@example.org", "--dependency", "afterok:41"]


def site_spec(argv: list[str] = SITE, **kw):
    args = vars(submit.build_parser().parse_args(["--image", "/img.sif", "--nodes", "4", *argv]))
    for key in ("job", "dry_run", "local", "template"):
        args.pop(key)
    return jobs.build_spec(args, job_file=str(V51_DS), cwd=REPO, **kw)


def test_site_options_reach_sbatch_and_srun():
    script = render.sbatch_script(site_spec()).splitlines()
    for line in ("#SBATCH --gres-flags=enforce-binding", "#SBATCH --overcommit", "#SBATCH --reservation=big",
                 "#SBATCH --exclude='gpu[007-008]'", "#SBATCH --nodelist='gpu[001-004]'", "#SBATCH --mail-type=END,FAIL",
                 "#SBATCH --mail-user=me@example.org", "#SBATCH --dependency=afterok:41"):
        assert line in script, line
    setup = script.index("module load cuda/12.8")
    assert script[setup + 1] == "source /etc/profile.d/site.sh"
    assert setup < next(i for i, line in enumerate(script) if "slurm/launch.py begin" in line)
    srun = next(line for line in script if line.startswith("srun "))
    assert " --mpi=pmix " in srun


@pytest.mark.parametrize("argv, message", [(["--sbatch", "time=1:00:00"], "use --time"),
                                           (["--sbatch", "ntasks-per-node=8"], "--processes-per-node"),
                                           (["--sbatch", "Bad Key=1"], "KEY=VALUE")])
def test_sbatch_pass_through_cannot_break_what_the_suite_relies_on(argv, message):
    with pytest.raises(SpecError, match=message):
        site_spec(argv)


def test_a_partition_node_shape_sets_cores_memory_and_typed_gpus():
    shape = resources.parse_sinfo("96 2000000 gpu:h100:8(S:0-1)\n112 2000000+ gpu:h100:8(S:0-1)\n")
    assert shape == resources.NodeShape(cpus=96, memory_mb=2000000, gpus=8, gpu_type="h100")
    whole = jobs.build_spec({"image": "/i.sif", "nodes": 4, "gpu_type": "h100"}, job_file=str(V51_DS), cwd=REPO,
                            shape=shape)
    assert (whole.exclusive, whole.cpus_per_task, whole.mem) == (True, 96, "0")
    assert "#SBATCH --gres=gpu:h100:8" in render.sbatch_script(whole).splitlines()
    half = jobs.build_spec({"image": "/i.sif", "nodes": 1, "gpus_per_node": 4}, job_file=str(V51_DS), cwd=REPO,
                           shape=shape)
    assert (half.exclusive, half.cpus_per_task, half.mem, half.mem_per_gpu) == (False, 48, None, "250000M")
    mine = jobs.build_spec({"image": "/i.sif", "nodes": 2, "cpus_per_task": 32, "exclusive": False, "mem": "500G"},
                           job_file=str(V51_DS), cwd=REPO, shape=shape)
    assert (mine.exclusive, mine.cpus_per_task, mine.mem) == (False, 32, "500G")


def test_without_sinfo_a_whole_node_job_takes_the_cores_at_run_time():
    spec = jobs.build_spec({"image": "/i.sif", "nodes": 2}, job_file=str(V51_DS), cwd=REPO)
    script = render.sbatch_script(spec)
    assert "#SBATCH --cpus-per-task" not in script and "#SBATCH --exclusive" in script
    assert 'export SRUN_CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-$SLURM_CPUS_ON_NODE}"' in script


def test_submit_names_every_missing_input_before_sbatch(tmp_path):
    spec = jobs.build_spec({"image": str(tmp_path / "absent.sif"), "job_dir": str(tmp_path / "job")},
                           job_file=str(V51_DS), cwd=tmp_path)
    with pytest.raises(SpecError) as error:
        jobs.submit(spec)
    for words in ("--pretrained_model_name_or_path", "model folder not found", "--train_data_meta", "--image"):
        assert words in str(error.value)
    assert not (tmp_path / "job" / "submission.sbatch").exists()


def test_exclusive_is_a_switch_both_ways():
    assert site_spec(["--no-exclusive"]).exclusive is False
    assert jobs.build_spec({"image": "/i.sif", "nodes": 1, "exclusive": True}, job_file=str(V51_DS), cwd=REPO).exclusive
    assert site_spec([]).exclusive is True  # 4 nodes: whole nodes by default


def test_the_default_job_is_the_seeds_v51_zero2_job():
    assert Path(REPO / submit.DEFAULT_JOB) == V51_DS


def test_status_falls_back_to_sacct_when_scontrol_forgot_the_job(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    (bin_dir / "sacct").write_text("#!/bin/sh\necho '77|COMPLETED|node[1-2]|0:0|2026-11-30T10:00:00'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    state = status.slurm_state("77")
    assert state["state"].startswith("COMPLETED (from sacct") and state["nodes"] == "node[1-2]"
    (bin_dir / "sacct").write_text("#!/bin/sh\necho 'Slurm accounting storage is disabled' >&2\nexit 1\n")
    assert status.slurm_state("77")["state"].startswith("unknown to SLURM")


def test_submit_runs_the_trainers_own_flag_validation_without_torch(tiny_model_v51, tmp_path):
    """A login node without torch: the flags are still validated (the trainer's own rules), and the lead time falls
    back to the 12B default instead of counting the model."""
    model = tiny_model_v51
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text("[]")
    (tmp_path / "e.sif").write_text("")
    code = f"""
import sys
sys.modules["torch"] = None  # import torch raises ImportError, as where it is not installed
sys.path.insert(0, {str(REPO)!r})
from slurm import jobs
spec = jobs.build_spec({{"image": {str(tmp_path / 'e.sif')!r}, "job_dir": {str(tmp_path / 'job')!r}}},
                       job_file={str(V51_DS)!r}, cwd=__import__("pathlib").Path({str(tmp_path)!r}),
                       extra=["--pretrained_model_name_or_path={model}", "--train_data_dir=data",
                              "--train_data_meta=data/meta.json", "--config_path={REPO}/configs/easyanimate_video_v5.1_magvit_qwen.yaml",
                              "--video_sample_size=100"])
print(jobs.missing_inputs(spec))
print(spec.signal_lead_s)
"""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["['training flags: --video_sample_size: must be a multiple of 16, got 100.']", "426"]  # 12B
