"""The prior weight of the mixture (:mod:`quicktune.optimizer.mixture`) on its own: the mixed
prediction, the start and cap of ``w``, and its state round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from quicktune.optimizer.mixture import LOG_ODDS_CAP, W_MAX, W_MIN, PriorWeight, mix


def test_the_mixture_is_each_component_at_the_ends_and_wider_in_between():
    m1, s1, m2, s2 = np.array([0.8]), np.array([0.1]), np.array([0.2]), np.array([0.05])
    assert mix(1.0, m1, s1, m2, s2)[0] == pytest.approx(m1) and mix(1.0, m1, s1, m2, s2)[1] == pytest.approx(s1)
    assert mix(0.0, m1, s1, m2, s2)[0] == pytest.approx(m2) and mix(0.0, m1, s1, m2, s2)[1] == pytest.approx(s2)
    mean, sd = mix(0.5, m1, s1, m2, s2)
    assert mean == pytest.approx(0.5) and sd[0] > max(s1[0], s2[0])  # the disagreement adds variance


def test_the_weight_starts_clipped_and_evidence_moves_it_within_the_cap():
    assert PriorWeight(1.0).value == pytest.approx(W_MAX) and PriorWeight(-3.0).value == pytest.approx(W_MIN)
    w = PriorWeight(0.5)
    for _ in range(50):  # the meta-trained surrogate sure and right, again and again
        w.predict("c", 1, 0.5, 0.01, 0.0, 0.01)
        w.observe("c", 1, 0.5)
    assert w.updates == 50 and w.log_odds == pytest.approx(LOG_ODDS_CAP)
    w.predict("c", 2, 0.5, 0.01, 0.0, 0.01)
    w.forget("c")
    w.observe("c", 2, 0.0)  # forgotten: no evidence
    assert w.updates == 50
    w.predict("c", 2, 0.5, 0.01, 0.0, 0.01)
    w.observe("c", 2, math.nan)  # a diverged epoch is no evidence either, and the prediction is used up
    assert w.updates == 50 and not w.preds
    w.restart()
    assert w.value == pytest.approx(0.5) and w.updates == 0


@given(
    score=st.floats(0, 1),
    log_odds=st.floats(-LOG_ODDS_CAP, LOG_ODDS_CAP),
    preds=st.dictionaries(st.text(min_size=1, max_size=8), st.lists(st.floats(0, 10), min_size=5, max_size=5)),
)
def test_the_state_round_trips_through_json_exactly(score, log_odds, preds):
    a = PriorWeight(score)
    a.log_odds, a.preds, a.updates = log_odds, {k: list(v) for k, v in preds.items()}, len(preds)
    b = PriorWeight(0.5)
    b.load(json.loads(json.dumps(a.state())))
    assert b.state() == a.state() and b.value == a.value
