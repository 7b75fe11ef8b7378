"""Every MLflow name the project reads or writes: tags, metrics, params and artifact paths.

MLflow is the source of truth of a search: a resumed controller, the harvest of past searches,
the promotion of a winner and the MLflow-UI watcher all read back what another process (often
another version of the code) wrote. So the names are one vocabulary, defined once, here; a
module that spells one as an inline string can drift from its writer without any test noticing.
The layout these names make up is described in :mod:`quicktune.tracking.layout`; the request
tags of the watcher in :mod:`quicktune.watch.requests`.

This module is pure data (no imports): anything may import it.
"""

from __future__ import annotations

# --- MLflow's own tags ---------------------------------------------------------------------------
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
MLFLOW_RUN_NAME = "mlflow.runName"

# --- run tags shared by every run of a search ---------------------------------------------------
TAG_SEARCH_ID = "quicktune.search_id"
TAG_ROLE = "quicktune.role"  # one of ROLES
TAG_STATUS = "quicktune.status"
TAG_MESSAGE = "quicktune.message"

ROLE_SEARCH = "search"  # the parent run
ROLE_CONFIG = "config"  # one child run per configuration
ROLE_PROMOTION = "promotion"  # the child run holding a promoted model
ROLES = (ROLE_SEARCH, ROLE_CONFIG, ROLE_PROMOTION)

# --- the parent run (role=search) ---------------------------------------------------------------
TAG_FINGERPRINT = "quicktune.dataset_fingerprint"  # the dataset's identity (resume check, harvest)
TAG_CHECKPOINT_URI = "quicktune.checkpoint_uri"  # --checkpoint-uri, when given
TAG_RESUMES = "quicktune.resumes"  # number of sessions after the first
TAG_META_ARTIFACT = "quicktune.meta_artifact"  # which meta-data informed the search ("shipped" or a URI);
# also a request tag of the watcher (--meta-artifact of the search it starts)
TAG_META_ARTIFACT_TABLE_HASH = "quicktune.meta_artifact_table_hash"
TAG_META_ARTIFACT_VERSION = "quicktune.meta_artifact_version"  # the registry version behind a models:/ URI
TAG_DOMAIN_SCORE = "quicktune.domain_score"  # how close the search is to the artifact's meta-training domain, [0, 1]
TAG_DOMAIN_VERDICT = "quicktune.domain_verdict"  # in domain | partly in domain | out of domain
TAG_DOMAIN_FLAGS = "quicktune.domain_flags"  # short reasons, comma-separated ("" when none)
TAG_BEST_CONFIG_ID = "quicktune.best_config_id"  # set at the end from the summary
TAG_BEST_RUN_ID = "quicktune.best_run_id"
TAG_CHAMPION = "quicktune.champion"  # models:/NAME@ALIAS after a promotion
TAG_CHAMPION_VERSION = "quicktune.champion_version"  # also a request tag of the watcher

# --- a configuration's run (role=config) --------------------------------------------------------
TAG_CONFIG_ID = "quicktune.config_id"
TAG_CONFIG = "quicktune.config"  # the exact config as sorted JSON
TAG_PENDING = "quicktune.pending_epoch"  # a step is in flight ("" when none)
TAG_EPOCHS_DONE = "quicktune.epochs_done"
TAG_CHECKPOINT_DIR = "quicktune.checkpoint_dir"
TAG_FAILED_EPOCH = "quicktune.failed_epoch"  # a failed step: the epoch it did not reach,
TAG_FAILED_SEQ = "quicktune.failed_seq"  # the tell_seq of the failure,
TAG_FAILED_COST = "quicktune.failed_cost"  # and its cost (repr of a float)

# --- a registered model version (written by promotion) ------------------------------------------
TAG_PARENT_RUN_ID = "quicktune.parent_run_id"
TAG_CONFIG_RUN_ID = "quicktune.config_run_id"
TAG_TEST_ACCURACY = "quicktune.test_accuracy"
TAG_VAL_SCORE = "quicktune.val_score"
TAG_MODEL = "quicktune.model"

# --- a registered version of the meta-trained surrogate (``quicktune metatrain --from-mlflow``) ----
SURROGATE_MODEL = "quicktune-surrogate"  # the registered model searches use by default (its alias below)
SURROGATE_ALIAS = "champion"
SURROGATE_ARTIFACT_PATH = "surrogate"  # the artifact folder (artifact.json + weights) on the training run
TAG_TABLE_HASH = "quicktune.table_hash"  # the content hash of the table the artifact was trained on
TAG_TABLE_DATASETS = "quicktune.datasets"  # JSON list of the datasets it was trained on
TAG_TABLE_SEARCHES = "quicktune.searches"  # how many searches the harvest read (for --min-new)
TAG_HELDOUT_LOGLIK = "quicktune.heldout_loglik"  # mean held-out predictive log-likelihood (higher is better)
TAG_HELDOUT = "quicktune.heldout"  # how the held-out curves were chosen (fraction, seed, count)
TAG_QUICKTUNE_VERSION = "quicktune.version"
TAG_ARTIFACT_VERSION = "quicktune.artifact_version"  # the artifact format version (artifact.json "version")
TAG_ALIAS_DECISION = "quicktune.alias_decision"  # why the alias moved or stayed

# --- request tags on a registered model or an experiment (the MLflow-UI watcher) ----------------
TAG_REQUEST = "quicktune.request"
TAG_DATA = "quicktune.data"
TAG_BUDGET = "quicktune.budget"
TAG_SPACE = "quicktune.space"
TAG_WORKERS = "quicktune.workers"
TAG_MAX_EPOCHS = "quicktune.max_epochs"
TAG_BUDGET_EPOCHS = "quicktune.budget_epochs"
TAG_IMAGE_SIZE = "quicktune.image_size"
TAG_MODEL_NAME = "quicktune.model_name"
TAG_PARENT_RUN = "quicktune.parent_run"  # a link to the search's parent run
TAG_INCUMBENT = "quicktune.incumbent"
TAG_CLAIM = "quicktune.claim"
TAG_HEARTBEAT = "quicktune.heartbeat"
TAG_SEARCHES_DONE = "quicktune.searches_done"
TAG_LAUNCHER = "quicktune.launcher"

# --- metrics ------------------------------------------------------------------------------------
# per epoch on a configuration's run, step = epoch
EPOCH_METRICS = ("score", "top5", "val_loss", "train_loss", "cost", "train_seconds", "eval_seconds")
METRIC_SCORE = "score"
METRIC_COST = "cost"
METRIC_TELL_SEQ = "tell_seq"  # search-wide order of the results told to the optimizer
METRIC_BEST_SCORE = "best_score"  # step = the best epoch
# on the parent run, step = epochs done
METRIC_INCUMBENT = "incumbent"
METRIC_ELAPSED = "elapsed_seconds"  # summed over sessions: a resume continues from it
METRIC_CONFIGS_TRIED = "configs_tried"
METRIC_EPOCHS_DONE = "epochs_done"
SUMMARY_METRIC_PREFIX = "summary."  # the summary's numbers, at the end
# on the parent run, step = the tell_seq of the step's first epoch (search-wide, across resumes): each
# finished step's fixed cost, wall_seconds - train - eval (pod start, sync, weights, checkpoint), where
# the backend measured the wall time (Kubernetes); the summary holds its median
METRIC_STEP_OVERHEAD = "step_overhead_seconds"
SUMMARY_STEP_OVERHEAD_MEDIAN = "step_overhead_seconds_median"  # summary key (metric summary.<key>)
SUMMARY_STEP_OVERHEAD_STEPS = "step_overhead_steps"  # how many steps the median is over
# on a promotion run
METRIC_TEST_TOP1 = "test_top1"
METRIC_TEST_TOP5 = "test_top5"
METRIC_TEST_LOSS = "test_loss"
METRIC_VAL_SCORE = "val_score"

# --- params -------------------------------------------------------------------------------------
PARAM_META_FEATURES_PREFIX = "meta_features."  # the spec's meta-features, flattened on the parent run
PARAM_DATA_URI = "data_uri"
PARAM_MAX_EPOCHS = "max_epochs"
PARAM_FINGERPRINT = "dataset_fingerprint"  # older searches: the fingerprint as a param

# --- artifacts ----------------------------------------------------------------------------------
ARTIFACT_SPEC = "spec.json"  # the search spec, incl. space_def and meta_features
ARTIFACT_SUMMARY = "summary.json"
ARTIFACT_DOMAIN_REPORT = "domain_report.json"  # the artifact's domain vs this search (quicktune.optimizer.domain)
STATE_SLOTS = ("optimizer/state-0.json", "optimizer/state-1.json")  # alternating optimizer snapshots
PLOT_LEARNING_CURVES = "plots/learning_curves.png"
PLOT_INCUMBENT = "plots/incumbent.png"
ARTIFACT_PREPROCESSING = "preprocessing.json"  # on a promotion run
ARTIFACT_MODEL = "model"  # the logged model's name on a promotion run


def failure_log_path(epoch: int) -> str:
    """The artifact holding a failed step's logs, on its configuration's run."""
    return f"logs/epoch-{int(epoch)}.log"
