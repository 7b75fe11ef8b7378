"""The inputs of a search, checked before anything is created or launched.

A wrong path, a broken meta-artifact, a space the step refuses, a dataset with a truncated image,
checkpoints that remote workers could not read, or a resume with another definition or other
data: each is reported here, at start, with a message that says what to change -- not as the
same failure in every step, and not after runs were created in MLflow.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quicktune.backends.base import TrialBackend
from quicktune.optimizer.artifact import MetaArtifact
from quicktune.search.spec import IDENTITY_FIELDS, SearchError, SearchSpec
from quicktune.space import SearchSpace, load_space
from quicktune.tracking.layout import SearchRun, SearchTracker
from quicktune.tracking.secrets import safe_uri


def checkpoint_dir_for(spec: SearchSpec, parent: SearchRun, config_id: str) -> str:
    """Where a configuration's checkpoints live: ``--checkpoint-uri`` if given, else the MLflow
    artifact store when it is S3, else a folder under the working directory."""
    if spec.checkpoint_uri:
        return f"{spec.checkpoint_uri.rstrip('/')}/{spec.search_id}/{config_id}"
    if parent.artifact_uri.startswith("s3://"):
        return f"{parent.artifact_uri.rstrip('/')}/checkpoints/{config_id}"
    return os.path.join(os.path.abspath(spec.workdir), "checkpoints", spec.search_id, config_id)


def check_checkpoint_location(spec: SearchSpec, backend: TrialBackend, tracker: SearchTracker) -> None:
    """Remote workers cannot see this machine's disk: they need S3 checkpoints. A backend whose
    steps share the controller's filesystem (``TrialBackend.shares_filesystem``) can use a folder."""
    if backend.shares_filesystem or (spec.checkpoint_uri or "").startswith("s3://"):
        return
    location = tracker.experiment_artifact_location()
    if not location.startswith("s3://"):
        raise SearchError(
            f"{type(backend).__name__} runs steps on other machines: give "
            f"--checkpoint-uri s3://BUCKET/PREFIX (the experiment's artifact store "
            f"{location!r} is not S3)"
        )


def fetch_meta_artifact(uri: str, workdir: str) -> MetaArtifact:
    """Load a meta-artifact: a folder is read in place; an ``s3://`` prefix holding
    ``artifact.json`` + ``weights.safetensors`` is first downloaded to
    ``WORKDIR/meta-artifacts/<hash of the URI>/``. Loaded here, before the search creates anything,
    so that a wrong path or a broken artifact is reported first (and the optimizer gets the object)."""
    from quicktune import storage
    from quicktune.optimizer.artifact import MANIFEST, WEIGHTS

    if storage.is_s3(uri):
        local = Path(workdir) / "meta-artifacts" / hashlib.sha1(uri.encode()).hexdigest()[:16]
        for name in (MANIFEST, WEIGHTS):
            try:
                storage.download_file(storage.join(uri, name), local / name)
            except storage.StorageError as exc:
                raise SearchError(f"cannot fetch the meta-artifact {safe_uri(uri)}: {exc}") from exc
        path = str(local)
    else:
        path = uri[len("file://") :] if uri.startswith("file://") else uri
    try:
        return MetaArtifact.load(path)
    except (ValueError, OSError) as exc:
        raise SearchError(f"--meta-artifact {safe_uri(uri)}: {exc}") from exc


# tracking stores with a model registry (a file store has none; the test doubles' "memory:" neither)
_REGISTRY_SCHEMES = ("http://", "https://", "sqlite:", "postgresql", "mysql", "mssql", "databricks")


def registry_uri_of(tracker: Any) -> str | None:
    """The tracking URI a search's registry look-ups go to, or None when that store has no registry."""
    uri = getattr(tracker, "tracking_uri", None)
    if uri is None and isinstance(tracker, SearchTracker):
        from mlflow import get_tracking_uri

        uri = get_tracking_uri()
    return str(uri) if uri and str(uri).startswith(_REGISTRY_SCHEMES) else None


def fetch_registered_artifact(uri: str, workdir: str, tracking_uri: str | None) -> tuple[MetaArtifact, str]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> ``(artifact, version)``, downloaded to
    ``WORKDIR/meta-artifacts/models/NAME/VERSION`` and checked (format version, files, table hash);
    any problem is a :class:`SearchError` naming the version. Asked for explicitly: no fallback."""
    from quicktune.optimizer.artifact import FORMAT_VERSION
    from quicktune.tracking import registry

    try:
        ref = registry.parse_models_uri(uri)
        if tracking_uri is None:
            raise registry.RegistryError(f"{uri}: the tracking store has no model registry (use an MLflow server)")
        art, mv = registry.load_version(
            registry.client_for(tracking_uri),
            ref,
            Path(workdir) / "meta-artifacts" / "models",
            MetaArtifact.load,
            FORMAT_VERSION,
        )
    except registry.RegistryError as exc:
        raise SearchError(f"--meta-artifact {uri[:200]}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the registry is unreachable or refuses
        raise SearchError(
            f"--meta-artifact {uri[:200]}: the model registry failed: {type(exc).__name__}: {exc}"
        ) from None
    return art, str(mv.version)


def registry_default_artifact(
    workdir: str, tracking_uri: str | None, pinned: str | None = None
) -> tuple[MetaArtifact, str, str] | None:
    """What a search without ``--meta-artifact`` starts from: ``(artifact, source, version)`` of
    ``quicktune-surrogate@champion`` (or of ``pinned``, the ``models:/NAME/VERSION`` a resumed
    search started from) when it exists; None -- the shipped artifact -- when it does not, when the
    store has no registry, or when that version is unusable (a warning names it: nobody asked for it)."""
    import logging

    from quicktune.optimizer.artifact import FORMAT_VERSION
    from quicktune.tracking import registry
    from quicktune.tracking.schema import SURROGATE_ALIAS, SURROGATE_MODEL

    log = logging.getLogger(__name__)
    if tracking_uri is None:
        return None
    source = pinned or f"models:/{SURROGATE_MODEL}@{SURROGATE_ALIAS}"
    try:
        ref = registry.parse_models_uri(source)
        client = registry.client_for(tracking_uri)
        if ref.alias is not None:
            mv = registry.version_by_alias(client, ref.name, ref.alias)
            if mv is None:
                return None
            ref = ref.pinned(mv.version)
        art, mv = registry.load_version(
            client, ref, Path(workdir) / "meta-artifacts" / "models", MetaArtifact.load, FORMAT_VERSION
        )
    except registry.RegistryError as exc:
        log.warning("%s is unusable, starting from the shipped meta-artifact: %s", source, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - no registry behind this server, or it is down: the shipped one
        log.warning("cannot read %s (%s: %s); starting from the shipped meta-artifact", source, type(exc).__name__, exc)
        return None
    return art, source, str(mv.version)


def check_space(space: SearchSpace) -> None:
    """The strict check of a new search's space (:func:`quicktune.finetune.space_check.check_space_for_step`):
    unknown knobs or models, values the step refuses. Found here, every config would otherwise
    come back ``invalid`` one step at a time. Not repeated on resume: a recorded space is kept."""
    from quicktune.finetune.space_check import check_space_for_step
    from quicktune.space import SpaceError

    try:
        check_space_for_step(space)
    except SpaceError as exc:
        raise SearchError(str(exc)) from exc


def same_location(a: str | None, b: str | None) -> bool:
    """Do two data URIs name the same place? Local paths are compared resolved (relative vs
    absolute, trailing slash, symlinks, ``file://``); S3 prefixes without a trailing slash."""
    if a is None or b is None:
        return a == b

    def norm(uri: str) -> str:
        if "://" in uri and not uri.startswith("file://"):
            return uri.rstrip("/")
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        return os.path.realpath(os.path.expanduser(path))

    return norm(str(a)) == norm(str(b))


def dataset_identity(data_uri: str) -> tuple[dict[str, float], str]:
    """``(meta-features, fingerprint)`` of a dataset: the surrogate conditions on the former; the
    latter (a hash of the file list, labels and split) is tagged on the search so that harvesting
    recognises the same data under another URI or bucket."""
    from quicktune.data import open_dataset

    ds = open_dataset(data_uri)
    meta = {k: float(v) for k, v in ds.meta_features().items()}
    # Decode every image once, before any step: a truncated or corrupt file is a deterministic error
    # that would otherwise surface in every step. Recorded per fingerprint, so a resume pays nothing.
    ds.verify()
    return meta, str(ds.fingerprint)


def open_data(spec: SearchSpec) -> tuple[dict[str, float], str]:
    """(meta-features, fingerprint) of the spec's dataset; a bad dataset is reported before
    anything is created or launched."""
    try:
        return dataset_identity(spec.data_uri)
    except Exception as exc:  # noqa: BLE001 - a bad dataset: say so before anything is created
        raise SearchError(f"cannot open dataset {safe_uri(spec.data_uri)}: {exc}") from exc


def data_changed(
    spec: SearchSpec, stored: Mapping[str, Any], fresh_meta: Mapping[str, float], old: str, new: str
) -> str:
    """Why a resume is refused: the fingerprints, and the class and image counts that changed."""
    was = stored.get("meta_features") or {}
    changes = []
    for key, word in (("num_classes", "classes"), ("num_images", "images")):
        if key in was and key in fresh_meta and float(was[key]) != float(fresh_meta[key]):
            changes.append(f"{word} {float(was[key]):.0f} -> {float(fresh_meta[key]):.0f}")
    detail = f" ({', '.join(changes)})" if changes else ""
    return (
        f"search {spec.search_id!r} was started on other data: dataset fingerprint {old} -> {new}"
        f"{detail} at {safe_uri(spec.data_uri)}. Scores of two datasets cannot be compared: resume "
        f"with the data the search started with, or start a new search (another --search-id)"
    )


def check_identity(spec: SearchSpec, stored: Mapping[str, Any], compare_data_uri: bool = True) -> None:
    """A resume must search the same thing: the :data:`IDENTITY_FIELDS` of ``spec`` against the
    recorded ``spec.json`` (a space is compared as a space, not by its reference)."""
    new = spec.to_dict()
    diffs = []
    for k in IDENTITY_FIELDS:
        a, b = stored.get(k), new.get(k)
        if k == "data_uri" and (not compare_data_uri or same_location(a, b)):
            continue
        if k == "space" and a != b:
            # same definition under another reference is fine
            try:
                if load_space(b) == SearchSpace.from_dict(stored["space_def"], source="spec.json"):
                    continue  # compared as spaces: a space_def of an older version has no param_order
            except Exception:  # noqa: BLE001
                pass
        if a != b:
            diffs.append(f"{k}: recorded {a!r}, given {b!r}")
    if diffs:
        raise SearchError(
            f"search {spec.search_id!r} already exists with a different definition "
            f"({'; '.join(diffs)}); use another --search-id or the recorded settings"
        )
