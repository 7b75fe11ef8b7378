"""The cost predictor: how many seconds will a config's next epoch take?

An MLP over (hyperparameters, model one-hot, scaled meta-features, epoch / max_epochs) that predicts
the log of one epoch's cost. Meta-trained across datasets (so the cost of an unseen config on a new
dataset is predicted from its model, batch size, frozen fraction and the dataset's size), then
updated online with a few Adam steps whenever new costs are observed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from quicktune.optimizer.surrogate import Batch

COST_FLOOR = 1e-3  # seconds; costs are clamped here before taking the log


class CostPredictor(nn.Module):
    def __init__(self, hp_dim: int, model_dim: int, meta_dim: int, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hp_dim + model_dim + meta_dim + 1, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, b: Batch) -> torch.Tensor:
        x = torch.cat([b.x_hp, b.x_model, b.meta, b.budget.unsqueeze(1)], dim=1)
        return self.net(x).squeeze(1)

    @torch.no_grad()
    def start_at(self, log_cost: float) -> None:
        """Set the output bias so that an untrained net predicts ``exp(log_cost)`` seconds."""
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        last.bias.fill_(float(log_cost))

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
