"""quicktune: Quick-Tune (Arango et al., ICLR 2024) for Kubeflow.

Finds which pretrained timm model to finetune, and how, with a meta-learned, cost-aware,
freeze-thaw Bayesian optimizer over learning curves (a DyHPO-style deep-kernel GP).

Layers (imports only go downwards; enforced by import-linter, see pyproject.toml):

- ``quicktune.space``, ``quicktune.lct``: search spaces and learning-curve tables (pure data).
- ``quicktune.optimizer``: surrogate, acquisition, ask/tell (numpy/torch/gpytorch only).
- ``quicktune.data``, ``quicktune.hub``, ``quicktune.finetune``: one finetuning step; knows nothing of the search.
- ``quicktune.backends``: run steps (local processes, Kubernetes Jobs).
- ``quicktune.tracking``: the MLflow layout of a search.
- ``quicktune.search``: one search: wires optimizer + backend + tracking (run_search), promotes its winner.
- ``quicktune.cli``: the one ``quicktune`` command; ``components/``, ``pipelines/``, ``k8s/`` shell out to it.
"""

__version__ = "0.1.0"
