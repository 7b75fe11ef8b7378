"""One finetuning step of one config (the unit of work of the search), and its checkpoints.

    from quicktune.finetune import run_step, evaluate_checkpoint, load_trained_model
    result = run_step({"model": "resnet10t", "lr": 1e-3}, "./data/digits", to_epoch=2,
                      checkpoint_dir="./ckpt/abc", out="RESULT.json")

Modules: ``config`` (knobs, validation, defaults), ``transforms`` (preprocessing, augmentation
policies), ``regularizers`` (L2-SP, DELTA, BSS, co-tuning, StochNorm), ``freezing``, ``model``
(hub network), ``loader`` (batches, data order), ``train`` (epoch loop, evaluation),
``checkpoint`` (safetensors + JSON), ``result`` (RESULT.json), ``step`` (``run_step``: the step's
flow), ``build`` (``TrainingParts``: network, optimizer, scheduler, regularizers, loss), ``state``
(``CheckpointMeta``, exact-resume state), ``export`` (``load_trained_model``, ``evaluate_checkpoint``).

Imports are lazy so that ``quicktune step`` starts fast and never loads MLflow.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_step", "evaluate_checkpoint", "load_trained_model", "resolve_config", "InvalidConfigError"]

_LAZY = {
    "run_step": "quicktune.finetune.step",
    "evaluate_checkpoint": "quicktune.finetune.export",
    "load_trained_model": "quicktune.finetune.export",
    "resolve_config": "quicktune.finetune.config",
    "InvalidConfigError": "quicktune.finetune.config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'quicktune.finetune' has no attribute {name!r}")
