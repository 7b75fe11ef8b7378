"""When a config has diverged: a non-finite loss that persists, or a loss that explodes.

Why a module of its own: ``diverged`` is final for a config (the search never trains it again),
so the rule must be conservative, documented and tested without a GPU. Two rules:

1. **Non-finite loss** (:class:`NonFiniteGuard`, per batch). In fp32 and bf16 (bf16 has fp32's
   exponent range) the first NaN/inf loss stops the step. In fp16 an overflow is ordinary: the
   GradScaler skips that step and halves its scale. Diverged only when the loss stays non-finite
   for :data:`MAX_NONFINITE_STREAK` consecutive batches (the weights did not change in between:
   the weights themselves overflow), or the scale falls below :data:`MIN_SCALE`.
2. **Exploded loss** (:func:`loss_exploded`, per epoch, on the mean *task* loss: the
   cross-entropy without the regularizer terms, whose scale depends on their weights). Diverged
   when the epoch's mean exceeds :data:`CHANCE_FACTOR` x log(num_classes) (a uniform guess scores
   log(num_classes); 100x that means logits off by hundreds), or exceeds
   :data:`EXPLOSION_FACTOR` x the first epoch's mean *and* is worse than a uniform guess.
   Found on ``lr=1e6`` SGD: train and val losses of 1e10 with all-finite numbers, once ``ok``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "MAX_NONFINITE_STREAK",
    "MIN_SCALE",
    "CHANCE_FACTOR",
    "EXPLOSION_FACTOR",
    "NonFiniteGuard",
    "loss_exploded",
]

#: fp16: this many consecutive batches with a non-finite loss (each one skipped by the scaler,
#: so the weights did not change in between) = diverged: the weights themselves overflow
MAX_NONFINITE_STREAK = 10
#: fp16: a GradScaler scale below this = diverged. Below 1 the scaler scales the loss *down* and
#: the gradients still overflow fp16 (> 65504): the gradients themselves explode. From the
#: initial 2**16 it takes at least 17 skipped steps to get there
MIN_SCALE = 1.0


#: an epoch's mean task loss above CHANCE_FACTOR x log(num_classes) = diverged
CHANCE_FACTOR = 100.0
#: an epoch's mean task loss above EXPLOSION_FACTOR x the first epoch's (and above log(num_classes)) = diverged
EXPLOSION_FACTOR = 100.0


def loss_exploded(epoch_loss: float, first_epoch_loss: float | None, num_classes: int) -> str | None:
    """The reason an epoch with mean task loss ``epoch_loss`` counts as diverged, or None.

    ``first_epoch_loss`` is the config's first epoch's mean task loss (None while training the
    first epoch: only the absolute bound applies then)."""
    if not math.isfinite(epoch_loss):
        return f"the mean training loss is {epoch_loss}"
    chance = math.log(max(int(num_classes), 2))
    if epoch_loss > CHANCE_FACTOR * chance:
        return (
            f"the mean training loss {epoch_loss:.4g} exceeds {CHANCE_FACTOR:g} x log({num_classes}) = "
            f"{CHANCE_FACTOR * chance:.4g}"
        )
    if (
        first_epoch_loss is not None
        and math.isfinite(first_epoch_loss)
        and first_epoch_loss > 0
        and epoch_loss > EXPLOSION_FACTOR * first_epoch_loss
        and epoch_loss > chance
    ):
        return (
            f"the mean training loss {epoch_loss:.4g} exceeds {EXPLOSION_FACTOR:g} x the first epoch's "
            f"({first_epoch_loss:.4g}) and a uniform guess's log({num_classes}) = {chance:.4g}"
        )
    return None


@dataclass
class NonFiniteGuard:
    """Decides, batch after batch, whether non-finite losses mean divergence.

    ``scaled`` is True when a GradScaler runs (fp16). Feed it one :meth:`observe` per batch:
    whether the loss was finite, whether the scaler skipped the optimizer step (overflowed
    gradients, or a non-finite loss) and the scaler's scale after its update. It returns None
    (go on) or the reason the config diverged:

    - without a scaler: the first non-finite loss;
    - with a scaler: :data:`MAX_NONFINITE_STREAK` consecutive non-finite losses, or the scale
      falling below :data:`MIN_SCALE`. A skipped step alone (fp16 overflow) is not divergence.

    ``skipped`` counts the steps the scaler skipped (reported as ``scaler_skipped_steps``)."""

    scaled: bool
    max_streak: int = MAX_NONFINITE_STREAK
    min_scale: float = MIN_SCALE
    skipped: int = 0
    nonfinite: int = 0
    streak: int = 0

    def observe(self, loss_finite: bool, step_skipped: bool = False, scale: float | None = None) -> str | None:
        if not loss_finite:
            self.nonfinite += 1
            self.streak += 1
        else:
            self.streak = 0
        if not self.scaled:
            return None if loss_finite else "the training loss became non-finite"
        if step_skipped or not loss_finite:
            self.skipped += 1
        if self.streak >= self.max_streak:
            return (
                f"the training loss stayed non-finite for {self.streak} consecutive batches "
                f"after the fp16 GradScaler skipped each step"
            )
        if scale is not None and scale < self.min_scale:
            return (
                f"the fp16 GradScaler's scale fell to {scale:g} (< {self.min_scale:g}) after "
                f"{self.skipped} skipped steps: the gradients overflow even unscaled"
            )
        return None
