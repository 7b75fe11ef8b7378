"""Open a search: create it, or resume it from what MLflow recorded.

MLflow always holds enough to continue after a ``kill -9`` at any point (see
:mod:`quicktune.search.loop` for the order of writes that guarantees it):

- the newest optimizer snapshot, plus the recorded results told after it (``tell_seq`` greater
  than the snapshot's), rebuild the optimizer exactly (replay happens in ``tell_seq`` order);
- every started step was asked before the newest snapshot, which lists it as in flight: on resume
  it is polled in the backend and re-adopted if running, collected if it finished while the
  controller was dead (the race "RESULT.json written, not logged"), started if it never was;
- a result is logged only for epochs not recorded yet, so no epoch is recorded (or trained) twice.

A resume is refused before anything is written when the search would change what it searches
(:data:`~quicktune.search.spec.IDENTITY_FIELDS`) or the data under it changed (fingerprint).
"""

from __future__ import annotations

import logging
import time

from quicktune.backends.base import CANCELLED, step_id
from quicktune.optimizer.registry import make_optimizer, uses_meta_artifact, uses_model_descriptors
from quicktune.search import inputs
from quicktune.search.session import InFlight, SearchState
from quicktune.search.spec import SearchError
from quicktune.space import SearchSpace, load_space
from quicktune.tracking.registry import is_models_uri
from quicktune.tracking.schema import (
    ARTIFACT_DOMAIN_REPORT,
    METRIC_ELAPSED,
    METRIC_STEP_OVERHEAD,
    TAG_CHECKPOINT_URI,
    TAG_DOMAIN_FLAGS,
    TAG_DOMAIN_SCORE,
    TAG_DOMAIN_VERDICT,
    TAG_FINGERPRINT,
    TAG_META_ARTIFACT,
    TAG_META_ARTIFACT_TABLE_HASH,
    TAG_META_ARTIFACT_VERSION,
    TAG_RESUMES,
)
from quicktune.tracking.secrets import safe_uri

log = logging.getLogger(__name__)


def space_descriptors(space: SearchSpace, image_size: int | None) -> dict[str, dict[str, float]]:
    """The descriptor features of every model of ``space`` (``quicktune.hub.descriptor``), at the search's
    ``image_size`` or, when the step picks it (None), at each model's native input size (what a GPU step
    trains at). A model neither the catalogue nor timm knows is a SearchError."""
    from quicktune.hub import HubError, descriptor_features

    models = [str(c) for p in space.params if p.name == space.model_param for c in (p.choices or [])]
    try:
        return descriptor_features(models, image_size)
    except HubError as exc:
        raise SearchError(f"space {space.name!r}: {exc}") from exc


def open_search(s: SearchState) -> None:
    """Check the inputs, then create the search's parent run or resume it (optimizer rebuilt, steps
    in flight reconciled with the backend). Raises :class:`SearchError` before anything is created
    or launched when an input is wrong."""
    spec = s.spec
    tr = s.tracker
    tr.check_reachable()  # a server that is not there: seconds, not the 2 min of retries
    inputs.check_checkpoint_location(spec, s.backend, tr)
    s.backend.warm_up()  # e.g. the local fork server's imports, while MLflow and the dataset are read
    options = dict(spec.optimizer_options)  # checked before anything is created
    meta_version = ""  # the registry version behind a models:/ artifact
    registry_uri = inputs.registry_uri_of(tr)
    if spec.meta_artifact:
        if not uses_meta_artifact(s.optimizer_name):
            raise SearchError(
                f"--meta-artifact is for the meta-learned optimizers (quicktune, "
                f"quicktune-nocost); {s.optimizer_name!r} does not use one"
            )
        if not is_models_uri(spec.meta_artifact):
            options["artifact"] = inputs.fetch_meta_artifact(spec.meta_artifact, spec.workdir)
    existing = tr.find_search(spec.search_id)
    meta_source = safe_uri(spec.meta_artifact) if spec.meta_artifact else "shipped"
    pinned = None  # a resume keeps the registry version it started on (an alias may have moved since)
    if existing is not None:
        rec_source = existing.data.tags.get(TAG_META_ARTIFACT, "")
        rec_version = existing.data.tags.get(TAG_META_ARTIFACT_VERSION, "")
        if is_models_uri(rec_source) and rec_version.isdigit():
            pinned = f"{rec_source.split('@', 1)[0]}/{rec_version}" if "@" in rec_source else rec_source
    if spec.meta_artifact and is_models_uri(spec.meta_artifact):
        options["artifact"], meta_version = inputs.fetch_registered_artifact(
            pinned or spec.meta_artifact, spec.workdir, registry_uri
        )
    if not spec.meta_artifact and "artifact" not in options and uses_meta_artifact(s.optimizer_name):
        # no artifact asked for: the team's champion when there is one
        if existing is None or pinned:
            found = inputs.registry_default_artifact(spec.workdir, registry_uri, pinned=pinned)
            if found is not None:
                options["artifact"], meta_source, meta_version = found
    if existing is None:
        s.space = load_space(spec.space)
        inputs.check_space(s.space)
        meta, fingerprint = inputs.open_data(spec)
        s.meta_features = meta
        spec_doc = {**spec.to_dict(), "space_def": s.space.to_dict(), "meta_features": s.meta_features}
        s.parent = tr.open_search(spec.search_id, spec_doc)
        tr.set_tags(s.parent.run_id, {TAG_FINGERPRINT: fingerprint})
        if spec.checkpoint_uri:
            tr.set_tags(s.parent.run_id, {TAG_CHECKPOINT_URI: safe_uri(spec.checkpoint_uri)})
    else:
        stored = tr.spec(existing.info.run_id)
        if stored is None:
            raise SearchError(
                f"search {spec.search_id!r} exists (run {existing.info.run_id}) but has no "
                f"spec.json artifact; cannot resume it"
            )
        recorded = existing.data.tags.get(TAG_FINGERPRINT)
        inputs.check_identity(spec, stored, compare_data_uri=not recorded)
        fresh_meta, fingerprint = inputs.open_data(spec)
        if recorded and fingerprint != recorded:  # refused before anything is written or launched
            raise SearchError(inputs.data_changed(spec, stored, fresh_meta, recorded, fingerprint))
        s.space = SearchSpace.from_dict(stored["space_def"], source=f"search {spec.search_id} spec.json")
        s.meta_features = {k: float(v) for k, v in stored.get("meta_features", {}).items()}
        s.parent = tr.open_search(spec.search_id, stored)
        s.elapsed_before = float(s.parent.metrics.get(METRIC_ELAPSED, 0.0))
        s.resumes = int(float(s.parent.tags.get(TAG_RESUMES, "0") or 0)) + 1
        tr.set_tags(s.parent.run_id, {TAG_RESUMES: str(s.resumes)})
    if uses_model_descriptors(s.optimizer_name):
        options.setdefault("model_descriptors", space_descriptors(s.space, spec.image_size))
    s.opt = make_optimizer(
        s.optimizer_name, s.space, spec.max_epochs, seed=spec.seed, meta_features=s.meta_features, **options
    )
    art = getattr(s.opt, "artifact", None)
    if existing is None and art is not None:  # which meta-data informed this search
        tags = {TAG_META_ARTIFACT: meta_source, TAG_META_ARTIFACT_TABLE_HASH: str(art.table_hash)}
        if meta_version:
            tags[TAG_META_ARTIFACT_VERSION] = meta_version
        tr.set_tags(s.parent.run_id, tags)
    record_domain(s)
    if existing is not None:
        rebuild(s)


#: MLflow tag values are limited to 5,000 characters; the flags are a short summary, the JSON has it all
_FLAGS_MAX = 1000


def record_domain(s: SearchState) -> None:
    """The artifact's domain report (quicktune.optimizer.domain): one line in the log every session; on
    the parent run (``domain_report.json``, then the tags) once: a session killed between the two
    writes leaves no score tag, and the next one records both."""
    report = getattr(s.opt, "domain", None)
    if report is None or s.parent is None:
        return
    log.info("search %s: meta-artifact %s", s.spec.search_id, report.summary())
    if s.parent.tags.get(TAG_DOMAIN_SCORE):
        return
    flags = ",".join(report.flags())
    s.tracker.log_json(s.parent.run_id, report.to_json(), ARTIFACT_DOMAIN_REPORT)
    s.tracker.set_tags(
        s.parent.run_id,
        {
            TAG_DOMAIN_SCORE: f"{report.score:.3f}",
            TAG_DOMAIN_VERDICT: report.verdict,
            TAG_DOMAIN_FLAGS: flags if len(flags) <= _FLAGS_MAX else flags[: _FLAGS_MAX - 3] + "...",
        },
    )


def rebuild(s: SearchState) -> None:
    """Optimizer = newest snapshot + recorded results told after it; then reconcile steps in flight."""
    assert s.parent is not None and s.opt is not None
    search_id = s.spec.search_id
    s.records = s.tracker.load_configs(s.parent.run_id)
    observations = sorted((o for r in s.records.values() for o in r.observations()), key=lambda o: o.seq)
    seqs = [o.seq for o in observations]
    if len(set(seqs)) != len(seqs):
        raise SearchError(f"search {search_id!r}: duplicate tell_seq numbers in MLflow; the record is inconsistent")
    s.next_seq = (max(seqs) + 1) if seqs else 1
    s.cost_total = sum(m.get("cost", 0.0) for r in s.records.values() for m in r.epochs.values())
    s.step_overheads = [v for _, v, _ in s.tracker.metric_history(s.parent.run_id, METRIC_STEP_OVERHEAD)]
    snap = s.tracker.load_optimizer_state(s.parent.run_id)
    inflight_keys: list[tuple[str, int]] = []
    told_after = observations
    if snap is not None:
        s.generation = int(snap["generation"])
        try:
            s.opt.load_state_dict(snap["state"])
        except Exception as exc:
            raise SearchError(
                f"search {search_id!r}: the saved optimizer state does not fit optimizer {s.optimizer_name!r}: {exc}"
            ) from exc
        told_after = [o for o in observations if o.seq > int(snap["seq"])]
        covered = len(observations) - len(told_after)
        if "observations" in snap and covered != int(snap["observations"]):
            raise SearchError(
                f"search {search_id!r}: the optimizer snapshot covers "
                f"{snap['observations']} observations but MLflow records {covered} up to "
                f"tell_seq {snap['seq']}; the record is inconsistent"
            )
        inflight_keys = [(str(c), int(e)) for c, e in snap.get("inflight", [])]
    elif observations:
        log.warning("search %s: no optimizer snapshot; replaying all %d observations", search_id, len(observations))
    for o in told_after:
        try:
            s.opt.tell(o.config_id, o.epoch, o.score, o.cost, o.status)
        except Exception as exc:
            raise SearchError(
                f"search {search_id!r}: cannot replay observation #{o.seq} "
                f"({o.config_id} epoch {o.epoch}) into the optimizer: {exc}"
            ) from exc
    told = {(o.config_id, o.epoch) for o in observations}
    expected = {k for k in inflight_keys if k not in told}
    # pending marks without a snapshot entry were never started: forget them; runs that never
    # trained and that the snapshot does not list are leftovers of a session killed between
    # creating a run and saving the snapshot: delete them (the optimizer may ask again)
    wanted = {cid for cid, _ in expected}
    for rec in s.records.values():
        if (
            rec.pending_epoch is not None
            and (rec.config_id, rec.pending_epoch) not in expected
            and (rec.epochs or rec.dead)
        ):
            s.tracker.mark_pending(rec, None)
    gone = s.tracker.delete_untrained(s.records, keep=wanted)
    if gone:
        log.info("resume: deleted %d run(s) of configs that were never trained: %s", len(gone), gone)
    configs = snap.get("inflight_configs", {}) if snap is not None else {}
    now = time.monotonic()
    for cid, epoch in sorted(expected):
        found = s.records.get(cid)
        if found is None and isinstance(configs.get(cid), dict):  # its untrained run was deleted at the end
            found = s.record_for(cid, configs[cid])
        if found is None:
            raise SearchError(
                f"search {search_id!r}: the optimizer snapshot lists a step for config {cid} which has no run in MLflow"
            )
        rec = found
        req = s.request(rec, epoch)
        fl = InFlight(cid, epoch, req, started=now)
        try:
            s.pool.track((cid, epoch), req)
            state = s.pool.poll((cid, epoch))
            log.info("resume: step %s (%s epoch %d) is %s in the backend: re-adopted", req.id, cid, epoch, state.state)
            if state.state == CANCELLED:
                fl.retry_at = now  # cancelled when the last session ended: run it again
        except KeyError:
            log.info("resume: step %s (%s epoch %d) was never started: starting it", req.id, cid, epoch)
            fl.retry_at = now
        if rec.pending_epoch != epoch:
            s.tracker.mark_pending(rec, epoch)
        s.inflight[(cid, epoch)] = fl
    prefix = step_id(search_id, "zzzzzzzz", 1).rsplit("-zzzzzzzz-", 1)[0] + "-"
    strays = s.pool.strays(prefix)
    if strays:
        log.warning("resume: backend steps not part of the recorded search state (left alone): %s", strays)
    s.last_incumbent = s.incumbent()[0]
