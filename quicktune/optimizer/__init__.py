"""Optimizers over learning curves: Quick-Tune (meta-learned, cost-aware deep-kernel GP), its
ablations (DyHPO = no meta-learning, no cost) and classic baselines, all behind one ask/tell API.

Pure library: numpy, torch and gpytorch only (no MLflow, boto3, kubernetes, kfp or timm).
"""

from quicktune.optimizer.base import STATUSES, Optimizer, Suggestion

__all__ = ["STATUSES", "Optimizer", "Suggestion"]
