"""The Apptainer definition, checked statically (apptainer cannot be installed here): a pinned CUDA PyTorch base
kept as is, our pinned dependencies, the package installed, no NCCL variables baked in, a %test that imports the
package and checks DeepSpeed and NCCL, and a build script that runs that test."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
DEF = REPO / "containers" / "easyanimate.def"


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


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(re.match(r"([A-Za-z0-9_.-]+)==(\S+)", d).groups() for d in deps if "==" in d)


def pip_installs(script: str) -> list[list[str]]:
    joined = script.replace("\\\n", " ")
    return [shlex.split(line[line.index("pip install") + len("pip install"):])
            for line in joined.splitlines() if "pip install" in line]


def test_base_is_a_pinned_cuda_pytorch_image():
    assert HEADER["Bootstrap"] == "docker"
    image, _, tag = HEADER["From"].partition(":")
    assert image in ("pytorch/pytorch", "nvcr.io/nvidia/pytorch")
    assert tag and tag != "latest" and "cuda" in tag and "devel" in tag  # nvcc: DeepSpeed ops build at image time


def test_every_section_the_image_needs_is_there():
    assert {"files", "post", "environment", "test", "help", "labels", "runscript"} <= set(SECTIONS)


def test_files_copied_into_the_image_exist_in_the_repository():
    for line in SECTIONS["files"].split("\n"):
        if line.strip():
            source = line.split()[0]
            assert (REPO / source).exists(), source


def test_pip_keeps_the_base_torch_and_installs_only_the_pinned_package():
    post = SECTIONS["post"]
    assert "torch=={torch.__version__}" in post and "/opt/constraints.txt" in post
    installs = pip_installs(post)
    package = [args for args in installs if any(a.startswith("/opt/easyanimate") for a in args)]
    assert len(package) == 1 and "-c" in package[0] and package[0][package[0].index("-c") + 1] == "/opt/constraints.txt"
    for args in installs:
        names = [a for a in args if not a.startswith("-") and a != "/opt/constraints.txt"]
        assert all(n == "pip" or n.startswith("/opt/easyanimate") for n in names), f"unpinned install: {args}"
    assert not any("torchvision" in a for args in installs for a in args)


def test_deepspeed_ops_are_built_into_the_image():
    assert re.search(r"DS_BUILD_\w+=1", SECTIONS["post"]) and "TORCH_CUDA_ARCH_LIST" in SECTIONS["post"]


def test_no_nccl_variable_is_baked_into_the_image():
    # Apptainer lets the image's variables beat the host's: NCCL must come from the job's --env-file only.
    text = DEF.read_text()
    assert not re.search(r"^\s*export\s+NCCL_", text, re.M)
    assert "NCCL_" not in SECTIONS["environment"]


def test_the_test_section_imports_the_package_and_checks_deepspeed_and_nccl_at_the_pinned_versions():
    test = SECTIONS["test"]
    assert "import easyanimate" in test and "is_nccl_available()" in test and "torch.cuda.nccl.version()" in test
    pins = pyproject_pins()
    for name, version in re.findall(r"assert (\w+)\.__version__ == \"([^\"]+)\"", test):
        assert pins[name] == version, f"{name}: %test expects {version}, pyproject pins {pins[name]}"
    assert {"deepspeed", "accelerate"} <= {n for n, _ in re.findall(r"assert (\w+)\.__version__ == \"([^\"]+)\"", test)}


def test_build_script_builds_this_definition_and_runs_its_test():
    script = (REPO / "containers" / "build.sh").read_text()
    assert "containers/easyanimate.def" in script and re.search(r'"\$runtime" test', script)
    assert "--containall" not in script and "--cleanenv" not in script
    subprocess.run(["bash", "-n", str(REPO / "containers" / "build.sh")], check=True)
