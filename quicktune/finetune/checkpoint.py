"""Checkpoints of one config's finetuning run, on a local folder or an ``s3://`` prefix.

Layout (one folder per config, as the controller assigns)::

    epoch-0003.safetensors   every tensor: model, optimizer state, RNG states (uint8), ...
    epoch-0003.json          the manifest: everything else as JSON, plus the SHA-256 and size
                             of the safetensors file, verified on load

Why: nothing is ever unpickled (safetensors + JSON only), a reader can tell a complete checkpoint
from a torn one, and S3 needs no rename: the tensors are written first and the manifest last, so
a manifest only exists for a complete checkpoint (locally both files are also written to a
temporary name and renamed, see ``quicktune.storage.write_bytes``).

A step writes the tensors in a thread while it evaluates the epoch (:class:`TensorsWrite`) and
the manifest once they are stored; nothing else about the order changes.

Retention: after each save the step keeps the newest checkpoint and the best epoch's (by
validation score) and deletes the others (:func:`prune`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from quicktune import storage
from quicktune.finetune.threadcpu import CpuThread

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "FORMAT",
    "save_checkpoint",
    "TensorsWrite",
    "newest_manifest",
    "list_checkpoints",
    "load_checkpoint",
    "load_newest",
    "prune",
    "optimizer_to_parts",
    "optimizer_from_parts",
    "to_jsonable",
]

FORMAT = "quicktune-checkpoint/1"
_MANIFEST_RE = re.compile(r"epoch-(\d{4,})\.json$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, torn or corrupt (e.g. checksum mismatch); the message names it."""


@dataclass
class Checkpoint:
    epoch: int
    uri: str  # the manifest's URI
    manifest: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def _names(epoch: int) -> tuple[str, str]:
    return f"epoch-{epoch:04d}.safetensors", f"epoch-{epoch:04d}.json"


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types for scheduler/optimizer metadata (tuples -> lists, 0-d tensors -> numbers).
    Non-finite floats stay floats (Python's json writes/reads Infinity and NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        if obj.numel() != 1:
            raise TypeError(f"cannot store a tensor of shape {tuple(obj.shape)} as JSON")
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint manifest")


def _dedupe_storage(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory; clone all but the first of each storage."""
    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for k, t in tensors.items():
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) if t.numel() else (0, id(t))
        if key in seen or not t.is_contiguous():
            t = t.contiguous().clone()
        else:
            seen.add(key)
        out[k] = t
    return out


def save_checkpoint(directory: str, epoch: int, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> str:
    """Write the tensors, then the manifest; returns the manifest's URI."""
    return TensorsWrite(directory, epoch, tensors, background=False).commit(meta)[0]


class TensorsWrite:
    """A checkpoint's save in two halves: the tensors file (serialised, hashed and written, in a
    thread when ``background``), then :meth:`commit` writes the manifest once the tensors are
    stored. The manifest is still written last, so a checkpoint exists only when complete.

    Why a thread: the step starts writing the tensors right after an epoch's training and
    evaluates meanwhile (evaluation reads the weights, never writes them), so the upload -- most
    of a save on S3 -- is off the step's critical path. The tensors must not change until
    :meth:`commit` or :meth:`abandon` returns (the next epoch trains after the commit).
    GPU tensors are copied to host memory here, in the caller's thread."""

    def __init__(
        self, directory: str, epoch: int, tensors: Mapping[str, torch.Tensor], *, background: bool = True
    ) -> None:
        self.directory, self.epoch = directory, int(epoch)
        self.tensors_uri = storage.join(directory, _names(epoch)[0])
        self.seconds = 0.0  # the tensors' serialisation, hashing and write
        self._host = _dedupe_storage(tensors)
        self._sha256: str | None = None
        self._size = 0
        self._error: BaseException | None = None
        self.thread: CpuThread | None = None  # (its CPU time: threadcpu; kept after the join)
        if background:
            self.thread = CpuThread(target=self._write, name=f"checkpoint-{epoch}", daemon=True)
            self.thread.start()
        else:
            self._write()

    def _write(self) -> None:
        from safetensors.torch import save

        t0 = time.perf_counter()
        try:
            data = save(self._host)
            self._sha256, self._size = hashlib.sha256(data).hexdigest(), len(data)
            storage.write_bytes(self.tensors_uri, data)
        except BaseException as exc:  # noqa: BLE001 - re-raised by commit()
            self._error = exc
        finally:
            self._host = {}
            self.seconds = time.perf_counter() - t0

    def _join(self) -> None:
        if self.thread is not None:
            self.thread.join()

    def commit(self, meta: Mapping[str, Any]) -> tuple[str, bytes]:
        """Wait for the tensors, then write the manifest; ``(manifest URI, manifest bytes)``."""
        self._join()
        if self._error is not None:
            raise self._error
        manifest = {
            "format": FORMAT,
            "epoch": self.epoch,
            "tensors_file": _names(self.epoch)[0],
            "sha256": self._sha256,
            "size": self._size,
            **to_jsonable(dict(meta)),
        }
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        uri = storage.join(self.directory, _names(self.epoch)[1])
        storage.write_bytes(uri, body)
        return uri, body

    def abandon(self) -> None:
        """The epoch is not to be saved (it diverged, or the step failed): wait for the write and
        delete the tensors file unless a manifest of that epoch exists (another writer's)."""
        self._join()
        try:
            if not storage.exists(storage.join(self.directory, _names(self.epoch)[1])):
                storage.delete(self.tensors_uri)
        except storage.StorageError as exc:  # an orphan tensors file: no manifest names it
            log.warning("could not delete the unsaved epoch's tensors %s: %s", self.tensors_uri, exc)


def newest_manifest(directory: str) -> tuple[int, str, bytes] | None:
    """``(epoch, URI, bytes)`` of the folder's newest manifest, unverified (None if none): what a
    warm step compares with the manifest it wrote itself before it trusts its memory."""
    found = list_checkpoints(directory)
    if not found:
        return None
    epoch, uri = found[-1]
    try:
        return epoch, uri, storage.read_bytes(uri)
    except storage.NotFoundError:  # pruned in between by another writer
        return None


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
    """``(epoch, manifest_uri)`` of every manifest in the folder, oldest first."""
    prefix = directory.rstrip("/") + "/" if storage.is_s3(directory) else directory
    found = []
    for uri in storage.list_uris(prefix):
        m = _MANIFEST_RE.search(uri.rsplit("/", 1)[-1])
        if m and uri.rsplit("/", 1)[-1] == m.group(0):
            found.append((int(m.group(1)), uri))
    return sorted(found)


def load_checkpoint(manifest_uri: str, *, tensors: bool = True) -> Checkpoint:
    """Read and verify one checkpoint (checksum and size of the tensors file)."""
    try:
        manifest = json.loads(storage.read_bytes(manifest_uri))
    except storage.StorageError as exc:
        raise CheckpointError(f"checkpoint manifest {manifest_uri}: {exc}") from exc
    except ValueError as exc:
        raise CheckpointError(f"checkpoint manifest {manifest_uri} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint manifest {manifest_uri}: not a {FORMAT} manifest")
    base = manifest_uri.rsplit("/", 1)[0] if storage.is_s3(manifest_uri) else str(_parent(manifest_uri))
    tensor_uri = storage.join(base, manifest["tensors_file"])
    out: dict[str, torch.Tensor] = {}
    if tensors:
        try:
            data = storage.read_bytes(tensor_uri)
        except storage.StorageError as exc:
            raise CheckpointError(f"checkpoint tensors {tensor_uri}: {exc}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != manifest.get("sha256") or len(data) != manifest.get("size"):
            raise CheckpointError(
                f"checkpoint {tensor_uri} is corrupt: SHA-256 {digest[:12]}... ({len(data)} bytes) does not match "
                f"the manifest's {str(manifest.get('sha256'))[:12]}... ({manifest.get('size')} bytes)"
            )
        from safetensors.torch import load

        try:
            out = load(data)
        except Exception as exc:  # noqa: BLE001 - the format library raises various types
            raise CheckpointError(f"checkpoint {tensor_uri} cannot be decoded: {exc}") from exc
    return Checkpoint(epoch=int(manifest["epoch"]), uri=manifest_uri, manifest=manifest, tensors=out)


def _parent(path: str):
    from pathlib import Path

    return Path(path).parent


def load_newest(directory: str) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint that verifies, and a warning for each newer one that did not.

    Returns ``(None, [])`` for an empty folder; raises :class:`CheckpointError` when checkpoints
    exist but none verifies (the step must not silently start over).
    """
    found = list_checkpoints(directory)
    problems: list[str] = []
    for _, uri in reversed(found):
        try:
            return load_checkpoint(uri), problems
        except CheckpointError as exc:
            problems.append(str(exc))
    if problems:
        raise CheckpointError("no usable checkpoint in " + directory + ": " + "; ".join(problems))
    return None, []


def prune(directory: str, keep_epochs: set[int]) -> list[int]:
    """Delete every checkpoint whose epoch is not in ``keep_epochs`` (manifest first, so a reader
    never finds a manifest without its tensors). Returns the deleted epochs."""
    deleted = []
    for epoch, uri in list_checkpoints(directory):
        if epoch in keep_epochs:
            continue
        tname, _ = _names(epoch)
        base = uri.rsplit("/", 1)[0] if storage.is_s3(uri) else str(_parent(uri))
        storage.delete(uri)
        storage.delete(storage.join(base, tname))
        deleted.append(epoch)
    return deleted


# --------------------------------------------------------------------------------------------
# Optimizer state <-> (tensors, JSON)
# --------------------------------------------------------------------------------------------
def optimizer_to_parts(
    state: Mapping[str, Any], prefix: str = "optim/"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for idx, st in state["state"].items():
        entry: dict[str, Any] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{prefix}{idx}/{k}"] = v
                entry[k] = {"__tensor__": f"{prefix}{idx}/{k}"}
            else:
                entry[k] = to_jsonable(v)
        per_param[str(idx)] = entry
    return tensors, {"state": per_param, "param_groups": to_jsonable(state["param_groups"])}


def optimizer_from_parts(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for idx, entry in meta["state"].items():
        st = {}
        for k, v in entry.items():
            st[k] = tensors[v["__tensor__"]] if isinstance(v, dict) and "__tensor__" in v else v
        state[int(idx)] = st
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
