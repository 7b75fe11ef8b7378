"""Baselines: rung arithmetic, ASHA / SH / Hyperband promotions on hand-made tables, synchronous
rungs, sampling from a space. All pure Python, < 2 s in total. Dead configs, pending asks,
exhaustion and the state round trip: the conformance suite (test_optimizer_conformance.py)."""

from __future__ import annotations

import json

import pytest

from quicktune.bench.synthetic import synthetic_space
from quicktune.optimizer.baselines import ASHA, Hyperband, RandomSearch, SuccessiveHalving, rung_levels
from quicktune.optimizer.registry import make_optimizer

# constant-over-epochs scores of nine configs: c4 > c1 > c8 > c6 > c0 > c7 > c3 > c5 > c2
Q = [0.5, 0.9, 0.1, 0.3, 0.95, 0.2, 0.6, 0.4, 0.8]


def _pool(q):
    return [(f"c{i}", {"x": i}) for i in range(len(q))]


def _drive(opt, score_of, limit=10_000):
    """Ask/tell sequentially until None; returns the asked (config, epoch) sequence."""
    seq = []
    for _ in range(limit):
        s = opt.ask()
        if s is None:
            return seq
        seq.append((s.config_id, s.epoch))
        opt.tell(s.config_id, s.epoch, score_of(s.config_id, s.epoch), 1.0)
    raise AssertionError("optimizer never exhausted")


def _q(q):
    return lambda cid, epoch: q[int(cid[1:])]


def test_rung_levels():
    assert rung_levels(20) == [1, 3, 9, 20]
    assert rung_levels(9) == [1, 3, 9]
    assert rung_levels(27) == [1, 3, 9, 27]
    assert rung_levels(1) == [1]
    assert rung_levels(12, eta=2, min_epoch=2) == [2, 4, 8, 12]
    with pytest.raises(ValueError):
        rung_levels(0)


def test_asha_promotes_the_right_configs():
    # Hand-computed (levels 1, 3, 9; eta 3), the default promotion="floor": a rung promotes its
    # best not-yet-promoted config among its top floor(n/3); higher rungs are served first;
    # otherwise a new config starts.
    seq = _drive(ASHA(_pool(Q), 9, seed=0, shuffle=False), _q(Q))
    expected = [
        ("c0", 1),
        ("c1", 1),
        ("c2", 1),  # rung 0 = {c0, c1, c2}: top-1 is c1
        ("c1", 2),
        ("c1", 3),  # c1 -> rung 1
        ("c3", 1),
        ("c4", 1),  # rung 0 has 5: top-1 is now c4
        ("c4", 2),
        ("c4", 3),
        ("c5", 1),
        ("c6", 1),
        ("c7", 1),
        ("c8", 1),  # rung 0 has 9: top-3 = c4, c1, c8
        ("c8", 2),
        ("c8", 3),  # rung 1 = {c1, c4, c8}: top-1 = c4 -> rung 2
        ("c4", 4),
        ("c4", 5),
        ("c4", 6),
        ("c4", 7),
        ("c4", 8),
        ("c4", 9),
    ]
    assert seq == expected


def test_asha_quantile_promotion_is_syne_tunes_rule():
    # Hand-computed (levels 1, 3, 9; eta 3), promotion="quantile": the best not-yet-promoted
    # config of a rung with >= 2 scores goes up when it is at or above their 2/3 quantile (numpy's
    # linear one); higher rungs first; otherwise a new config starts.
    seq = _drive(ASHA(_pool(Q), 9, seed=0, shuffle=False, promotion="quantile"), _q(Q))
    expected = [
        ("c0", 1),
        ("c1", 1),  # rung 0 = {.5, .9}: cutoff .767, c1 (.9) goes up
        ("c1", 2),
        ("c1", 3),
        ("c2", 1),  # rung 0 = {.5, .9, .1}: cutoff .633 > c0's .5
        ("c3", 1),  # rung 0 = {.5, .9, .1, .3}: cutoff .5, c0 (.5) goes up
        ("c0", 2),
        ("c0", 3),  # rung 1 = {.9, .5}: cutoff .767, c1 goes up to the top rung
        *[("c1", e) for e in range(4, 10)],
        ("c4", 1),  # nothing promotable (c3's .3 < .5): new config; rung 0 cutoff .767 < c4's .95
        ("c4", 2),
        ("c4", 3),  # rung 1 = {.9, .5, .95}: cutoff .917 < .95
        *[("c4", e) for e in range(4, 10)],
    ]
    assert seq[: len(expected)] == expected
    with pytest.raises(ValueError, match="promotion"):
        ASHA(_pool(Q), 9, promotion="median")


def test_asha_records_a_failed_epoch_as_worst_score_when_given():
    # c1 is the best config but its epoch 2 is NaN (a failed evaluation, not a divergence)
    def score(cid, epoch):
        return float("nan") if (cid, epoch) == ("c1", 2) else Q[int(cid[1:])]

    def drive(opt):
        seq = []
        for _ in range(200):
            s = opt.ask()
            if s is None:
                break
            seq.append((s.config_id, s.epoch))
            x = score(s.config_id, s.epoch)
            opt.tell(s.config_id, s.epoch, x, 1.0, "ok" if x == x else "diverged")
        return seq, opt

    seq, opt = drive(ASHA(_pool(Q), 9, seed=0, shuffle=False, worst_score=0.0))
    assert ("c1", 3) in seq  # the failed epoch did not end it: it went on to its rung
    assert opt._scores["c1"][1] == 0.0  # recorded as the worst score
    seq, _ = drive(ASHA(_pool(Q), 9, seed=0, shuffle=False))  # a real search: no worst score
    assert ("c1", 3) not in seq  # dead at its failed epoch


def test_successive_halving_bracket():
    seq = _drive(SuccessiveHalving(_pool(Q), 9, seed=0, shuffle=False), _q(Q))
    expected = [(f"c{i}", 1) for i in range(9)]
    expected += [("c4", 2), ("c4", 3), ("c1", 2), ("c1", 3), ("c8", 2), ("c8", 3)]
    expected += [("c4", e) for e in range(4, 10)]
    assert seq == expected


def test_hyperband_second_bracket_starts_at_rung_one():
    q = Q + [0.15, 0.7, 0.25, 0.05, 0.35]  # c9..c13: c10 is the best of them
    seq = _drive(Hyperband(_pool(q), 9, seed=0, shuffle=False), _q(q))
    assert seq[:21] == _drive(SuccessiveHalving(_pool(Q), 9, seed=0, shuffle=False), _q(Q))
    rest = seq[21:]
    # bracket s=1: ceil(3/2 * 3) = 5 configs straight to epoch 3, then the top one to 9
    expected = [(f"c{i}", e) for i in range(9, 14) for e in (1, 2, 3)] + [("c10", e) for e in range(4, 10)]
    assert rest == expected


def test_random_search_trains_each_config_to_max_epochs_then_exhausts():
    pool = [("a", {"x": 1}), ("b", {"x": 2})]
    seq = _drive(RandomSearch(pool, 3, seed=0, shuffle=False), lambda c, e: 0.5)
    assert seq == [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("b", 3)]


def test_pending_asks_are_distinct_and_parallel_rungs():
    opt = ASHA(_pool(Q), 9, seed=3)
    asks = [opt.ask() for _ in range(4)]
    assert len({(s.config_id, s.epoch) for s in asks}) == 4
    assert all(s.epoch == 1 for s in asks)
    with pytest.raises(ValueError, match="was not asked"):
        opt.tell(asks[0].config_id, 2, 0.5, 1.0)
    # synchronous SH blocks (None) while its rung waits on pending results, then continues
    sh = SuccessiveHalving(_pool(Q[:3]), 9, seed=0, shuffle=False)
    first = [sh.ask() for _ in range(3)]
    assert [s.config_id for s in first] == ["c0", "c1", "c2"]
    assert sh.ask() is None  # all of rung 0 is pending and the pool is empty
    for s in first:
        sh.tell(s.config_id, 1, Q[int(s.config_id[1:])], 1.0)
    nxt = sh.ask()
    assert (nxt.config_id, nxt.epoch) == ("c1", 2)


@pytest.mark.parametrize("name", ["random", "sh", "asha", "hyperband"])
def test_a_state_from_other_max_epochs_is_refused(name):
    """The round trip itself is in the conformance suite (test_optimizer_conformance.py)."""
    a = make_optimizer(name, _pool(Q), 9, seed=5)
    s = a.ask()
    a.tell(s.config_id, s.epoch, 0.5, 1.0)
    with pytest.raises(ValueError):
        make_optimizer(name, _pool(Q), 5, seed=0).load_state_dict(json.loads(json.dumps(a.state_dict())))


def test_sampling_from_a_search_space():
    space = synthetic_space()
    opt = RandomSearch(space, 2, seed=0)
    seen = []
    for _ in range(20):
        s = opt.ask()
        space.validate(s.config)
        seen.append(s.config_id)
        opt.tell(s.config_id, s.epoch, 0.5, 1.0)
    assert len(set(seen)) == 10  # 10 configs x 2 epochs, never repeated
    state = json.loads(json.dumps(opt.state_dict()))
    other = RandomSearch(space, 2, seed=0)
    other.load_state_dict(state)
    assert opt.ask() == other.ask()
