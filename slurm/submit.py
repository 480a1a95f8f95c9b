"""Submit EasyAnimate control training to SLURM, or run the same job here.

    python slurm/submit.py --nodes 4 --image easyanimate.sif [--job configs/jobs/NAME.yaml] [-- FLAGS]
    python slurm/submit.py ... --dry-run        print the sbatch script and the per-node command, submit nothing
    python slurm/submit.py ... --local          run it on this machine (submitit's local executor)
    python slurm/submit.py --job JOB --template print the script with relative paths (slurm/templates/)
    python slurm/submit.py resubmit JOB_DIR [--nodes N|MIN-MAX] [--dry-run]
                                                the same job again, e.g. on other nodes: it resumes its latest
                                                checkpoint on the new world size (elastic resume)
    python slurm/submit.py status JOB_DIR       SLURM state, every attempt (with its world size), latest checkpoint
    python slurm/submit.py logs JOB_DIR [--tail N]
    python slurm/submit.py cancel JOB_DIR
    python slurm/submit.py check --job JOB --nodes N ... [--no-wait] [-- FLAGS]
                                                preflight: a few minutes' job through the same launch path,
                                                then one PASS/WARN/FAIL table (run it first on a new cluster)

Options come from the job spec (slurm/spec.py); flags after ``--`` are the seed's training flags and override the
job file's ``train:`` section.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional, get_args, get_type_hints

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # `python slurm/submit.py`: make the repository importable
    # replace, not prepend: the script's own folder would shadow the standard library (slurm/secrets.py)
    sys.path[0] = str(REPO)

from slurm import jobs, render, resources, status  # noqa: E402
from slurm import spec as specs  # noqa: E402
from slurm.spec import JobSpec, SpecError  # noqa: E402

HINTS = get_type_hints(JobSpec)
DEFAULT_JOB = "configs/jobs/v5.1_control_deepspeed.yaml"  # the seed's V5.1 DeepSpeed ZeRO-2 command
LIST_FLAGS = {"binds": ("--bind", "SRC[:DST[:ro]]"), "sbatch": ("--sbatch", "KEY=VALUE"),
              "srun_args": ("--srun-arg", "ARG"), "setup": ("--setup", "LINE")}


def _key_value(text: str) -> tuple[str, str]:
    """--env K=V, or --env K to take K's value from this shell (keeps secrets out of shell history and ps)."""
    key, sep, value = text.partition("=")
    if not sep:
        if key not in os.environ:
            raise argparse.ArgumentTypeError(f"--env {key}: not set in this shell; export it or pass {key}=VALUE")
        value = os.environ[key]
    return key, value


def _add_spec_options(parser: argparse.ArgumentParser) -> None:
    """One option per JobSpec field (defaults suppressed: unset options leave the job file's value alone)."""
    for f in dataclasses.fields(JobSpec):
        if not f.metadata["cli"]:
            continue
        flag, hint = "--" + f.name.replace("_", "-"), HINTS[f.name]
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": f.metadata["help"]}
        if hint in (bool, Optional[bool]):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif f.name == "env":
            parser.add_argument(flag, action="append", type=_key_value, metavar="K[=V]", **kwargs)
        elif f.name in LIST_FLAGS:
            parser.add_argument(LIST_FLAGS[f.name][0], action="append", metavar=LIST_FLAGS[f.name][1], **kwargs)
        else:
            scalar = next((a for a in get_args(hint) if a is not type(None)), hint) if hint is not str else str
            scalar = str if f.name == "nodes" else scalar  # a count or MIN-MAX (spec.split_node_range)
            parser.add_argument(flag, type=scalar, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slurm/submit.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--job", help=f"Job file (configs/jobs/NAME.yaml); default {DEFAULT_JOB}, the seed's V5.1 "
                        "control training with DeepSpeed ZeRO-2; 'none': no job file.")
    parser.add_argument("--dry-run", action="store_true", help="Print the script and command; submit nothing.")
    parser.add_argument("--local", action="store_true", help="Run here through submitit's local executor.")
    parser.add_argument("--template", action="store_true", help="Print the job file's script with paths "
                        "relative to the repository root (how slurm/templates/*.sbatch are made).")
    _add_spec_options(parser)
    return parser


def _split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def submit_main(argv: list[str]) -> int:
    own, extra = _split_extra(argv)
    args = vars(build_parser().parse_args(own))
    job_file, dry_run, local, template = (args.pop(k) for k in ("job", "dry_run", "local", "template"))
    if "env" in args:
        args["env"] = dict(args["env"])
    try:
        if job_file is None:
            job_file = str(REPO / DEFAULT_JOB)
            logging.info("no --job given: the seed's V5.1 DeepSpeed ZeRO-2 job (%s)", DEFAULT_JOB)
        elif job_file == "none":  # every option from the command line
            job_file = None
        if template:
            sys.stdout.write(render.sbatch_script(jobs.build_spec(args, job_file=job_file, extra=extra,
                                                                  template=True)))
            return 0
        shape = None if local else resources.partition_shape(args.get("partition"))
        spec = jobs.build_spec(args, job_file=job_file, extra=extra, shape=shape)
        if local:
            return _run_local(spec)
        measured = jobs.measured_save_s(Path(spec.job_dir))
        warnings = jobs.lead_time_warnings(spec, measured, jobs.partition_grace_s(spec.partition))
        warnings += jobs.missing_inputs(spec) if dry_run else []
        if dry_run:
            sys.stdout.write(jobs.dry_run_text(spec, warnings))
            return 0
        logging.info("%s", jobs.lead_time_line(spec, measured))
        for warning in warnings + jobs.resource_notes(spec):
            logging.warning(warning)
        job_id = jobs.submit(spec)
    except SpecError as error:
        print(f"submit.py: {error}", file=sys.stderr)
        return 2
    print(f"submitted job {job_id}; job folder {spec.job_dir}\n"
          f"  watch:  python slurm/submit.py status {spec.job_dir}\n"
          f"  logs:   python slurm/submit.py logs {spec.job_dir}\n"
          f"  cancel: python slurm/submit.py cancel {spec.job_dir}")
    return 0


def check_main(argv: list[str]) -> int:
    from slurm.check import run as check

    own, extra = _split_extra(argv)
    parser = build_parser()
    parser.prog = "slurm/submit.py check"
    parser.add_argument("--no-wait", action="store_true", help="Submit and return; `status JOB_DIR` shows the "
                        "verdicts once the check job has ended.")
    parser.add_argument("--storage-mib", type=int, default=2048, help="MiB each node writes in the storage test.")
    args = vars(parser.parse_args(own))
    job_file, no_wait, storage_mib = args.pop("job"), args.pop("no_wait"), args.pop("storage_mib")
    for flag in ("dry_run", "local", "template"):
        args.pop(flag)
    if "env" in args:
        args["env"] = dict(args["env"])
    try:
        spec = jobs.build_spec(args, job_file=job_file, extra=extra)
        job_id = check.submit(spec, storage_mib=storage_mib)
    except SpecError as error:
        print(f"submit.py check: {error}", file=sys.stderr)
        return 2
    print(f"preflight check: job {job_id}, job folder {check.check_dir(spec.job_dir)}", flush=True)
    if no_wait:
        print(f"  verdicts: python slurm/submit.py status {spec.job_dir}")
        return 0
    state = check.wait(spec.job_dir, job_id)
    text, rows = check.collect(spec.job_dir)
    print(f"check job {job_id} ended {state}\n\n{text}\nsaved in {Path(spec.job_dir) / check.RESULT}")
    return 1 if check.verdicts.overall(rows) == check.verdicts.FAIL else 0


def _run_local(spec) -> int:
    try:
        outcome = jobs.run_local(spec)
    except RuntimeError as error:  # submitit's FailedJobError carries the job's traceback
        print(f"local job failed: {str(error).strip().splitlines()[-1]}\n"
              f"  details: python slurm/submit.py status {spec.job_dir}", file=sys.stderr)
        return 1
    print(f"{outcome['kind']}: {outcome['detail']}")
    return 0


def resubmit_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="slurm/submit.py resubmit", description="Submit a job folder's job again "
                                     "(its job.json), optionally on another number of nodes; the trainer resumes the "
                                     "latest checkpoint on the new world size.")
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("--nodes", help="Node count, or MIN-MAX to let SLURM start it on what is free.")
    parser.add_argument("--dry-run", action="store_true", help="Print the script and command; submit nothing.")
    args = parser.parse_args(argv[1:])
    spec_file = args.job_dir / "job.json"
    if not spec_file.is_file():
        print(f"{args.job_dir} is not a job folder (no job.json)", file=sys.stderr)
        return 2
    try:
        values = json.loads(spec_file.read_text())
        if args.nodes:
            values = specs.split_node_range({**values, "max_nodes": None, "nodes": args.nodes})
        spec = specs.from_mapping(values, source=str(spec_file))
        specs.validate(spec)
        if args.dry_run:
            sys.stdout.write(jobs.dry_run_text(spec, []))
            return 0
        active = {job: state["state"] for job in status.job_ids(args.job_dir)
                  if (state := status.slurm_state(job))["state"] in status.ACTIVE_STATES}
        if active:
            raise SpecError(f"{args.job_dir}: job(s) {active} still hold this folder; wait for them or run "
                            f"`python slurm/submit.py cancel {args.job_dir}` first.")
        job_id = jobs.submit(spec)
    except SpecError as error:
        print(f"submit.py: {error}", file=sys.stderr)
        return 2
    nodes = f"{spec.nodes}-{spec.max_nodes}" if spec.max_nodes else str(spec.nodes)
    print(f"submitted job {job_id} on {nodes} node(s); job folder {spec.job_dir}\n"
          f"  watch:  python slurm/submit.py status {spec.job_dir}")
    return 0


def tool_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"slurm/submit.py {argv[0]}")
    parser.add_argument("job_dir", type=Path)
    if argv[0] == "logs":
        parser.add_argument("--tail", type=int, default=0, help="Also print the last N lines of each log.")
    args = parser.parse_args(argv[1:])
    from slurm.check import run as check

    preflight = check.summary(args.job_dir) if argv[0] == "status" else None
    trained = (args.job_dir / "job.json").is_file()
    if not trained and preflight is None:
        print(f"{args.job_dir} is not a job folder (no job.json)", file=sys.stderr)
        return 2
    if argv[0] == "status":
        if trained:
            sys.stdout.write(status.format_status(status.status(args.job_dir)))
        if preflight:
            print(preflight)
    elif argv[0] == "logs":
        for path in status.log_paths(args.job_dir):
            print(path)
            if args.tail:
                print("".join(f"    {line}\n" for line in path.read_text(errors="replace").splitlines()[-args.tail:]))
    else:
        cancelled = status.cancel(args.job_dir)
        print(f"cancelled {', '.join(cancelled)}" if cancelled else "nothing to cancel")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in ("status", "logs", "cancel"):
        return tool_main(argv)
    if argv and argv[0] == "check":
        return check_main(argv[1:])
    if argv and argv[0] == "resubmit":
        return resubmit_main(argv)
    return submit_main(argv)


if __name__ == "__main__":
    sys.exit(main())
