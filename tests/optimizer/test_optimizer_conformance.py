"""The ask/tell contract (quicktune.optimizer.testing) for every optimizer in the registry.

Replaces the per-optimizer copies (pending asks, dead configs, state round trip) that lived in
tests/test_optimizer.py (now test_quicktune.py) and test_baselines.py. A new optimizer registered in
``quicktune.optimizer.registry`` is covered without writing a test.
"""

from __future__ import annotations

import pytest

from quicktune.optimizer import registry
from quicktune.optimizer.testing import CHEAP_OPTIONS, OptimizerConformance


class TestRegisteredOptimizers(OptimizerConformance):
    @pytest.fixture(params=registry.available())
    def make(self, request):
        name = request.param
        return lambda candidates, max_epochs, seed: registry.make_optimizer(
            name, candidates, max_epochs, seed=seed, **CHEAP_OPTIONS
        )
