"""Keep credentials out of MLflow: every param, tag and text artifact passes through ``redact``.

Credentials reach quicktune only through the environment (AWS_*, MLFLOW_TRACKING_PASSWORD,
tokens). A search spec or a step log could still echo one (an env dump in a traceback, a URI
with a password in it), so the values of secret-looking variables are masked wherever we log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY|AUTH)", re.I)
_URI_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@", re.I)
MASK = "***"


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look secret (longest first; short ones skipped
    because masking e.g. "1" everywhere would garble logs without protecting anything)."""
    env = os.environ if env is None else env
    vals = {v for k, v in env.items() if SECRET_NAME.search(k) and isinstance(v, str) and len(v) >= 4}
    return sorted(vals, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every secret value and any ``user:password@`` in URIs masked."""
    if not isinstance(text, str):
        text = str(text)
    for s in secret_values() if secrets is None else secrets:
        if s and s in text:
            text = text.replace(s, MASK)
    return _URI_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def safe_uri(uri: str) -> str:
    """A URI fit for logging (no embedded password)."""
    return redact(uri, secrets=())
