"""Quick-Tune: a meta-learned, cost-aware, freeze-thaw Bayesian optimizer (and DyHPO as its
ablation with meta-learning and cost-awareness off).

Each ``ask`` scores every candidate step in one argmax: every paused config at its next epoch and
every unseen config of the pool at epoch 1, by expected improvement over the best score seen at
that epoch (divided by the predicted cost of the step when cost-aware). The surrogate is a
deep-kernel GP (``surrogate.py``) that starts from meta-trained weights when ``meta=True``,
is refitted briefly (``refit_steps`` Adam steps, warm start) whenever new results arrived, and is
reset to its starting weights after a long stagnation of the incumbent.

Costs are kept low on purpose (the reference implementation spent seconds per iteration on
1,000-step refits): refits use at most ``fit_cap`` observations (the latest result of every
config first, then the most recent others, then a seeded random sample of the rest) and
predictions condition on at most ``predict_cap`` observations chosen the same way.

Pending steps (asked, not told) are never proposed again; for the other candidates they are
*fantasized*: added to the GP's conditioning set with their posterior mean as the outcome, which
shrinks the uncertainty around them so parallel workers spread out.

A meta-trained prior is only as good as the new task is like the meta-training tasks. So a
meta-trained search (``mixture=True``, the default) runs a second, non-meta surrogate beside it (the
one ``quicktune-nometa`` uses: its own encoding of the space, random initial weights) and predicts
with their *mixture*: weight ``w`` on the meta-trained one. ``w`` starts from the domain score of
``domain.domain_report`` (the artifact's meta-training domain vs this space, its models and this
dataset) and is updated like Bayesian model averaging from the predictive log-likelihood each
surrogate gave the observed epoch it was asked for (``mixture.py`` holds ``w`` and its rule). The
initial design follows the prior head with probability ``w`` and is random otherwise. Far from the
meta-training domain, or when the meta-trained surrogate mispredicts the first epochs, the search
behaves like ``quicktune-nometa``; in domain it keeps the meta-trained start.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load, save as st_save

from quicktune.optimizer.acquisition import acquisition
from quicktune.optimizer.artifact import MetaArtifact, default_artifact
from quicktune.optimizer.base import STATUSES, Optimizer, Suggestion
from quicktune.optimizer.cost import CostPredictor
from quicktune.optimizer.domain import DomainReport, domain_report
from quicktune.optimizer.encoding import DescriptorError, Schema, train_images
from quicktune.optimizer.mixture import PriorWeight, mix
from quicktune.optimizer.surrogate import Batch, DeepKernelGP, SurrogateConfig, make_batch
from quicktune.space import SearchSpace, config_id

log = logging.getLogger(__name__)

STATE_VERSION = 3  # 2: the cost model's physics term (a0, a1, model mask); 3: the mixture with the non-meta surrogate
#: learning rate of the non-meta surrogate (as ``quicktune-nometa``)
BASE_LEARNING_RATE = 1e-2


def _tensors_to_b64(state: Mapping[str, torch.Tensor]) -> str:
    return base64.b64encode(st_save({k: v.detach().contiguous().clone() for k, v in state.items()})).decode()


def _tensors_from_b64(blob: str) -> dict[str, torch.Tensor]:
    return st_load(base64.b64decode(blob))


def _clone_state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _fit_or_restart(
    model: DeepKernelGP,
    init: Mapping[str, torch.Tensor],
    batch: Batch,
    y: torch.Tensor,
    steps: int,
    restart_steps: int,
    lr: float,
) -> bool:
    """Fit ``model`` for ``steps``; on numerical trouble (a non-finite loss, a matrix that is not
    positive definite) restore ``init`` and try once more for ``restart_steps``. True when a fit
    ended with a finite loss; otherwise the model is left at ``init``."""
    for _attempt in range(2):
        try:
            if math.isfinite(model.fit(batch, y, steps=steps, lr=lr)):
                return True
        except Exception as exc:
            log.debug("surrogate fit failed: %s", exc)
        model.load_state_dict(init)
        steps = restart_steps
    return False


class QuickTune(Optimizer):
    """Ask/tell Quick-Tune. ``candidates``: a ``SearchSpace`` (a pool of ``n_candidates`` configs
    is sampled, unseen ones refreshed every ``refresh_every`` asks) or a list of
    ``(config_id, config)`` pairs (a finite pool, e.g. a table's configs)."""

    name = "quicktune"

    def __init__(
        self,
        candidates: SearchSpace | Sequence[tuple[str, Mapping[str, Any]]],
        max_epochs: int,
        seed: int = 0,
        *,
        meta: bool = True,
        cost_aware: bool = True,
        meta_features: Mapping[str, float] | None = None,
        artifact: MetaArtifact | str | Path | None = None,
        n_candidates: int = 256,
        refit_steps: int = 20,
        first_fit_steps: int = 50,
        learning_rate: float | None = None,
        cost_steps: int = 20,
        cost_learning_rate: float = 1e-2,
        fit_cap: int = 128,
        predict_cap: int = 512,
        refresh_every: int = 20,
        n_init: int = 2,
        init_top_k: int = 3,
        probability_sh: float = 0.0,
        sh_eta: int = 3,
        stagnation_patience: int | None = None,
        model_descriptors: Mapping[str, Mapping[str, float]] | None = None,
        mixture: bool = True,
        **ignored: Any,
    ):
        if int(max_epochs) < 1:
            raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
        if ignored:
            log.debug("QuickTune ignores options %s", sorted(ignored))
        self.max_epochs = int(max_epochs)
        self.seed = int(seed)
        self.cost_aware = bool(cost_aware)
        self.meta_features = dict(meta_features or {})
        self.n_candidates = int(n_candidates)
        self.refit_steps = int(refit_steps)
        self.first_fit_steps = int(first_fit_steps)
        self.cost_steps = int(cost_steps)
        self.cost_lr = float(cost_learning_rate)
        self.fit_cap = int(fit_cap)
        self.predict_cap = int(predict_cap)
        self.refresh_every = int(refresh_every)
        self.n_init = int(n_init)
        self.init_top_k = int(init_top_k)
        if not 0.0 <= float(probability_sh) < 1.0:
            raise ValueError(f"probability_sh must be in [0, 1), got {probability_sh}")
        if int(sh_eta) < 2:
            raise ValueError(f"sh_eta must be >= 2, got {sh_eta}")
        self.probability_sh = float(probability_sh)
        self.sh_eta = int(sh_eta)
        self.stagnation_patience = int(stagnation_patience or math.ceil(1.2 * self.max_epochs))

        # --- meta-trained starting point (or not)
        self.artifact: MetaArtifact | None = None
        if meta:
            if artifact is None:
                self.artifact = default_artifact()
                if self.artifact is None:
                    log.warning(
                        "meta=True but no artifact given and none shipped with the package: "
                        "searching without meta-learning"
                    )
            elif isinstance(artifact, MetaArtifact):
                self.artifact = artifact
            else:
                self.artifact = MetaArtifact.load(artifact)
        self.meta = self.artifact is not None
        self.learning_rate = float(learning_rate if learning_rate is not None else (1e-3 if self.meta else 1e-2))

        # --- candidate pool
        self.rng = np.random.default_rng(self.seed)
        self.space: SearchSpace | None = candidates if isinstance(candidates, SearchSpace) else None
        self.configs: dict[str, dict[str, Any]] = {}
        if isinstance(candidates, SearchSpace):
            for c in candidates.sample_many(self.n_candidates, self.rng):
                self.configs[config_id(c)] = c
        else:
            for raw_id, cfg in candidates:
                cid = str(raw_id)
                if cid in self.configs:
                    raise ValueError(f"duplicate config_id {cid!r} in candidates")
                self.configs[cid] = dict(cfg)
            if not self.configs:
                raise ValueError("no candidates")

        # --- encoding (the space's own schema: the non-meta surrogate's, and the domain report's)
        own_schema = (
            Schema.from_space(self.space, model_descriptors)
            if self.space is not None
            else Schema.from_configs(self.configs.values(), descriptors=model_descriptors)
        )
        self.domain: DomainReport | None = None
        if self.artifact is not None:
            self.schema = self.artifact.schema.with_descriptors(model_descriptors)
            self.meta_vec = self.artifact.meta_scaler.transform(self.meta_features)
            scfg = self.artifact.surrogate_config
        else:
            self.schema = own_schema
            self.meta_vec = np.zeros(0, dtype=np.float32)
            scfg = SurrogateConfig(hp_dim=self.schema.hp_dim, model_dim=self.schema.model_dim, meta_dim=0)
        missing = self.schema.missing_descriptors(self._candidate_models())
        if missing:
            raise DescriptorError(
                f"no descriptor for the model(s) {missing[:8]}: the meta-artifact encodes models by descriptor; "
                f"pass model_descriptors (quicktune.hub.descriptor_features) for the models it was not trained on"
            )
        if self.artifact is not None:
            self.domain = domain_report(
                self.artifact.schema,
                self.artifact.meta_scaler,
                own_schema,
                [str(m) for m in dict.fromkeys(self._candidate_models()) if m is not None],
                model_descriptors,
                self.meta_features,
            )
        n_images = train_images(self.meta_features)
        self.log_images = math.log(n_images) if n_images else None
        self._enc: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        # --- the non-meta surrogate of the mixture (meta-trained searches only)
        self.mixture = bool(mixture) and self.artifact is not None
        self.base_schema = own_schema
        self._enc_base: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        self.base_model: DeepKernelGP | None = None
        self._base_config = SurrogateConfig(hp_dim=own_schema.hp_dim, model_dim=own_schema.model_dim, meta_dim=0)
        self.weight = PriorWeight(self.domain.score if self.domain is not None else 1.0)
        self.base_fitted_obs = 0
        self.base_fitted_once = False

        # --- models, deterministically initialized without touching torch's global RNG
        self._surrogate_config = scfg
        self.model, self.cost_model = self._seeded_models(self.seed)
        if self.artifact is not None:
            self.model.load_state_dict(self.artifact.surrogate_state)
            self.cost_model.load_state_dict(self.artifact.cost_state)
        self._init_model = _clone_state(self.model)
        self._init_cost = _clone_state(self.cost_model)
        self._init_base: dict[str, torch.Tensor] = {}
        if self.mixture:
            self.base_model = self._seeded_base(self.seed)
            self._init_base = _clone_state(self.base_model)

        # --- search state
        self.curves: dict[str, list[float]] = {}
        self.costs: dict[str, list[float]] = {}
        self.pending: dict[str, int] = {}
        self.dead: set[str] = set()
        self.obs_log: list[tuple[str, int]] = []  # (config_id, epoch) of finite observations, in order
        self.best = -math.inf
        self.best_at_epoch: dict[int, float] = {}
        self.stagnation = 0
        self.n_asks = 0
        self.fitted_obs = 0  # len(obs_log) at the last surrogate fit
        self.fitted_once = False
        self.cost_fitted = 0  # number of cost observations at the last cost fit
        self.n_resets = 0

    # ------------------------------------------------------------------------------------------
    # helpers
    def _candidate_models(self) -> list[Any]:
        """Every model the candidates can name (the space's model choices, or the pool's values)."""
        if self.schema.model is None:
            return []
        if self.space is not None:
            for p in self.space.params:
                if p.name == self.schema.model.name and p.choices:
                    return list(p.choices)
        return [c.get(self.schema.model.name) for c in self.configs.values()]

    def _encode(self, ids: Sequence[str], base: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        schema, enc = (self.base_schema, self._enc_base) if base else (self.schema, self._enc)
        missing = [i for i in ids if i not in enc]
        if missing:
            cfgs = [self.configs[i] for i in missing]
            X, M = schema.encode(cfgs)
            G = schema.log_gmacs(cfgs)
            for k, i in enumerate(missing):
                enc[i] = (X[k], M[k], float(G[k]))
        X = np.stack([enc[i][0] for i in ids]) if ids else np.zeros((0, schema.hp_dim), np.float32)
        M = np.stack([enc[i][1] for i in ids]) if ids else np.zeros((0, schema.model_dim), np.float32)
        G = np.asarray([enc[i][2] for i in ids], dtype=np.float64)
        return X, M, G

    def _batch(
        self,
        ids: Sequence[str],
        epochs: Sequence[int],
        curves: Sequence[Sequence[float]] | None = None,
        zero_curves: bool = False,
        base: bool = False,
    ) -> Batch:
        X, M, G = self._encode(ids, base)
        if zero_curves:
            curves = [[] for _ in ids]
        elif curves is None:
            curves = [self.curves.get(i, [])[: e - 1] for i, e in zip(ids, epochs, strict=True)]
        meta_vec = np.zeros(0, dtype=np.float32) if base else self.meta_vec
        meta = np.tile(meta_vec[None, :], (len(ids), 1))
        return make_batch(X, M, np.asarray(epochs), list(curves), meta, self.max_epochs, G, self.log_images)

    def _alive(self, cid: str) -> bool:
        return cid not in self.dead and len(self.curves.get(cid, [])) < self.max_epochs

    def _candidates(self) -> list[tuple[str, int]]:
        out = []
        for cid in self.configs:
            if cid in self.pending or not self._alive(cid):
                continue
            out.append((cid, len(self.curves.get(cid, [])) + 1))
        return out

    def _select(self, n_total: int, cap: int) -> np.ndarray:
        """Indices into ``obs_log`` to use when there are more than ``cap``: the latest observation
        of every config, then the most recent others, then a seeded random sample of the rest."""
        if n_total <= cap:
            return np.arange(n_total)
        last: dict[str, int] = {}
        for k, (cid, _) in enumerate(self.obs_log):
            last[cid] = k
        chosen = sorted(last.values(), reverse=True)[:cap]
        taken = set(chosen)
        rest = [k for k in range(n_total - 1, -1, -1) if k not in taken]
        n_recent = max(0, (cap - len(chosen)) // 2)
        chosen += rest[:n_recent]
        older = rest[n_recent:]
        n_rand = cap - len(chosen)
        if n_rand > 0 and older:
            chosen += [older[i] for i in self.rng.choice(len(older), size=min(n_rand, len(older)), replace=False)]
        return np.sort(np.asarray(chosen, dtype=np.int64))

    def _train_data(self, idx: np.ndarray, base: bool = False) -> tuple[Batch, torch.Tensor]:
        obs = [self.obs_log[k] for k in idx]
        ids = [cid for cid, _ in obs]
        eps = [e for _, e in obs]
        y = torch.tensor([self.curves[cid][e - 1] for cid, e in obs], dtype=torch.float32)
        return self._batch(ids, eps, base=base), y

    def _seeded_models(self, seed: int) -> tuple[DeepKernelGP, CostPredictor]:
        """Freshly initialized models; the weights depend only on ``seed``."""
        scfg = self._surrogate_config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mask = self.schema.model.cost_mask() if self.schema.model is not None else None
            return DeepKernelGP(scfg), CostPredictor(scfg.hp_dim, scfg.model_dim, scfg.meta_dim, model_mask=mask)

    def _seeded_base(self, seed: int) -> DeepKernelGP:
        """The mixture's non-meta surrogate, freshly initialized (weights depend only on ``seed``)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return DeepKernelGP(self._base_config)

    @property
    def prior_weight(self) -> float:
        """The mixture weight of the meta-trained surrogate (1 without a mixture, 0 without meta-training)."""
        if not self.meta:
            return 0.0
        if not self.mixture:
            return 1.0
        return self.weight.value

    def _reset_models(self) -> None:
        self.model.load_state_dict(self._init_model)
        self.cost_model.load_state_dict(self._init_cost)
        self.fitted_once = False
        self.cost_fitted = 0
        self.n_resets += 1
        if self.base_model is not None:
            self.base_model.load_state_dict(self._init_base)
            self.base_fitted_once = False

    def _fit_surrogate(self) -> bool:
        n = len(self.obs_log)
        if n == self.fitted_obs and self.fitted_once:
            return True
        batch, y = self._train_data(self._select(n, self.fit_cap))
        steps = self.refit_steps if (self.fitted_once or self.meta) else self.first_fit_steps
        self.fitted_obs = n
        if _fit_or_restart(self.model, self._init_model, batch, y, steps, self.first_fit_steps, self.learning_rate):
            self.fitted_once = True
            return True
        return False

    def _fit_base(self) -> bool:
        """Fit the mixture's non-meta surrogate like ``quicktune-nometa`` fits its own."""
        assert self.base_model is not None
        n = len(self.obs_log)
        if n == self.base_fitted_obs and self.base_fitted_once:
            return True
        batch, y = self._train_data(self._select(n, self.fit_cap), base=True)
        steps = self.refit_steps if self.base_fitted_once else self.first_fit_steps
        self.base_fitted_obs = n
        if _fit_or_restart(self.base_model, self._init_base, batch, y, steps, self.first_fit_steps, BASE_LEARNING_RATE):
            self.base_fitted_once = True
            return True
        return False

    def _posterior(
        self, model: DeepKernelGP, idx: np.ndarray, ids: list[str], eps: list[int], base: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and std of ``model`` at the candidates, pending steps fantasized."""
        train, y = self._train_data(idx, base)
        test = self._batch(ids, eps, base=base)
        if self.pending:
            p_ids = list(self.pending)
            p_eps = [self.pending[c] for c in p_ids]
            pb = self._batch(p_ids, p_eps, base=base)
            p_mean, _ = model.predict(train, y, pb)
            train = Batch.cat([train, pb])
            y = torch.cat([y, torch.as_tensor(p_mean, dtype=torch.float32)])
        return model.predict(train, y, test)

    def _cost_obs(self) -> tuple[list[str], list[int], list[float]]:
        ids, eps, cs = [], [], []
        for cid, e in self.obs_log:
            c = self.costs[cid][e - 1]
            if math.isfinite(c):
                ids.append(cid)
                eps.append(e)
                cs.append(c)
        return ids, eps, cs

    def _fit_cost(self) -> None:
        ids, eps, cs = self._cost_obs()
        if len(cs) == self.cost_fitted or len(cs) < 2:
            return
        if len(cs) > self.fit_cap:
            ids, eps, cs = ids[-self.fit_cap :], eps[-self.fit_cap :], cs[-self.fit_cap :]
        b = self._batch(ids, eps)
        if not self.meta and self.cost_fitted == 0:
            # start from the observed mean log-cost, not from 0 s
            self.cost_model.start_at(float(np.mean(np.log(np.maximum(cs, 1e-3)))), b)
        self.cost_model.fit(b, np.asarray(cs), steps=self.cost_steps, lr=self.cost_lr)
        self.cost_fitted = len(self._cost_obs()[2])

    def _predicted_cost(self, batch: Batch) -> np.ndarray | None:
        if not self.cost_aware:
            return None
        if not self.meta and self.cost_fitted < 2:
            return None  # nothing known about costs yet: plain EI
        return self.cost_model.predict(batch)

    def _refresh_pool(self) -> None:
        if self.space is None or self.refresh_every <= 0 or self.n_asks == 0 or self.n_asks % self.refresh_every:
            return
        keep = {cid: c for cid, c in self.configs.items() if cid in self.curves or cid in self.pending}
        n_fixed = len(keep)
        for c in self.space.sample_many(self.n_candidates, self.rng):
            if len(keep) - n_fixed >= self.n_candidates:
                break
            keep.setdefault(config_id(c), c)
        self.configs = keep
        self._enc = {k: v for k, v in self._enc.items() if k in keep}
        self._enc_base = {k: v for k, v in self._enc_base.items() if k in keep}

    def explain_prior(self, config_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """What the optimizer believes before any observation: the prior head's predicted final score
        (what the initial design ranks by) and the predicted seconds of the first epoch, per config."""
        ids = [str(i) for i in config_ids]
        unknown = [i for i in ids if i not in self.configs]
        if unknown:
            raise ValueError(f"explain_prior: unknown config ids {unknown[:5]}")
        score = np.asarray(
            self.model.prior_predict(self._batch(ids, [self.max_epochs] * len(ids), zero_curves=True)), np.float64
        )
        return score, self.cost_model.predict(self._batch(ids, [1] * len(ids), zero_curves=True))

    # ------------------------------------------------------------------------------------------
    # ask / tell
    def ask(self) -> Suggestion | None:
        self._refresh_pool()
        cands = self._candidates()
        if not cands:
            return None
        self.n_asks += 1
        choice = self._choose(cands)
        cid, epoch = cands[choice]
        self.pending[cid] = epoch
        return Suggestion(cid, dict(self.configs[cid]), epoch)

    def _choose(self, cands: list[tuple[str, int]]) -> int:
        if len(self.obs_log) < self.n_init:
            return self._initial_design(cands)
        promoted = self._sh_promotion(cands)
        if promoted is not None:
            return promoted
        if self.cost_aware:
            self._fit_cost()
        if not self._fit_surrogate():
            return int(self.rng.integers(len(cands)))
        base_ok = self.base_model is not None and self._fit_base()
        idx = self._select(len(self.obs_log), self.predict_cap)
        ids = [c for c, _ in cands]
        eps = [e for _, e in cands]
        test = self._batch(ids, eps)
        try:
            mean, std = self._posterior(self.model, idx, ids, eps, base=False)
        except Exception as exc:
            log.debug("prediction failed (%s): resetting the surrogate", exc)
            self._reset_models()
            return int(self.rng.integers(len(cands)))
        base_pred: tuple[np.ndarray, np.ndarray] | None = None
        if base_ok and self.base_model is not None:
            try:
                base_pred = self._posterior(self.base_model, idx, ids, eps, base=True)
            except Exception as exc:
                log.debug("non-meta prediction failed (%s): resetting it", exc)
                self.base_model.load_state_dict(self._init_base)
                self.base_fitted_once = False
        m_meta, s_meta = mean, std
        if base_pred is not None:
            mean, std = mix(self.prior_weight, m_meta, s_meta, *base_pred)
        best = self.best if math.isfinite(self.best) else float(np.max(mean))
        acq = acquisition(mean, std, np.asarray(eps), self.best_at_epoch, best, self._predicted_cost(test))
        if not np.all(np.isfinite(acq)):
            acq = np.nan_to_num(acq, nan=-1.0)
        choice = int(np.argmax(acq))
        if base_pred is not None and self.base_model is not None:
            # what each surrogate predicts for the observation (latent sd + its noise): the weight's evidence
            n1 = float(self.model.likelihood.noise.detach().reshape(-1)[0])
            n2 = float(self.base_model.likelihood.noise.detach().reshape(-1)[0])
            self.weight.predict(
                ids[choice],
                eps[choice],
                m_meta[choice],
                math.sqrt(float(s_meta[choice]) ** 2 + n1),
                base_pred[0][choice],
                math.sqrt(float(base_pred[1][choice]) ** 2 + n2),
            )
        return choice

    def _sh_promotion(self, cands: list[tuple[str, int]]) -> int | None:
        """With probability ``probability_sh`` (0: never, the default), the successive-halving
        promotion rule before the acquisition, as Syne Tune's DyHPO scheduler does (its
        ``probability_sh``, 0.25 there; "not contained in the paper"): a paused config whose score at
        its last epoch L is among the top ``len(scores at L) // sh_eta`` scores any config reached
        at epoch L is continued (the highest L first, then the best score); when none is
        promotable, the acquisition decides. Why it exists here: an ablation, to test whether this
        rule is what puts Syne Tune's DyHPO ahead of ``quicktune-nometa`` early on MedQuickTune
        (docs/reports/2026-12-03-issue14-targets.md). No random number is drawn when it is off, so
        the default searches are unchanged."""
        if self.probability_sh <= 0.0 or float(self.rng.random()) >= self.probability_sh:
            return None
        best: tuple[tuple[int, float], int] | None = None
        for k, (cid, epoch) in enumerate(cands):
            level = epoch - 1
            curve = self.curves.get(cid, [])
            if level < 1 or len(curve) != level or not math.isfinite(curve[-1]):
                continue
            at_level = sorted(
                (c[level - 1] for c in self.curves.values() if len(c) >= level and math.isfinite(c[level - 1])),
                reverse=True,
            )
            n_top = len(at_level) // self.sh_eta
            if n_top < 1 or curve[-1] < at_level[n_top - 1]:
                continue
            key = (level, float(curve[-1]))
            if best is None or key > best[0]:
                best = (key, k)
        return None if best is None else best[1]

    def _initial_design(self, cands: list[tuple[str, int]]) -> int:
        """Before the GP has ``n_init`` observations: a seeded pick among the ``init_top_k`` unseen
        configs the meta-trained prior ranks first (meta), or a random unseen config (no meta).
        Picking among the top few rather than the argmax keeps the prior's judgement but lets
        different seeds make different searches (with the argmax every seed replays the same search
        on a finite pool, so seed averages would be one run). How the prior ranks: ``design_order``."""
        unseen = [k for k, (cid, e) in enumerate(cands) if e == 1]
        pool = unseen or list(range(len(cands)))
        if not self.meta:
            return int(pool[int(self.rng.integers(len(pool)))])
        if self.mixture and float(self.rng.random()) >= self.prior_weight:
            return int(pool[int(self.rng.integers(len(pool)))])  # the non-meta start, with probability 1 - w
        ids = [cands[k][0] for k in pool]
        order = self.design_order(ids)
        top = order[: max(1, min(self.init_top_k, len(pool)))]
        return int(pool[int(top[int(self.rng.integers(len(top)))])])

    def design_order(self, ids: Sequence[str]) -> np.ndarray:
        """The initial design's ranking of unseen configs ``ids`` (indices into ``ids``, best first).

        Without cost-awareness: by the prior's predicted final score. Cost-aware (the default): by the
        predicted gain over the median config of the pool per predicted second of the first epoch --
        the acquisition's "improvement per cost" before anything is observed -- for the configs
        predicted above the median, then the others by predicted score. Why: the first epochs are
        probes that mostly inform the surrogate; ranking them by score alone spent 4.7 % of the
        budget on a single first epoch on MedQuickTune's desmoid (the prior liked its largest
        models), against 0.9 % for the non-meta start, and lost the early phase there
        (docs/reports/2026-12-03-issue14-targets.md)."""
        b = self._batch(ids, [self.max_epochs] * len(ids), zero_curves=True)
        pred = np.asarray(self.model.prior_predict(b), dtype=np.float64)
        by_score = np.argsort(-pred, kind="stable")
        if not self.cost_aware or len(ids) < 2:
            return by_score
        cost = self.cost_model.predict(self._batch(ids, [1] * len(ids), zero_curves=True))
        gain = pred - float(np.median(pred))
        above = [int(i) for i in by_score if gain[i] > 0]
        above.sort(key=lambda i: -gain[i] / cost[i])  # stable: ties keep the score order
        rest = [int(i) for i in by_score if gain[i] <= 0]
        return np.asarray(above + rest, dtype=np.int64)

    def tell(self, config_id: str, epoch: int, score: float, cost: float, status: str = "ok") -> None:
        cid = str(config_id)
        if cid not in self.configs:
            raise ValueError(f"tell: unknown config_id {cid!r}")
        if status not in STATUSES:
            raise ValueError(f"tell: status must be one of {STATUSES}, got {status!r}")
        curve = self.curves.setdefault(cid, [])
        expected = len(curve) + 1
        if int(epoch) != expected:
            raise ValueError(f"tell: config {cid!r} expects epoch {expected}, got {epoch}")
        if self.pending.get(cid) == int(epoch):
            del self.pending[cid]
        score = float(score) if score is not None else float("nan")
        if status == "ok":
            self.weight.observe(cid, int(epoch), score)
        else:
            self.weight.forget(cid)
        cost = float(cost) if cost is not None else float("nan")
        curve.append(score)
        self.costs.setdefault(cid, []).append(cost)
        if status != "ok" or not math.isfinite(score):
            self.dead.add(cid)
            return
        self.obs_log.append((cid, int(epoch)))
        e = int(epoch)
        if score > self.best_at_epoch.get(e, -math.inf):
            self.best_at_epoch[e] = score
        if score > self.best:
            self.best = score
            self.stagnation = 0
        else:
            self.stagnation += 1
            if self.stagnation >= self.stagnation_patience:
                log.info("no improvement for %d observations: resetting the surrogate", self.stagnation)
                self._reset_models()
                self.stagnation = 0

    # ------------------------------------------------------------------------------------------
    # persistence
    def state_dict(self) -> dict[str, Any]:
        def _f(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "version": STATE_VERSION,
            "name": self.name,
            "seed": self.seed,  # the weights a reset returns to (without an artifact) come from it
            "rng": self.rng.bit_generator.state,
            "configs": [[cid, c] for cid, c in self.configs.items()] if self.space is not None else None,
            "curves": {k: [_f(v) for v in vs] for k, vs in self.curves.items()},
            "costs": {k: [_f(v) for v in vs] for k, vs in self.costs.items()},
            "pending": dict(self.pending),
            "dead": sorted(self.dead),
            "obs_log": [[c, e] for c, e in self.obs_log],
            "best": _f(self.best),
            "best_at_epoch": {str(k): v for k, v in self.best_at_epoch.items()},
            "stagnation": self.stagnation,
            "n_asks": self.n_asks,
            "fitted_obs": self.fitted_obs,
            "fitted_once": self.fitted_once,
            "cost_fitted": self.cost_fitted,
            "n_resets": self.n_resets,
            "surrogate": _tensors_to_b64(self.model.state_dict()),
            "cost_model": _tensors_to_b64(self.cost_model.state_dict()),
            "mixture": None
            if self.base_model is None
            else {
                **self.weight.state(),
                "base_fitted_obs": self.base_fitted_obs,
                "base_fitted_once": self.base_fitted_once,
                "base": _tensors_to_b64(self.base_model.state_dict()),
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") not in (2, STATE_VERSION):
            raise ValueError(f"optimizer state version {state.get('version')!r}, expected {STATE_VERSION}")

        def _u(x: float | None) -> float:
            return float("nan") if x is None else float(x)

        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        self.rng = rng
        if state.get("configs") is not None:
            self.configs = {cid: dict(c) for cid, c in state["configs"]}
            self._enc, self._enc_base = {}, {}
        self.curves = {k: [_u(v) for v in vs] for k, vs in state["curves"].items()}
        self.costs = {k: [_u(v) for v in vs] for k, vs in state["costs"].items()}
        unknown = set(self.curves) - set(self.configs)
        if unknown:
            raise ValueError(f"optimizer state refers to configs not in the candidates: {sorted(unknown)[:5]}")
        self.pending = {k: int(v) for k, v in state["pending"].items()}
        self.dead = set(state["dead"])
        self.obs_log = [(c, int(e)) for c, e in state["obs_log"]]
        self.best = -math.inf if state["best"] is None else float(state["best"])
        self.best_at_epoch = {int(k): float(v) for k, v in state["best_at_epoch"].items()}
        self.stagnation = int(state["stagnation"])
        self.n_asks = int(state["n_asks"])
        self.fitted_obs = int(state["fitted_obs"])
        self.fitted_once = bool(state["fitted_once"])
        self.cost_fitted = int(state["cost_fitted"])
        self.n_resets = int(state.get("n_resets", 0))
        seed = state.get("seed")  # absent in states written before it was recorded
        if seed is not None and int(seed) != self.seed:
            # a stagnation reset must return to the weights of the search that wrote the state
            self.seed = int(seed)
            if self.artifact is None:
                model, cost_model = self._seeded_models(self.seed)
                self._init_model, self._init_cost = _clone_state(model), _clone_state(cost_model)
            if self.base_model is not None:
                self._init_base = _clone_state(self._seeded_base(self.seed))
        self.model.load_state_dict(_tensors_from_b64(state["surrogate"]))
        self.cost_model.load_state_dict(_tensors_from_b64(state["cost_model"]))
        mixed = state.get("mixture")  # None: no mixture, or a version-2 state (the mixture starts afresh)
        if self.base_model is not None:
            if mixed is not None:
                self.weight.load(mixed)
                self.base_fitted_obs = int(mixed["base_fitted_obs"])
                self.base_fitted_once = bool(mixed["base_fitted_once"])
                self.base_model.load_state_dict(_tensors_from_b64(mixed["base"]))
            else:
                self.base_model.load_state_dict(self._init_base)
                self.base_fitted_obs, self.base_fitted_once = 0, False
                self.weight.restart()
        elif mixed is not None:
            raise ValueError("optimizer state has a mixture with a non-meta surrogate; this optimizer has none")
