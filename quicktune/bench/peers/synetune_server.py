"""Syne Tune 0.13.0 schedulers behind a JSON-lines ask/tell protocol on stdin/stdout.

Runs in its own virtualenv (``.venv-peers``: syne-tune 0.13.0 needs numpy < 2, which our stack
does not allow), so this file imports nothing from quicktune: only the standard library and
syne_tune. The parent (:mod:`quicktune.bench.peers.synetune_peer`) sends one JSON object per line:

- ``{"op": "init", "scheduler": NAME, "space": {...}, "configs": [[id, {hp: value}], ...],
  "max_epochs": R, "seed": S}`` — configs carry a value for *every* space parameter (the parent
  imputes inactive ones), so that they are points of the Syne Tune config space;
- ``{"op": "ask"}`` -> ``{"config_id": ..., "epoch": ...}`` or ``{"none": true}``;
- ``{"op": "tell", "config_id": ..., "epoch": ..., "score": ..., "status": ...}`` -> ``{"ok": true}``;
  ``init`` may carry ``"worst": W``, the score a failed epoch is reported as (below);
- ``{"op": "version"}`` -> ``{"version": "0.13.0"}`` (also pays the slow import once);
- ``{"op": "close"}``.
One process serves many runs one after another: each ``init`` replaces the previous scheduler.
Errors are answered as ``{"error": "..."}``.

Trials: every scheduler trial is bound to one table config. Searchers that support it get
``restrict_configurations`` (the table's configs, so they only ever propose table rows); DEHB
(evolution in an encoded space) proposes free points, which are bound to the nearest unused
config (same distance as the parent's :mod:`mapping`). A running trial is continued one epoch per
ask until the scheduler pauses or stops it, or it reaches ``max_epochs``; a paused trial may be
resumed by the scheduler's ``suggest`` (from its next epoch: the parent never charges an epoch twice).

A failed epoch (NaN score, or any status but ``ok``) is reported to the scheduler as the score
``worst`` (the harness sends the dataset's worst score; without it, the lowest score seen so far in
the run, else 0) and the trial goes on under the scheduler's control, as when Syne Tune is driven
directly: the scheduler pauses or stops what scores badly. Reporting it as a trial error instead
(what this server did before) ended the trial for good, and with it a config whose next epochs
are fine, and left a hole in the rung (fewer entries, fewer promotions).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import traceback
from datetime import datetime

SCHEDULERS = ("dyhpo", "mobster", "hypertune", "bohb", "dehb", "asha", "random")
METRIC, RESOURCE = "score", "epoch"


def _domain(p):
    from syne_tune.config_space import choice, lograndint, loguniform, randint, uniform

    if p["type"] == "categorical":
        return choice(list(range(len(p["choices"]))))  # indices: choices may mix types
    if p["type"] == "int":
        return (lograndint if p["log"] else randint)(int(p["low"]), int(p["high"]))
    return (loguniform if p["log"] else uniform)(float(p["low"]), float(p["high"]))


class Server:
    def __init__(self, msg):
        from syne_tune.optimizer import baselines as B

        self.max_epochs = int(msg["max_epochs"])
        self.params = msg["space"]
        self.ids = [c[0] for c in msg["configs"]]
        self.points = [c[1] for c in msg["configs"]]  # values encoded as for the config space
        self.name = msg["scheduler"]
        self.worst = msg.get("worst")  # what a failed epoch is reported as (None: the lowest seen so far)
        self.lowest = None
        seed = int(msg["seed"])
        space = {n: _domain(p) for n, p in self.params.items()}
        restrict = [dict(p) for p in self.points]
        common = dict(metric=METRIC, mode="max", resource_attr=RESOURCE, random_seed=seed)
        R = self.max_epochs
        so = {"restrict_configurations": restrict, "debug_log": False}
        if self.name == "random":
            # random search that trains each config to max_epochs (FIFO, no early stopping)
            self.sched = B.RandomSearch(
                space,
                metric=METRIC,
                mode="max",
                random_seed=seed,
                search_options={"restrict_configurations": restrict, "debug_log": False},
            )
        elif self.name == "asha":
            self.sched = B.ASHA(
                space, max_t=R, grace_period=1, reduction_factor=3, type="promotion", search_options=so, **common
            )
        elif self.name == "mobster":
            self.sched = B.MOBSTER(
                space, max_t=R, grace_period=1, reduction_factor=3, type="promotion", search_options=so, **common
            )
        elif self.name == "hypertune":
            self.sched = B.HyperTune(
                space, max_t=R, grace_period=1, reduction_factor=3, type="promotion", search_options=so, **common
            )
        elif self.name == "bohb":
            self.sched = B.BOHB(
                space, max_t=R, grace_period=1, reduction_factor=3, type="promotion", search_options=so, **common
            )
        elif self.name == "dyhpo":
            self.sched = B.DyHPO(space, max_t=R, grace_period=1, search_options=so, **common)
        elif self.name == "dehb":
            self.sched = B.DEHB(
                space,
                max_resource_level=R,
                grace_period=1,
                reduction_factor=3,
                metric=METRIC,
                mode="max",
                resource_attr=RESOURCE,
                random_seed=seed,
            )
        else:
            raise ValueError(f"unknown Syne Tune scheduler {self.name!r} (have {', '.join(SCHEDULERS)})")
        self.fifo = self.name == "random"
        self.trials = {}  # trial_id -> dict(trial, cid, epoch, state)
        self.running = []  # trial ids running, start order
        self.pending = {}  # cid -> trial id
        self.used = set()
        self.next_id = 0
        self._match = {self._key(p): cid for cid, p in zip(self.ids, self.points, strict=True)}

    def _key(self, config):
        parts = []
        for n, p in self.params.items():
            v = config.get(n)
            if p["type"] == "float" and v is not None:
                v = float(f"{float(v):.9g}")
            elif v is not None:
                v = int(v)
            parts.append(v)
        return json.dumps(parts)

    def _nearest(self, config):
        best, best_d = None, math.inf
        for cid, point in zip(self.ids, self.points, strict=True):
            if cid in self.used:
                continue
            d, n = 0.0, 0
            for name, p in self.params.items():
                if name not in config:
                    continue
                a, b = config[name], point[name]
                if p["type"] == "categorical":
                    d += float(int(a) != int(b))
                else:
                    lo, hi = float(p["low"]), float(p["high"])
                    if p["log"]:
                        a, b, lo, hi = math.log(a), math.log(b), math.log(lo), math.log(hi)
                    d += abs(float(a) - float(b)) / (hi - lo)
                n += 1
            d = d / max(n, 1)
            if d < best_d:
                best, best_d = cid, d
        return best

    def ask(self):
        from syne_tune.backend.trial_status import Trial

        for tid in self.running:
            t = self.trials[tid]
            if t["cid"] not in self.pending:
                return self._step(tid)
        for _ in range(len(self.ids) + 10):
            try:
                sug = self.sched.suggest(trial_id=self.next_id)
            except ValueError:
                # Syne Tune 0.13.0's DyHPO fails in suggest once restrict_configurations is used up
                # (small tables): nothing new can be proposed, so the run ends as exhausted.
                if len(self.used) >= len(self.ids):
                    return {"none": True}
                raise
            if sug is None:
                return {"none": True}
            if sug.spawn_new_trial_id:
                config = {k: v for k, v in sug.config.items() if k in self.params}
                cid = self._match.get(self._key(config))
                if cid is None or (cid in self.used and sug.checkpoint_trial_id is None):
                    cid = self._nearest(config)
                start = 0
                if sug.checkpoint_trial_id is not None and sug.checkpoint_trial_id in self.trials:
                    old = self.trials[sug.checkpoint_trial_id]
                    cid, start = old["cid"], old["epoch"]
                if cid is None:
                    # every table config has been used: nothing new can run, the run is over (telling
                    # the scheduler that the trial failed left DEHB's rung slot without a config, and its
                    # next mutation crashed with KeyError: None)
                    return {"none": True}
                trial = Trial(trial_id=self.next_id, config=sug.config, creation_time=datetime.now())
                self.next_id += 1
                if cid in self.pending:  # the only unused config left is running (several workers)
                    self.sched.on_trial_add(trial)
                    self.sched.on_trial_error(trial)
                    continue
                self.used.add(cid)
                self.trials[trial.trial_id] = {"trial": trial, "cid": cid, "epoch": start, "state": "running"}
                self.sched.on_trial_add(trial)
                self.running.append(trial.trial_id)
                return self._step(trial.trial_id)
            tid = sug.checkpoint_trial_id
            t = self.trials.get(tid)
            if t is None or t["state"] != "paused" or t["cid"] in self.pending:
                continue
            t["state"] = "running"
            self.running.append(tid)
            return self._step(tid)
        return {"none": True}

    def _step(self, tid):
        t = self.trials[tid]
        self.pending[t["cid"]] = tid
        return {"config_id": t["cid"], "epoch": t["epoch"] + 1}

    def tell(self, msg):
        from syne_tune.optimizer.scheduler import SchedulerDecision

        cid = msg["config_id"]
        tid = self.pending.pop(cid)
        t = self.trials[tid]
        epoch = int(msg["epoch"])
        t["epoch"] = epoch
        score = msg["score"]
        if msg["status"] != "ok" or score is None or not math.isfinite(score):
            score = self.worst if self.worst is not None else (self.lowest if self.lowest is not None else 0.0)
        elif self.lowest is None or score < self.lowest:
            self.lowest = float(score)
        result = {METRIC: float(score), RESOURCE: epoch}
        decision = self.sched.on_trial_result(t["trial"], result)
        if epoch >= self.max_epochs:
            self.sched.on_trial_complete(t["trial"], result)
            self._end(tid, "done")
        elif decision == SchedulerDecision.STOP:
            self._end(tid, "stopped")
        elif decision == SchedulerDecision.PAUSE:
            self._end(tid, "paused")

    def _end(self, tid, state):
        self.trials[tid]["state"] = state
        if tid in self.running:
            self.running.remove(tid)


def main():
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    for name in ("syne_tune", "syne_tune.optimizer"):
        logging.getLogger(name).setLevel(logging.ERROR)
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol
    server = None
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
            op = msg.get("op")
            if op == "version":
                import syne_tune
                import syne_tune.optimizer.baselines  # noqa: F401  (the slow import, done once per process)

                reply = {"version": syne_tune.__version__}
            elif op == "init":
                server = Server(msg)
                reply = {"ok": True}
            elif op == "ask":
                reply = server.ask()
            elif op == "tell":
                server.tell(msg)
                reply = {"ok": True}
            elif op == "close":
                out.write(json.dumps({"ok": True}) + "\n")
                out.flush()
                return
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # report, keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
