"""Meta-trained weights on disk: ``weights.safetensors`` + ``artifact.json``.

The JSON holds everything needed to use the weights identically during search, and what the
artifact was meta-trained on: the encoding schema (knob ranges and choices, the models with their
descriptors and the resolution they were computed at), the meta-feature scaler (with the raw
ranges), the surrogate's architecture, ``max_epochs`` of the training table, the table's content
hash, the datasets used / excluded and a format version. No pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from quicktune.optimizer.encoding import MetaScaler, Schema
from quicktune.optimizer.surrogate import SurrogateConfig

#: 2: models encoded by descriptor (stored in the schema), meta-features on log scales, physics cost model
FORMAT_VERSION = 2
WEIGHTS = "weights.safetensors"
MANIFEST = "artifact.json"


class ArtifactError(ValueError):
    """A meta-artifact directory is missing, incomplete or of an unknown version."""


@dataclass
class MetaArtifact:
    schema: Schema
    meta_scaler: MetaScaler
    surrogate_config: SurrogateConfig
    surrogate_state: dict[str, torch.Tensor]
    cost_state: dict[str, torch.Tensor]
    max_epochs: int
    table_hash: str = ""
    datasets: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {f"surrogate.{k}": v.detach().contiguous().clone() for k, v in self.surrogate_state.items()}
        tensors.update({f"cost.{k}": v.detach().contiguous().clone() for k, v in self.cost_state.items()})
        save_file(tensors, str(d / WEIGHTS))
        manifest = {
            "version": self.version,
            "schema": self.schema.to_json(),
            "meta_scaler": self.meta_scaler.to_json(),
            "surrogate_config": self.surrogate_config.to_json(),
            "max_epochs": self.max_epochs,
            "table_hash": self.table_hash,
            "datasets": self.datasets,
            "excluded": self.excluded,
            "metrics": self.metrics,
        }
        (d / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> MetaArtifact:
        d = Path(directory)
        if not (d / MANIFEST).is_file() or not (d / WEIGHTS).is_file():
            raise ArtifactError(f"{d}: not a meta-artifact (needs {MANIFEST} and {WEIGHTS})")
        try:
            doc = json.loads((d / MANIFEST).read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{d / MANIFEST}: not valid JSON: {exc}") from None
        if doc.get("version") != FORMAT_VERSION:
            hint = (
                " (version 1 encoded models one-hot over the models it was meta-trained on and cannot tell "
                "models apart on another hub: re-run `quicktune metatrain` on its table)"
                if doc.get("version") == 1
                else ""
            )
            raise ArtifactError(f"{d}: artifact version {doc.get('version')!r}, this code reads {FORMAT_VERSION}{hint}")
        tensors = load_file(str(d / WEIGHTS))
        sur = {k[len("surrogate.") :]: v for k, v in tensors.items() if k.startswith("surrogate.")}
        cost = {k[len("cost.") :]: v for k, v in tensors.items() if k.startswith("cost.")}
        return cls(
            schema=Schema.from_json(doc["schema"]),
            meta_scaler=MetaScaler.from_json(doc["meta_scaler"]),
            surrogate_config=SurrogateConfig(**doc["surrogate_config"]),
            surrogate_state=sur,
            cost_state=cost,
            max_epochs=int(doc["max_epochs"]),
            table_hash=doc.get("table_hash", ""),
            datasets=list(doc.get("datasets", [])),
            excluded=list(doc.get("excluded", [])),
            metrics=dict(doc.get("metrics", {})),
            version=int(doc["version"]),
        )


DEFAULT_ARTIFACT_DIR = Path(__file__).with_name("default_artifact")


def default_artifact() -> MetaArtifact | None:
    """The artifact shipped with the package, if any."""
    if (DEFAULT_ARTIFACT_DIR / MANIFEST).is_file():
        return MetaArtifact.load(DEFAULT_ARTIFACT_DIR)
    return None
