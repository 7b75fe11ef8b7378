"""The DyHPO / Quick-Tune deep-kernel GP surrogate.

An exact GP (constant mean, scaled Matérn-5/2 or RBF kernel) over a learned embedding of
one observation = (config, epoch, learning curve before that epoch, dataset meta-features). The
embedding (``FeatureExtractor``) concatenates

- a hyperparameter encoder (MLP over ``X_hp``),
- a separate model encoder (MLP over the model's descriptor ``X_model``: what the model is, see
  ``encoding.ModelColumn``; one-hot only for tables whose models have no descriptor),
- the budget ``epoch / max_epochs``,
- a 1-D convolutional embedding of the zero-padded curve observed *before* the predicted epoch
  (conv -> ReLU -> global max-pool, so any curve length works),
- a meta-feature encoder (MLP over scaled meta-features),

and maps it through a small trunk to ``out_dim`` features for the kernel. Everything defined is
used in ``forward``. The ``prior_head`` is a linear read-out of the embedding trained jointly during
meta-training; it ranks configs before the GP has observations of the new dataset (initial design).

Weights and GP hyperparameters are fitted jointly by maximizing the exact marginal likelihood.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import gpytorch
import numpy as np
import torch
from torch import nn


@dataclass
class SurrogateConfig:
    hp_dim: int
    model_dim: int
    meta_dim: int
    hidden: int = 64
    out_dim: int = 16
    model_emb: int = 8
    meta_emb: int = 8
    conv_channels: int = 8
    kernel: str = "matern"  # "matern" (5/2) or "rbf"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Batch:
    """Surrogate inputs for n observations (float32 tensors)."""

    x_hp: torch.Tensor  # (n, hp_dim)
    x_model: torch.Tensor  # (n, model_dim)
    budget: torch.Tensor  # (n,) epoch / max_epochs
    curve: torch.Tensor  # (n, L) scores before the epoch, zero-padded
    meta: torch.Tensor  # (n, meta_dim)
    log_gmacs: torch.Tensor  # (n,) ln(GMACs) of the model at the training resolution; -inf when unknown
    log_images: torch.Tensor  # (n,) ln(training images); 0 when unknown (the cost model's physics term)

    def __len__(self) -> int:
        return int(self.budget.shape[0])

    def subset(self, idx: torch.Tensor | np.ndarray) -> Batch:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Batch(*(getattr(self, f)[idx] for f in _FIELDS))

    @staticmethod
    def cat(batches: list[Batch]) -> Batch:
        return Batch(*(torch.cat([getattr(b, f) for b in batches]) for f in _FIELDS))


_FIELDS = ("x_hp", "x_model", "budget", "curve", "meta", "log_gmacs", "log_images")


def make_batch(
    x_hp: np.ndarray,
    x_model: np.ndarray,
    epochs: np.ndarray,
    curves: Sequence[Sequence[float]] | np.ndarray,
    meta: np.ndarray,
    max_epochs: int,
    log_gmacs: np.ndarray | None = None,
    log_images: float | None = None,
) -> Batch:
    """Build a batch; ``curves[i]`` are the scores of epochs ``1..epochs[i]-1`` (NaN -> 0);
    ``log_gmacs`` per row (NaN/None: unknown) and ``log_images`` (None: unknown) feed the cost model."""
    n = len(epochs)
    L = max(int(max_epochs), 1)
    C = np.zeros((n, L), dtype=np.float32)
    for i, c in enumerate(curves):
        c = np.asarray(c, dtype=np.float32)[:L]
        C[i, : len(c)] = np.nan_to_num(c, nan=0.0)
    meta = np.asarray(meta, dtype=np.float32)
    if meta.ndim == 1:
        meta = np.tile(meta[None, :], (n, 1))
    return Batch(
        torch.as_tensor(np.asarray(x_hp, dtype=np.float32)),
        torch.as_tensor(np.asarray(x_model, dtype=np.float32)),
        torch.as_tensor(np.asarray(epochs, dtype=np.float32) / float(max_epochs)),
        torch.as_tensor(C),
        torch.as_tensor(meta),
        torch.as_tensor(
            np.where(np.isnan(g := np.asarray(log_gmacs, dtype=np.float32)), np.float32(-np.inf), g)
            if log_gmacs is not None
            else np.full(n, -np.inf, dtype=np.float32)
        ),
        torch.full((n,), float(log_images) if log_images is not None else 0.0, dtype=torch.float32),
    )


def _mlp(i: int, o: int) -> nn.Module:
    return nn.Sequential(nn.Linear(i, o), nn.ReLU())


class FeatureExtractor(nn.Module):
    def __init__(self, cfg: SurrogateConfig):
        super().__init__()
        self.cfg = cfg
        self.hp_encoder = _mlp(cfg.hp_dim, cfg.hidden) if cfg.hp_dim > 0 else None
        self.model_encoder = _mlp(cfg.model_dim, cfg.model_emb) if cfg.model_dim > 0 else None
        self.meta_encoder = _mlp(cfg.meta_dim, cfg.meta_emb) if cfg.meta_dim > 0 else None
        self.curve_conv = nn.Conv1d(1, cfg.conv_channels, kernel_size=3, padding=1)
        width = (
            (cfg.hidden if self.hp_encoder is not None else 0)
            + (cfg.model_emb if self.model_encoder is not None else 0)
            + (cfg.meta_emb if self.meta_encoder is not None else 0)
            + cfg.conv_channels
            + 1
        )
        self.trunk = nn.Sequential(nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.out_dim))

    def forward(self, b: Batch) -> torch.Tensor:
        parts = []
        if self.hp_encoder is not None:
            parts.append(self.hp_encoder(b.x_hp))
        if self.model_encoder is not None:
            parts.append(self.model_encoder(b.x_model))
        if self.meta_encoder is not None:
            parts.append(self.meta_encoder(b.meta))
        conv = torch.relu(self.curve_conv(b.curve.unsqueeze(1)))
        parts.append(conv.amax(dim=2))
        parts.append(b.budget.unsqueeze(1))
        return self.trunk(torch.cat(parts, dim=1))


class _ExactGP(gpytorch.models.ExactGP):
    def __init__(self, dim: int, likelihood: gpytorch.likelihoods.GaussianLikelihood, kernel: str):
        super().__init__(None, None, likelihood)
        self.mean_module = gpytorch.means.ConstantMean()
        base = (
            gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=dim)
            if kernel == "matern"
            else gpytorch.kernels.RBFKernel(ard_num_dims=dim)
        )
        self.covar_module = gpytorch.kernels.ScaleKernel(base)

    def forward(self, z: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))


class DeepKernelGP(nn.Module):
    """Feature extractor + exact GP + likelihood + prior head, as one module (one state dict)."""

    def __init__(self, cfg: SurrogateConfig):
        super().__init__()
        self.cfg = cfg
        self.features = FeatureExtractor(cfg)
        self.likelihood = gpytorch.likelihoods.GaussianLikelihood(
            noise_constraint=gpytorch.constraints.GreaterThan(1e-4)
        )
        self.gp = _ExactGP(cfg.out_dim, self.likelihood, cfg.kernel)
        self.prior_head = nn.Linear(cfg.out_dim, 1)
        # scores live in about [0, 1]: start from a small noise instead of gpytorch's 0.69
        self.likelihood.noise = 1e-2

    # -- training ------------------------------------------------------------------------------
    def neg_mll(self, batch: Batch, y: torch.Tensor) -> torch.Tensor:
        """Negative exact marginal log-likelihood (per point) of ``y`` given ``batch``."""
        self.train()
        z = self.features(batch)
        self.gp.set_train_data(z, y, strict=False)
        out = self.gp(z)
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(self.likelihood, self.gp)
        return -mll(out, y)

    def prior_loss(self, batch: Batch, y: torch.Tensor) -> torch.Tensor:
        return torch.mean((self.prior_head(self.features(batch)).squeeze(1) - y) ** 2)

    def fit(self, batch: Batch, y: torch.Tensor, steps: int, lr: float, subset: np.ndarray | None = None) -> float:
        """A few Adam steps on the exact MLL (warm start from the current weights). ``lr``
        really is the step size. Returns the last loss."""
        if subset is not None:
            batch, y = batch.subset(subset), y[torch.as_tensor(subset, dtype=torch.long)]
        opt = torch.optim.Adam(self.parameters(), lr=lr, foreach=True)
        loss_v = float("nan")
        with gpytorch.settings.cholesky_jitter(1e-4):
            for _ in range(int(steps)):
                opt.zero_grad(set_to_none=True)
                loss = self.neg_mll(batch, y)
                loss.backward()
                opt.step()
                loss_v = float(loss.detach())
        return loss_v

    # -- prediction ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, train: Batch, y: torch.Tensor, test: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and std of the *latent* score at the test points."""
        self.eval()
        with gpytorch.settings.cholesky_jitter(1e-4), gpytorch.settings.fast_pred_var(False):
            zt = self.features(train)
            zs = self.features(test)
            self.gp.set_train_data(zt, y, strict=False)
            post = self.gp(zs)
            mean = post.mean.numpy().astype(np.float64)
            std = post.variance.clamp_min(1e-12).sqrt().numpy().astype(np.float64)
        return mean, std

    @torch.no_grad()
    def prior_predict(self, test: Batch) -> np.ndarray:
        self.eval()
        return self.prior_head(self.features(test)).squeeze(1).numpy().astype(np.float64)


def state_to_lists(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    return {k: {"shape": list(v.shape), "data": v.detach().reshape(-1).tolist()} for k, v in state.items()}


def state_from_lists(doc: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v["data"], dtype=torch.float32).reshape(v["shape"]) for k, v in doc.items()}
