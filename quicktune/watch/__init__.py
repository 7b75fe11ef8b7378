"""Start searches from the MLflow UI and report back there (``quicktune watch``); see ``docs/mlflow-ui.md``."""

from quicktune.watch.launchers import KfpLauncher, KubernetesLauncher, Launcher, LaunchState, LocalLauncher
from quicktune.watch.requests import RequestError, SearchRequest, Target, parse_request, search_id_for
from quicktune.watch.roots import AllowedRoots
from quicktune.watch.watcher import Watcher, WatcherConfig

__all__ = [
    "AllowedRoots",
    "KfpLauncher",
    "KubernetesLauncher",
    "LaunchState",
    "Launcher",
    "LocalLauncher",
    "RequestError",
    "SearchRequest",
    "Target",
    "Watcher",
    "WatcherConfig",
    "parse_request",
    "search_id_for",
]
