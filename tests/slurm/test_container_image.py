"""The image is the tested stack, checked statically (apptainer cannot build here): one constraints file pins
every Python package for CI's venv and for the image, and a test fails when pyproject.toml, the constraints,
the definition's %test or the CI venv drift apart; a CUDA >= 12.8 devel base; ibverbs, libfabric and the
aws-ofi-nccl plugin; DeepSpeed ops built against the image's torch; tensorboard; a %test that checks all that."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import subprocess
from pathlib import Path

import tomllib

from slurm import nccl

REPO = Path(__file__).resolve().parents[2]
DEF = REPO / "containers" / "easyanimate.def"
CONSTRAINTS = REPO / "containers" / "constraints.txt"


def parse(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(header keys, section name -> body) of an Apptainer definition file."""
    header, sections, current = {}, {}, None
    for line in text.splitlines():
        match = re.match(r"^%(\w+)\s*$", line)
        if match:
            current = match.group(1)
            sections[current] = ""
        elif current is None and ":" in line:
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
        elif current is not None:
            sections[current] += line + "\n"
    return header, sections


HEADER, SECTIONS = parse(DEF.read_text())


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"{CONSTRAINTS.name}: {line!r} is not NAME==VERSION"
            pins[normal(name)] = version
    return pins


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {normal(m[1]): m[2] for d in deps if (m := re.match(r"([A-Za-z0-9_.-]+)==(\S+)", d))}


def pip_installs(script: str) -> list[list[str]]:
    joined = script.replace("\\\n", " ")
    return [shlex.split(line[line.index("pip install") + len("pip install"):])
            for line in joined.splitlines() if "pip install" in line]


def test_pyproject_pins_equal_the_constraints():
    pins, pinned = pyproject_pins(), constraints()
    assert pins, "pyproject.toml pins nothing?"
    for name, version in pins.items():
        assert pinned.get(name) == version, f"{name}: pyproject pins {version}, constraints.txt {pinned.get(name)}"


def test_ci_venv_is_exactly_the_constraints():
    drift = {}
    for name, version in constraints().items():
        try:
            installed = importlib.metadata.version(name).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            drift[name] = (installed, version)
    assert not drift, f"installed vs constraints.txt (rerun containers/setup_venv.sh): {drift}"


def test_setup_venv_installs_torch_and_everything_else_from_the_constraints():
    script = (REPO / "containers" / "setup_venv.sh").read_text()
    assert "containers/constraints.txt" in script and "grep -E '^torch==' \"$constraints\"" in script
    assert re.search(r'pip install -q -c "\$constraints" -e', script)
    subprocess.run(["bash", "-n", str(REPO / "containers" / "setup_venv.sh")], check=True)


def test_base_is_a_cuda_12_8_or_later_devel_image():
    assert HEADER["Bootstrap"] == "docker"
    image, _, tag = HEADER["From"].partition(":")
    assert image == "nvidia/cuda" and "devel" in tag  # nvcc: DeepSpeed ops and the NCCL plugin build here
    assert tuple(map(int, tag.split("-")[0].split(".")[:2])) >= (12, 8), tag  # Blackwell needs 12.8


def test_every_section_the_image_needs_is_there_and_its_files_exist():
    assert {"files", "post", "environment", "test", "help", "labels", "runscript"} <= set(SECTIONS)
    sources = [line.split()[0] for line in SECTIONS["files"].splitlines() if line.strip()]
    assert "containers/constraints.txt" in sources
    for source in sources:
        assert (REPO / source).exists(), source


def test_every_pip_install_in_the_image_is_constrained_and_torch_is_the_pinned_cuda_build():
    post = SECTIONS["post"]
    assert "torch_pin=\"$(grep -E '^torch==' \"$constraints\")\"" in post
    assert re.search(r"torch_index=https://download\.pytorch\.org/whl/cu12[89]\b", post)
    for args in pip_installs(post):
        if args[-1] in ("pip",):  # the installer itself
            continue
        if "$torch_pin" in args:
            assert args[args.index("--index-url") + 1] == "$torch_index"
            continue
        assert args[args.index("-c") + 1] == "$constraints", f"unconstrained install: {args}"
    assert not any("torchvision" in a for args in pip_installs(post) for a in args)
    # tensorboard (the default tracker) comes with the package's own dependencies, pinned like the rest
    assert any(a.strip('"').startswith("/opt/easyanimate") for args in pip_installs(post) for a in args)
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("tensorboard==") for d in dependencies)


def test_deepspeed_ops_are_built_against_the_images_torch():
    post = SECTIONS["post"].replace("\\\n", " ")
    line = next(line for line in post.splitlines() if "pip install" in line and " deepspeed" in line)
    assert "--no-build-isolation" in line  # an isolated build has no torch and skips the ops
    assert {"DS_BUILD_FUSED_ADAM=1", "DS_BUILD_CPU_ADAM=1"} <= set(line.split())
    archs = re.search(r'TORCH_CUDA_ARCH_LIST="([^"]+)"', post)[1].split(";")
    assert {"8.0", "9.0", "10.0"} <= set(archs)


def test_the_fabric_stack_is_in_the_image():
    post = SECTIONS["post"]
    for package in ("rdma-core", "ibverbs-providers", "libibverbs-dev"):
        assert re.search(rf"\b{package}\b", post), package
    assert "ofiwg/libfabric" in post and "aws/aws-ofi-nccl" in post and "--with-libfabric=/opt/libfabric" in post
    assert "--disable-nccl-net-symlink" in post  # NCCL keeps its own IB transport unless a profile asks for OFI
    assert "/opt/aws-ofi-nccl/lib" in SECTIONS["environment"]
    assert nccl.PROFILES["efa"]["NCCL_NET_PLUGIN"] == "ofi"


def test_no_nccl_variable_is_baked_into_the_image():
    # Apptainer lets the image's variables beat the host's: NCCL must come from the job's --env-file only.
    assert not re.search(r"^\s*export\s+NCCL_", DEF.read_text(), re.M)
    assert "NCCL_" not in SECTIONS["environment"]


def test_the_test_section_checks_ibverbs_nccl_deepspeed_ops_and_the_pinned_versions():
    test = SECTIONS["test"]
    assert "ibv_devices" in test and "libnccl-net-ofi.so" in test and "fi_info" in test
    assert "torch.cuda.nccl.version()" in test and "installed_ops" in test and "torch_info" in test
    pinned = constraints()
    checked = dict(re.findall(r"assert (\w+)\.__version__ == \"([^\"]+)\"", test))
    checked["torch"] = re.search(r'torch\.__version__\.split\("\+"\)\[0\] == "([^"]+)"', test)[1]
    assert {"torch", "deepspeed", "accelerate", "diffusers", "transformers"} <= set(checked)
    for name, version in checked.items():
        assert pinned[normal(name)] == version, f"{name}: %test expects {version}, constraints.txt {pinned[name]}"


def test_build_script_builds_this_definition_and_runs_its_test():
    script = (REPO / "containers" / "build.sh").read_text()
    assert "containers/easyanimate.def" in script and re.search(r'"\$runtime" test', script)
    subprocess.run(["bash", "-n", str(REPO / "containers" / "build.sh")], check=True)
