"""Rendering: the 4-node x 8-GPU Apptainer dry run line by line against a golden file, the per-node commands,
templates that cannot drift from the renderer, and hostile names, paths and prompts reaching the nodes intact."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from slurm import command, jobs, render, resources
from slurm import spec as specs
from slurm.command import NodeContext

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "dryrun_v5.1_deepspeed_4x8_apptainer.txt"
V51_DS = REPO / "configs" / "jobs" / "v5.1_control_deepspeed.yaml"


GPU_NODE = resources.NodeShape(cpus=96, memory_mb=2_000_000, gpus=8, gpu_type="h100")


def four_by_eight(**options):
    """`submit.py --nodes 4 --gpus-per-node 8` on a partition of 96-core 8-GPU nodes (sinfo's answer)."""
    return jobs.build_spec({"nodes": 4, "gpus_per_node": 8, "image": "/images/easyanimate.sif",
                            "job_dir": "/scratch/runs/v51", "partition": "gpu", "account": "video", **options},
                           job_file=str(V51_DS), cwd=REPO, shape=GPU_NODE)


def options(argv: list[str]) -> dict:
    """--flag value pairs and bare --flags of a command line."""
    found, i = {}, 0
    while i < len(argv):
        bare = i + 1 == len(argv) or argv[i + 1].startswith("--")
        found[argv[i]] = True if bare else argv[i + 1]
        i += 1 if bare else 2
    return found


def normalised(text: str) -> list[str]:
    return text.replace(sys.executable, "@PYTHON@").replace(str(REPO), "@REPO@").splitlines()


def test_dry_run_4x8_apptainer_matches_golden_line_by_line():
    got = normalised(jobs.dry_run_text(four_by_eight()))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text("\n".join(got) + "\n")
    want = GOLDEN.read_text().splitlines()
    for number, (g, w) in enumerate(zip(got, want), start=1):
        assert g == w, f"dry-run line {number} differs from {GOLDEN.name}"
    assert len(got) == len(want)


def test_dry_run_script_asks_slurm_for_what_the_job_needs():
    script = render.sbatch_script(four_by_eight())
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gres=gpu:8",
                 "#SBATCH --cpus-per-task=96", "#SBATCH --mem=0", "#SBATCH --exclusive",
                 'export SRUN_CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-$SLURM_CPUS_ON_NODE}"',
                 "#SBATCH --signal=USR2@208", "#SBATCH --requeue", "#SBATCH --open-mode=append",
                 "#SBATCH --partition=gpu", "#SBATCH --account=video", f"#SBATCH --chdir={REPO}",
                 "#SBATCH --output=/scratch/runs/v51/logs/%j_0_log.out", "trap 'batch_signal=TERM' TERM"):
        assert line in script.splitlines(), line
    assert "B:USR2" not in script  # every process of the step gets the signal, not only the batch shell
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--kill-on-bad-exit=1" in srun and srun.endswith('slurm/launch.py node "$JOB_DIR/job.json"')


@pytest.mark.parametrize("rank", range(4))
def test_each_node_runs_accelerate_inside_apptainer_with_its_machine_rank(rank):
    spec = four_by_eight()
    node = NodeContext(job_id="4242", num_nodes=4, node_rank=rank, master_addr="gpu001",
                       master_port=str(command.master_port("4242")))
    argv = command.node_argv(spec, node)
    assert argv[:4] == ["apptainer", "exec", "--cleanenv", "--nv"]  # the image's packages, not the host's
    binds = argv[argv.index("--bind") + 1].split(",")
    assert f"{REPO}:{REPO}:ro" in binds and "/scratch/runs/v51:/scratch/runs/v51" in binds
    assert argv[argv.index("--env-file") + 1] == f"/scratch/runs/v51/attempts/4242.0/node{rank}.env"
    assert "--containall" not in argv  # keeps $HOME and /tmp: caches and the trainer's scratch
    image = argv.index("/images/easyanimate.sif")
    assert argv[image + 1:image + 4] == ["python", "slurm/inside.py", "--"]
    launch = argv[image + 4:]
    assert launch[:3] == ["python", "-m", "accelerate.commands.launch"]
    entry = launch.index("easyanimate/train_control.py")
    assert options(launch[3:entry]) == {
        "--num_machines": "4", "--machine_rank": str(rank), "--main_process_ip": "gpu001",
        "--main_process_port": "24242", "--num_processes": "32", "--mixed_precision": "bf16",
        "--dynamo_backend": "no", "--use_deepspeed": True, "--deepspeed_config_file": "configs/zero_stage2_config.json",
        "--deepspeed_multinode_launcher": "standard"}
    assert launch[launch.index("easyanimate/train_control.py") + 1:] == spec.train_args


def test_each_training_process_gets_its_share_of_the_tasks_cores_as_omp_threads(monkeypatch):
    """Unset, torch runs a thread per core of the machine in each of the 8 processes; the user's own value wins."""
    from slurm import launch
    spec = four_by_eight()  # --cpus-per-task=96, 8 processes per node
    assert "OMP_NUM_THREADS=12" in jobs.dry_run_text(spec).splitlines()
    node = NodeContext(job_id="4242", num_nodes=4, node_rank=1, master_addr="gpu001", master_port="24242")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "64")  # what srun gave this node's task
    assert launch.node_environment(spec, node)["OMP_NUM_THREADS"] == "8"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # exported by the submitting shell (sbatch passes it on)
    assert "OMP_NUM_THREADS" not in launch.node_environment(spec, node)
    spec.env["OMP_NUM_THREADS"] = "4"  # --env OMP_NUM_THREADS=4
    assert launch.node_environment(spec, node)["OMP_NUM_THREADS"] == "4"
    unknown = four_by_eight(cpus_per_task=None)
    unknown.cpus_per_task = None  # a dry run where sinfo did not answer: the job divides at run time
    assert "OMP_NUM_THREADS='<$SLURM_CPUS_PER_TASK / 8>'" in jobs.dry_run_text(unknown).splitlines()


def test_models_and_data_outside_the_repository_are_bound_read_only(tmp_path):
    spec = jobs.build_spec({"image": "/img.sif", "job_dir": str(tmp_path / "job")}, job_file=str(V51_DS),
                           extra=["--pretrained_model_name_or_path=/models/m", "--train_data_dir=/data/d",
                                  "--train_data_meta=/data/meta/m.json", "--output_dir=/out/run"], cwd=REPO)
    binds = command.binds(spec)
    assert {"/models/m:/models/m:ro", "/data/d:/data/d:ro", "/data/meta:/data/meta:ro", "/out/run:/out/run",
            f"{tmp_path}/job:{tmp_path}/job"} <= set(binds)


def test_cpu_jobs_set_ds_accelerator_and_never_pass_gpu_flags():
    spec = jobs.build_spec({}, job_file=str(REPO / "configs/jobs/demo.yaml"), cwd=REPO)
    env = command.training_env(spec)
    assert env["DS_ACCELERATOR"] == "cpu"
    argv = command.node_argv(spec, NodeContext("7", 2, 1, "node1", "20007"))
    assert "apptainer" not in argv and "--nv" not in argv
    assert argv[argv.index("--num_processes") + 1] == "2" and "--use_deepspeed" in argv
    assert "#SBATCH --gpus-per-node" not in render.sbatch_script(spec)


def test_master_port_is_stable_per_job_and_outside_the_ephemeral_range():
    assert command.master_port("123") == command.master_port("123") == 20123
    assert all(20000 <= command.master_port(str(j)) < 30000 for j in (0, 9999, 10000, 987654321))


@pytest.mark.parametrize("job", sorted(p.stem for p in (REPO / "slurm" / "templates").glob("*.sbatch")))
def test_templates_are_what_the_renderer_makes_of_the_job_files(job):
    committed = (REPO / "slurm" / "templates" / f"{job}.sbatch").read_text()
    assert committed == jobs.template_text(REPO / "configs" / "jobs" / f"{job}.yaml"), \
        f"regenerate: python slurm/submit.py --job configs/jobs/{job}.yaml --image easyanimate.sif --template"


def test_the_template_command_of_the_readme_prints_the_committed_template():
    """As a script, slurm/ is not on the path: slurm/secrets.py must not shadow the standard library's ``secrets``
    (huggingface_hub imports it while the model is sized)."""
    job = "v5.1_control_deepspeed"
    done = subprocess.run([sys.executable, "slurm/submit.py", "--job", f"configs/jobs/{job}.yaml", "--image",
                           "easyanimate.sif", "--template"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Error importing" not in done.stderr, done.stderr
    assert done.stdout == (REPO / "slurm" / "templates" / f"{job}.sbatch").read_text()


def test_every_seed_job_has_a_template():
    seeds = {p.stem for p in (REPO / "configs" / "jobs").glob("*.yaml")} - {"demo"}
    assert seeds == {p.stem for p in (REPO / "slurm" / "templates").glob("*.sbatch")}
    assert len(seeds) == 4


HOSTILE_NAME = "it's a \"job\" $(touch PWNED) `touch PWNED` ; rm -rf x | y & %j"
HOSTILE_PROMPT = "a 'quoted' \"prompt\" with $(touch PWNED) and `touch PWNED` and \\ and EASYANIMATE_JOB_SPEC"


def hostile_spec(tmp_path: Path, recorder: Path):
    job_dir = tmp_path / "dir with space $HOME 'q' %j"
    spec = jobs.build_spec({"name": HOSTILE_NAME, "job_dir": str(job_dir), "container": "none", "gpus_per_node": 0},
                           job_file=str(V51_DS), cwd=tmp_path,
                           extra=["--validation_prompts", HOSTILE_PROMPT, "--validation_paths", "/v 1.mp4"])
    spec.python = str(recorder)
    return spec


def test_hostile_names_paths_and_prompts_reach_the_nodes_byte_for_byte(tmp_path):
    record = tmp_path / "calls.jsonl"
    recorder = tmp_path / "recorder"
    recorder.write_text(f"#!{sys.executable}\nimport json, sys\n"
                        f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake_srun = tmp_path / "bin" / "srun"
    fake_srun.parent.mkdir()
    fake_srun.write_text("#!/bin/bash\n# drop srun's own options, run the task command\n"
                         "while [[ $1 == -* ]]; do case $1 in --output|--error) shift 2;; *) shift;; esac; done\n"
                         'exec "$@"\n')
    for path in (recorder, fake_srun):
        path.chmod(0o755)
    spec = hostile_spec(tmp_path, recorder)
    script = tmp_path / "job.sbatch"
    script.write_text(render.sbatch_script(spec))
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{fake_srun.parent}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    job_json = Path(spec.job_dir) / "job.json"
    assert [c[:3] for c in calls] == [["slurm/launch.py", step, str(job_json)] for step in ("begin", "node", "end")]
    assert calls[2][3:] == ["--srun-status", "0", "--batch-signal", ""]
    written = specs.read(job_json)
    assert written == spec and written.name == HOSTILE_NAME
    assert written.train_args[written.train_args.index("--validation_prompts") + 1] == HOSTILE_PROMPT
    assert not list(tmp_path.rglob("PWNED")) and not (Path.cwd() / "PWNED").exists()


def test_hostile_directives_are_quoted_for_sbatch(tmp_path):
    script = render.sbatch_script(hostile_spec(tmp_path, Path("/usr/bin/python3")))
    name_line = next(line for line in script.splitlines() if line.startswith("#SBATCH --job-name="))
    assert shlex.split(name_line.partition("=")[2]) == [HOSTILE_NAME]
    output = next(line for line in script.splitlines() if line.startswith("#SBATCH --output="))
    assert "%%j/logs/%j_0_log.out" in output  # the folder's literal %j is escaped, the pattern is not
