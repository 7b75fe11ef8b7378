"""The meta-trained surrogate in the MLflow model registry: ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION``.

Why the registry: a platform team keeps its models there (versions, aliases, tags, the MLflow UI),
and the surrogate that learns from the team's searches is one of them. ``quicktune metatrain
--from-mlflow`` registers each retrain as a new version of ``quicktune-surrogate`` and moves the
alias ``champion`` only when it predicts held-out curves at least as well (see
:mod:`quicktune.metadataset.continual`); every search without ``--meta-artifact`` starts from that
champion when it exists.

A ``models:/`` URI reaches us from people (``--meta-artifact``, an MLflow-UI request tag, a KFP
parameter) and names a cache folder, so it is parsed strictly (:func:`parse_models_uri`): a model
name of letters, digits and ``. _ -`` (no ``/``, no ``..``), an alias of letters, digits, ``_``
and ``-``, or a version number -- nothing else. This module only talks to MLflow (register,
alias, download); loading and checking the downloaded artifact is the caller's (the optimizer
package sits beside tracking, not below it).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from quicktune.tracking.schema import MLFLOW_RUN_NAME, SURROGATE_ARTIFACT_PATH, TAG_ARTIFACT_VERSION, TAG_TABLE_HASH

T = TypeVar("T")

MODELS_SCHEME = "models:/"
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9_])?$")
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,8}$")
_RESERVED_ALIAS = re.compile(r"^(?:latest|[vV][0-9]+)$")  # MLflow refuses these as aliases


class RegistryError(ValueError):
    """A ``models:/`` URI is malformed, or a registry version cannot be used; the message names it."""


@dataclass(frozen=True)
class ModelRef:
    """A registered model version, by alias or by number (exactly one of the two)."""

    name: str
    alias: str | None = None
    version: int | None = None

    def __post_init__(self) -> None:
        if (self.alias is None) == (self.version is None):
            raise RegistryError("a models:/ reference names either an alias or a version")
        check_model_name(self.name)
        if self.alias is not None:
            check_alias(self.alias)
        if self.version is not None and not _VERSION.fullmatch(str(self.version)):
            raise RegistryError(f"model version must be a whole number >= 1, got {self.version!r}")

    @property
    def uri(self) -> str:
        return (
            f"{MODELS_SCHEME}{self.name}@{self.alias}" if self.alias else f"{MODELS_SCHEME}{self.name}/{self.version}"
        )

    def pinned(self, version: int | str) -> ModelRef:
        """The same model at a fixed version (what a search records: an alias moves)."""
        return ModelRef(self.name, version=int(version))


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise RegistryError(
            "registered model name must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or "
            f"digit, no '..'), got {str(name)[:80]!r}"
        )
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias) or _RESERVED_ALIAS.fullmatch(alias):
        raise RegistryError(
            "model alias must be 1-63 letters, digits, '_' or '-' (not 'latest' or 'v<number>'), "
            f"got {str(alias)[:80]!r}"
        )
    return alias


def is_models_uri(text: object) -> bool:
    return isinstance(text, str) and text.startswith(MODELS_SCHEME)


def parse_models_uri(text: str) -> ModelRef:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> :class:`ModelRef`; anything else
    (another scheme, ``..``, extra path parts, odd characters, ``latest``) -> :class:`RegistryError`."""
    if not is_models_uri(text):
        raise RegistryError(f"not a models:/ URI: {str(text)[:80]!r}")
    rest = text[len(MODELS_SCHEME) :]
    if "@" in rest:
        name, _, alias = rest.partition("@")
        return ModelRef(check_model_name(name), alias=check_alias(alias))
    name, sep, version = rest.partition("/")
    if not sep:
        raise RegistryError(f"{text[:80]!r}: give models:/NAME@ALIAS or models:/NAME/VERSION")
    if not _VERSION.fullmatch(version):
        raise RegistryError(f"{text[:80]!r}: the version must be a whole number >= 1 (or use NAME@ALIAS)")
    return ModelRef(check_model_name(name), version=int(version))


def _is_missing(exc: BaseException) -> bool:
    """MLflow's answer for a model, version or alias that does not exist (an unknown alias comes
    back as INVALID_PARAMETER_VALUE "... alias X not found", a missing model as RESOURCE_DOES_NOT_EXIST)."""
    code = str(getattr(exc, "error_code", "") or "")
    return "RESOURCE_DOES_NOT_EXIST" in code or (code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc))


def client_for(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def version_by_alias(client: Any, name: str, alias: str) -> Any | None:
    """The version an alias points at, or None when the model or the alias does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as exc:  # noqa: BLE001 - MlflowException / RestException
        if _is_missing(exc):
            return None
        raise


def resolve(client: Any, ref: ModelRef) -> Any:
    """The registry's ModelVersion for ``ref``; a missing model/alias/version -> RegistryError naming it."""
    try:
        if ref.alias is not None:
            mv = client.get_model_version_by_alias(ref.name, ref.alias)
        else:
            mv = client.get_model_version(ref.name, str(ref.version))
    except Exception as exc:  # noqa: BLE001
        if _is_missing(exc):
            raise RegistryError(f"{ref.uri}: no such registered model version") from None
        raise
    return mv


def download_version(client: Any, mv: Any, dest: str | Path) -> Path:
    """Download a version's artifact folder into ``dest`` (replaced atomically: a half-downloaded
    copy is never left where a later search would read it). Nothing there -> RegistryError."""
    from mlflow.artifacts import download_artifacts

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    where = f"models:/{mv.name}/{mv.version}"
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=dest.parent))
    try:
        try:
            got = Path(
                download_artifacts(artifact_uri=str(mv.source), dst_path=str(tmp), tracking_uri=client.tracking_uri)
            )
        except Exception as exc:  # noqa: BLE001 - a version whose files are gone
            raise RegistryError(f"{where}: cannot download its artifact ({type(exc).__name__}: {exc})") from None
        if not got.is_dir():
            raise RegistryError(f"{where}: its artifact is not a folder")
        if dest.exists():
            shutil.rmtree(dest)
        got.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def register_folder(
    client: Any,
    folder: str | Path,
    name: str,
    experiment: str,
    tags: Mapping[str, str],
    metrics: Mapping[str, float] | None = None,
    description: str = "",
) -> Any:
    """Log ``folder`` as the artifact of a new run in ``experiment`` and register it as a new
    version of ``name`` (created if needed) with ``tags``; returns the ModelVersion. The run keeps
    the metrics, so the MLflow UI shows each retrain beside the searches it learned from."""
    check_model_name(name)
    try:
        client.create_registered_model(name, description=description or None)
    except Exception as exc:  # noqa: BLE001 - already there is fine
        if "RESOURCE_ALREADY_EXISTS" not in str(getattr(exc, "error_code", "")):
            raise
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run = client.create_run(exp_id, tags={MLFLOW_RUN_NAME: f"{name}-retrain", **dict(tags)})
    try:
        client.log_artifacts(run.info.run_id, str(folder), SURROGATE_ARTIFACT_PATH)
        for key, value in (metrics or {}).items():
            client.log_metric(run.info.run_id, key, float(value))
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    source = f"{run.info.artifact_uri.rstrip('/')}/{SURROGATE_ARTIFACT_PATH}"
    return client.create_model_version(name, source, run_id=run.info.run_id, tags=dict(tags))


def set_alias(client: Any, name: str, alias: str, version: int | str) -> None:
    client.set_registered_model_alias(check_model_name(name), check_alias(alias), str(version))


def load_version(
    client: Any,
    ref: ModelRef,
    cache_root: str | Path,
    loader: Callable[[Path], T],
    format_version: int,
) -> tuple[T, Any]:
    """Resolve ``ref``, download its artifact to ``cache_root/NAME/VERSION`` and load it with
    ``loader`` (e.g. ``MetaArtifact.load``); returns ``(object, ModelVersion)``. Every way a
    version can be unusable is a :class:`RegistryError` that names ``models:/NAME/VERSION``:
    registered by an incompatible quicktune (tag ``quicktune.artifact_version`` other than
    ``format_version``), files missing or corrupt, or a table hash that differs from the one the
    version was registered with (the files were replaced under it)."""
    mv = resolve(client, ref)
    where = f"models:/{mv.name}/{mv.version}"
    tags = dict(mv.tags or {})
    recorded = tags.get(TAG_ARTIFACT_VERSION, "")
    if recorded and recorded != str(format_version):
        raise RegistryError(
            f"{where}: artifact format version {recorded[:20]!r}, this quicktune reads version {format_version}; "
            f"retrain it (quicktune metatrain --from-mlflow) or use a matching quicktune"
        )
    path = download_version(client, mv, Path(cache_root) / mv.name / str(mv.version))
    try:
        obj = loader(path)
    except Exception as exc:  # noqa: BLE001 - ArtifactError, a truncated safetensors file, bad JSON ...
        raise RegistryError(f"{where}: missing or corrupt artifact ({type(exc).__name__}: {exc})") from None
    expected = tags.get(TAG_TABLE_HASH, "")
    got = str(getattr(obj, "table_hash", ""))
    if expected and got != expected:
        raise RegistryError(
            f"{where}: table hash mismatch: the version was registered with {expected[:40]!r}, its artifact says "
            f"{got[:40]!r} (the files were replaced after registration)"
        )
    return obj, mv
