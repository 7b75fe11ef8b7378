"""The cost predictor: how many seconds will a config's next epoch take?

It starts from the physics of an epoch: one epoch pushes every training image forward and backward
through the model, so its log cost is

    log cost = log(training images) + logaddexp(a0, a1 + log GMACs) + residual(config)

where ``GMACs`` is the model's multiply-accumulates per image at the training resolution (from the
model's descriptor), ``a1`` the log seconds per GMAC and image and ``a0`` the log seconds per image
that do not scale with the model (data loading, optimizer step, Python overhead): for large models the
cost grows in proportion to GMACs x images, small ones level off at the overhead. ``a0``, ``a1`` and
a residual MLP are learned (meta-trained across datasets, then updated online with a few Adam steps
whenever new costs are observed). The residual reads the hyperparameters (batch size, frozen fraction,
augmentation ...), the scaled meta-features, the budget and only the architecture type of the model
(``encoding.COST_RESIDUAL_FEATURES``), never its size: so the predicted cost is increasing in GMACs for
any fixed config, and a model never seen in meta-training is predicted between the smaller and the
larger seen models. Without descriptors (a one-hot schema) the physics term is a learned constant and
the residual reads the one-hot model.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from quicktune.optimizer.surrogate import Batch

COST_FLOOR = 1e-3  # seconds; costs are clamped here before taking the log
#: starting points of the physics term: ~0.3 s per GMAC and image (forward + backward, one CPU thread)
#: and ~1 ms per image of overhead; both learned
A0_START = math.log(1e-3)
A1_START = math.log(0.3)


class CostPredictor(nn.Module):
    def __init__(
        self, hp_dim: int, model_dim: int, meta_dim: int, hidden: int = 32, model_mask: np.ndarray | None = None
    ):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hp_dim + model_dim + meta_dim + 1, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )
        self.a0 = nn.Parameter(torch.tensor(A0_START))
        self.a1 = nn.Parameter(torch.tensor(A1_START))
        mask = torch.ones(model_dim) if model_mask is None else torch.as_tensor(model_mask, dtype=torch.float32)
        if mask.shape != (model_dim,):
            raise ValueError(f"model_mask has shape {tuple(mask.shape)}, expected ({model_dim},)")
        self.model_mask: torch.Tensor
        self.register_buffer("model_mask", mask)

    def physics(self, b: Batch) -> torch.Tensor:
        """log(images) + logaddexp(a0, a1 + log GMACs) (just ``a0`` where GMACs are unknown)."""
        return b.log_images + torch.logaddexp(self.a0.expand_as(b.log_gmacs), self.a1 + b.log_gmacs)

    def forward(self, b: Batch) -> torch.Tensor:
        x = torch.cat([b.x_hp, b.x_model * self.model_mask, b.meta, b.budget.unsqueeze(1)], dim=1)
        return self.physics(b) + self.net(x).squeeze(1)

    @torch.no_grad()
    def start_at(self, log_cost: float, batch: Batch | None = None) -> None:
        """Set the residual's output bias so that the untrained net predicts ``exp(log_cost)`` seconds
        on average (over ``batch``'s physics term when given)."""
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        offset = float(self.physics(batch).mean()) if batch is not None and len(batch) else float(self.a0)
        last.bias.fill_(float(log_cost) - offset)

    @staticmethod
    def target(cost: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.log(torch.as_tensor(cost, dtype=torch.float32).clamp_min(COST_FLOOR))

    def loss(self, b: Batch, log_cost: torch.Tensor) -> torch.Tensor:
        return torch.mean((self(b) - log_cost) ** 2)

    def fit(self, b: Batch, cost: np.ndarray, steps: int, lr: float) -> float:
        """A few Adam steps on squared error in log space (warm start)."""
        self.train()
        y = self.target(cost)
        opt = torch.optim.Adam(self.parameters(), lr=lr, foreach=True)
        val = float("nan")
        for _ in range(int(steps)):
            opt.zero_grad(set_to_none=True)
            loss = self.loss(b, y)
            loss.backward()
            opt.step()
            val = float(loss.detach())
        return val

    @torch.no_grad()
    def predict(self, b: Batch) -> np.ndarray:
        """Predicted seconds for each row (never below ``COST_FLOOR``)."""
        self.eval()
        return np.maximum(np.exp(self(b).numpy().astype(np.float64)), COST_FLOOR)
