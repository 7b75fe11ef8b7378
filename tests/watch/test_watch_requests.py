"""Requests from the MLflow UI are hostile input: allowed data roots, names, and what a rejection says.

Issue 12, defect 7 (the watcher leaked host information to every MLflow user: a rejected
``quicktune.data=/usr/share`` listed folder names, ``quicktune.space`` pointing at a credentials
file echoed its first lines, and any requester could train on any path the watcher could read) and
defect 10's watcher side (names starting with ``-`` were accepted and then broke argparse in the
launched search). Unit tests, no servers; ~5 s.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from quicktune.watch.requests import (
    EXPERIMENT,
    MAX_MODEL_NAME_LENGTH,
    MODEL,
    TAG_BUDGET,
    TAG_DATA,
    TAG_MODEL_NAME,
    TAG_REQUEST,
    TAG_SPACE,
    TAG_STATUS,
    RequestError,
    Target,
    check_name,
    parse_request,
    search_id_for,
)
from quicktune.watch.roots import ENV_ALLOWED_ROOTS, AllowedRoots, RootError

K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def target(tags: dict[str, str], name: str = "digits-clf", kind: str = MODEL) -> Target:
    return Target(kind, name if kind == MODEL else "17", name, 1_700_000_000_000, dict(tags))


def s3_request(name: str = "digits-clf", kind: str = MODEL, **tags: str) -> Target:
    return target({TAG_DATA: "s3://datasets/digits", TAG_BUDGET: "1h", **tags}, name=name, kind=kind)


# --- allowed data roots -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "root, uri, allowed",
    [
        ("s3://", "s3://any-bucket/x", True),
        ("s3://datasets", "s3://datasets/team/digits", True),
        ("s3://datasets/team", "s3://datasets/team", True),
        ("s3://datasets/team/", "s3://datasets/team/digits/", True),
        ("s3://datasets/team", "s3://datasets/team-b/digits", False),  # a '/' boundary, not a string prefix
        ("s3://datasets/team", "s3://datasets/teams", False),
        ("s3://datasets/team", "s3://datasets-2/team/digits", False),
        ("s3://datasets/team", "s3://datasets", False),
        ("s3://datasets/team", "s3://datasets/team/../secret", False),  # refused outright, never compared
        ("s3://datasets/team", "s3://datasets/team//abs/x", False),
        ("s3://datasets/team", "s3://datasets/team/./x", False),
        ("s3://", "s3://../x", False),
        ("s3://", "s3://Bad_Bucket/x", False),
        ("s3://", "/data/digits", False),  # the default: local paths refused
        ("s3://", "S3://datasets/x", False),
    ],
)
def test_s3_roots_match_bucket_and_prefix_on_slash_boundaries(root, uri, allowed):
    roots = AllowedRoots.parse([root])
    if allowed:
        assert roots.check_data(uri) == uri
    else:
        with pytest.raises(RootError):
            roots.check_data(uri)


def test_local_roots_resolve_dotdot_and_symlinks(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "digits").mkdir(parents=True)
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)  # inside the root by name, outside by target
    (tmp_path / "alias").symlink_to(allowed / "digits")  # outside by name, inside by target
    roots = AllowedRoots.parse([str(allowed)])
    assert roots.check_data(str(allowed / "digits")) == str((allowed / "digits").resolve())
    assert roots.check_data(str(allowed / "x" / ".." / "digits")) == str((allowed / "digits").resolve())
    assert roots.check_data(str(tmp_path / "alias")) == str((allowed / "digits").resolve())
    for bad in (
        allowed / ".." / "outside",
        allowed / "escape",
        allowed / "escape" / "x",
        tmp_path / "allowed2",
        Path("/etc"),
        Path("/"),
    ):
        with pytest.raises(RootError, match="not under a data root"):
            roots.check_data(str(bad))
    for bad in ("digits", "./digits", "~/digits", "-digits", "file:///etc", f"{allowed}/digits\n"):
        with pytest.raises(RootError):
            roots.check_data(bad)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(["a", "b", "..", ".", "", "in-link", "out-link", "a/..", "..."]), max_size=8))
def test_a_local_path_is_allowed_only_if_it_really_lies_under_the_root(tmp_path_factory, parts):
    """Whatever the '..', '.', empty segments and symlinks: an allowed path is the resolved one and
    lies under the resolved root; a refused one does not."""
    base = tmp_path_factory.getbasetemp() / "roots-fuzz"
    root = base / "root"
    if not root.exists():
        (root / "a" / "b").mkdir(parents=True)
        (base / "elsewhere").mkdir()
        (root / "a" / "in-link").symlink_to(root / "a" / "b")
        (root / "a" / "out-link").symlink_to(base / "elsewhere")
        (root / "in-link").symlink_to(root / "a")
        (root / "out-link").symlink_to(base)
    path = str(root) + "/" + "/".join(parts)
    real = os.path.realpath(path)
    inside = real == str(root.resolve()) or real.startswith(str(root.resolve()) + "/")
    roots = AllowedRoots.parse([str(root)])
    if inside:
        assert roots.check_data(path) == real
    else:
        with pytest.raises(RootError):
            roots.check_data(path)


def test_roots_come_from_flags_then_the_environment_then_the_default(tmp_path):
    assert AllowedRoots.from_settings(None, env={}) == AllowedRoots.default() == AllowedRoots(s3=(("", ""),))
    env = {ENV_ALLOWED_ROOTS: f"s3://datasets/team , {tmp_path}"}
    assert AllowedRoots.from_settings([], env=env) == AllowedRoots((("datasets", "team"),), (str(tmp_path.resolve()),))
    only_local = AllowedRoots.from_settings([str(tmp_path)], env=env)  # flags replace, S3 no longer allowed
    assert only_local.s3 == () and only_local.local == (str(tmp_path.resolve()),)
    with pytest.raises(RootError):
        only_local.check_data("s3://datasets/team/x")
    for bad in ("data/", "http://host/x", "s3://Bad_Bucket", "s3://b/x/../y", "/a\nb"):
        with pytest.raises(ValueError, match="allowed data root"):
            AllowedRoots.parse([bad])


# --- what a rejection says ----------------------------------------------------------------------
def test_a_rejected_data_path_never_lists_folders(tmp_path, caplog, monkeypatch):
    """The probe of the issue (quicktune.data=/usr/share listed folder names), and the same within
    an allowed root: the tag says 'not a dataset', the folder names go to the watcher's log only,
    with secrets masked there too."""
    with pytest.raises(RequestError) as exc:
        parse_request(target({TAG_DATA: "/usr/share", TAG_BUDGET: "1h"}))  # default roots: S3 only
    assert str(exc.value) == "quicktune.data: /usr/share: local paths are not allowed by this watcher"

    secret = "S3CRETVALUE-" + os.urandom(4).hex()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    share = tmp_path / "share"
    names = ["payroll-2026", "secret-project-alpha", f"creds-{secret}"]
    for n in names:
        (share / n).mkdir(parents=True)
        (share / n / "notes.txt").write_text("not an image")
    caplog.set_level(logging.WARNING, logger="quicktune.watch")
    with pytest.raises(RequestError) as exc:
        parse_request(target({TAG_DATA: str(share), TAG_BUDGET: "1h"}), roots=AllowedRoots.parse([str(tmp_path)]))
    msg = str(exc.value)
    assert (
        msg == f"dataset cannot be read: {share}: not a dataset: expected one sub-folder per class "
        f"(or labels.csv + images/), with readable images"
    )
    assert not any(n in msg for n in names) and secret not in msg
    assert "payroll-2026" in caplog.text or "empty" in caplog.text  # the detail is in the watcher's log
    assert secret not in caplog.text


def test_a_credentials_file_as_space_is_never_echoed(tmp_path, caplog, monkeypatch):
    """Before: quicktune.space=/path/to/credentials answered with the file's first lines (YAML error)."""
    secret = "wJalrXUtnFEMI/" + os.urandom(6).hex()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = {secret}\n")
    data = "s3://datasets/digits"
    caplog.set_level(logging.WARNING, logger="quicktune.watch")
    # outside every root (the default): refused without being opened
    with pytest.raises(RequestError) as exc:
        parse_request(target({TAG_DATA: data, TAG_BUDGET: "1h", TAG_SPACE: str(creds)}), check_data=False)
    assert str(exc.value).startswith("quicktune.space: local paths are not allowed by this watcher")
    # inside an allowed root: loaded, fails, and the message is generic
    for ref in (creds, tmp_path / "x" / ".." / "credentials"):
        with pytest.raises(RequestError) as exc:
            parse_request(
                target({TAG_DATA: data, TAG_BUDGET: "1h", TAG_SPACE: str(ref)}),
                check_data=False,
                roots=AllowedRoots.parse(["s3://", str(tmp_path)]),
            )
        assert str(exc.value) == "quicktune.space: not a valid search-space file (details in the watcher's log)"
    assert secret not in caplog.text and "AKIAEXAMPLE" not in str(exc.value)
    for bad in ("builtin:../../etc/passwd", "builtin:", "builtin:CPU x"):
        with pytest.raises(RequestError, match="not a built-in space name"):
            parse_request(target({TAG_DATA: data, TAG_BUDGET: "1h", TAG_SPACE: bad}), check_data=False)
    req = parse_request(target({TAG_DATA: data, TAG_BUDGET: "1h", TAG_SPACE: "paper"}), check_data=False)
    assert req.space == "builtin:paper"
    assert parse_request(target({TAG_DATA: data, TAG_BUDGET: "1h"}), check_data=False).space == "builtin:cpu"


# --- names --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, name, tags, reason",
    [
        (MODEL, "-clf", {}, "the model name must not start with '-'"),
        (MODEL, "--help", {}, "the model name must not start with '-'"),
        (MODEL, "clf\nquicktune.status=succeeded", {}, "the model name contains control characters or line breaks"),
        (MODEL, "clf\x00", {}, "control characters"),
        (MODEL, "clf\u202egnp.exe", {}, "control characters"),  # a bidi override disguises the name
        (MODEL, "clf\u2028x", {}, "control characters"),
        (MODEL, "x" * (MAX_MODEL_NAME_LENGTH + 1), {}, "the model name is too long"),
        (MODEL, "   ", {}, "the model name is empty"),
        (EXPERIMENT, "-exp", {}, "the experiment name must not start with '-'"),
        (EXPERIMENT, "exp", {TAG_MODEL_NAME: "-m"}, "quicktune.model_name must not start with '-'"),
        (EXPERIMENT, "exp", {TAG_MODEL_NAME: "m\r\nx"}, "quicktune.model_name contains control characters"),
    ],
)
def test_bad_names_are_rejected_with_a_reason(kind, name, tags, reason):
    with pytest.raises(RequestError, match=re.escape(reason)) as exc:
        parse_request(s3_request(name, kind, **tags), check_data=False)
    assert name.strip() not in str(exc.value) or not name.strip()


def test_a_bad_name_ends_rejected_and_nothing_is_launched(tmp_path):
    from quicktune.watch import LocalLauncher, Watcher, WatcherConfig

    class Client:
        def __init__(self):
            self.tags = []

        def set_registered_model_tag(self, name, key, value):
            self.tags.append((name, key, value))

    client = Client()
    w = Watcher(
        WatcherConfig(tracking_uri="http://unused", watcher_id="w", claim_delay=0),
        LocalLauncher(tmp_path / "state", "http://unused"),
        client=client,
    )
    t = s3_request("-clf", MODEL, **{TAG_REQUEST: "start"})
    assert w.handle(t) is False
    assert client.tags == [("-clf", TAG_STATUS, "rejected: the model name must not start with '-'")]
    assert w.launched == [] and not (tmp_path / "state" / "searches").exists()


def test_a_launcher_refusal_ends_rejected_and_is_not_retried(tmp_path, tiny_image_folder):
    """The launcher's own checks (defence in depth) are final: the request is marked rejected once,
    not retried and logged on every poll."""
    from quicktune.watch import AllowedRoots, LocalLauncher, Watcher, WatcherConfig

    class Client:
        def __init__(self):
            self.tags = []

        def set_registered_model_tag(self, name, key, value):
            self.tags.append((name, key, value))

        def get_registered_model(self, name):  # the claim re-read: our own tags, as MLflow would
            from types import SimpleNamespace

            return SimpleNamespace(name=name, creation_timestamp=1, tags={**t.tags, **{k: v for _, k, v in self.tags}})

    class RefusingLauncher(LocalLauncher):
        calls = 0

        def launch(self, request):
            RefusingLauncher.calls += 1
            raise RequestError("the dataset URI contains '$', which this launcher does not pass on")

    client = Client()
    cfg = WatcherConfig(
        tracking_uri="http://unused", watcher_id="w", claim_delay=0, roots=AllowedRoots.parse([str(tiny_image_folder)])
    )
    w = Watcher(cfg, RefusingLauncher(tmp_path / "state", "http://unused"), client=client)
    t = target({TAG_DATA: str(tiny_image_folder), TAG_BUDGET: "1h", TAG_REQUEST: "start"}, name="clf", kind=MODEL)
    assert w.handle(t) is False
    statuses = [v for (_, k, v) in client.tags if k == TAG_STATUS]
    assert statuses[-1].startswith("rejected: the dataset URI contains '$'"), client.tags
    assert RefusingLauncher.calls == 1 and w.launched == []


NAMES = st.text(st.characters(codec="utf-8"), min_size=1, max_size=300)


@settings(max_examples=300, deadline=None)
@given(name=NAMES, kind=st.sampled_from([MODEL, EXPERIMENT]), created=st.integers(0, 2**53), done=st.integers(0, 10**6))
def test_search_ids_are_kubernetes_names_for_any_name(name, kind, created, done):
    t = Target(kind, name, name, created, {"quicktune.searches_done": str(done)})
    sid = search_id_for(t)
    assert K8S_NAME.fullmatch(sid) and len(sid) <= 63, sid
    assert sid == search_id_for(Target(kind, name, name, created, {"quicktune.searches_done": str(done)}))


@pytest.fixture(scope="module")
def search_parser():
    from quicktune.cli import build_parser

    return build_parser()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES)
def test_an_accepted_name_reaches_the_search_command_unchanged(name, search_parser):
    """Round trip through the launched command line: whatever name passes validation is parsed back
    by ``quicktune search`` as the same model name (a leading '-' used to end in argparse errors)."""
    try:
        check_name("the model name", name)
    except RequestError:
        assume(False)
    req = parse_request(s3_request(name), check_data=False)
    args = search_parser.parse_args(["search", *req.search_args("http://mlflow:5000")])
    assert args.model_name == name and args.search_id == req.search_id
    exp = parse_request(s3_request(name, EXPERIMENT), check_data=False)
    assert search_parser.parse_args(["search", *exp.search_args("http://mlflow:5000")]).experiment == name


def test_a_failed_launch_reports_its_log_tail_with_secrets_masked(tmp_path, monkeypatch):
    """The tail of a search that died before it was recorded goes to quicktune.message, which every
    MLflow user reads: secret values from the watcher's environment are masked, lines are bounded."""
    from quicktune.watch import Watcher, WatcherConfig
    from quicktune.watch.launchers import LAUNCH_DONE, Launcher, LaunchState
    from quicktune.watch.requests import TAG_MESSAGE

    secret = "tok-" + os.urandom(8).hex()
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", secret)

    class DeadLauncher(Launcher):
        name = "dead"

        def state(self, search_id):
            return LaunchState(LAUNCH_DONE, "exit 1")

        def logs(self, search_id):
            return f"starting\nenv: MLFLOW_TRACKING_TOKEN={secret}\n" + "x" * 5000 + "\nTraceback ...\n"

    class Client:
        def __init__(self):
            self.tags = {}

        def get_experiment_by_name(self, name):
            return None

        def get_model_version_by_alias(self, name, alias):
            raise LookupError(name)

        def set_registered_model_tag(self, name, key, value):
            self.tags[key] = value

    client = Client()
    w = Watcher(WatcherConfig(tracking_uri="http://unused", watcher_id="w"), DeadLauncher(), client=client)
    w._finish(s3_request(), "ui-x-1", "exit 1")
    msg = client.tags[TAG_MESSAGE]
    assert secret not in msg and "MLFLOW_TRACKING_TOKEN=***" in msg and len(msg) < 1000
    assert client.tags[TAG_STATUS] == "failed"


@pytest.mark.parametrize("hostile", ["x' or tags.`quicktune.role` = 'search", "../../etc", "-rf", "A" * 70])
def test_a_hostile_search_id_tag_is_rejected_not_searched_or_launched(tmp_path, hostile):
    """``quicktune.search_id`` is a tag any MLflow user can edit: a value that is not a search id never
    reaches an MLflow filter or a launcher."""
    from quicktune.watch import LocalLauncher, Watcher, WatcherConfig

    class Client:
        def __init__(self):
            self.tags = []

        def set_registered_model_tag(self, name, key, value):
            self.tags.append((name, key, value))

        def __getattr__(self, name):  # any other MLflow call would be a search with the hostile id
            raise AssertionError(f"MLflow called: {name}")

    client = Client()
    launcher = LocalLauncher(tmp_path / "state", "http://unused")
    w = Watcher(WatcherConfig(tracking_uri="http://unused", watcher_id="w", claim_delay=0), launcher, client=client)
    t = s3_request(
        "clf",
        MODEL,
        **{TAG_REQUEST: "start", TAG_STATUS: "running", "quicktune.claim": "w:abc", "quicktune.search_id": hostile},
    )
    assert w.handle(t) is False
    assert client.tags[-1][1:] == (TAG_STATUS, client.tags[-1][2]) and client.tags[-1][2].startswith("rejected: ")
    assert hostile not in client.tags[-1][2] and w.launched == []


# --- meta-artifact requested in the MLflow UI ------------------------------------------------------
@pytest.mark.parametrize(
    "value, ok",
    [
        ("models:/quicktune-surrogate@champion", True),
        ("models:/quicktune-surrogate/3", True),
        ("models:/../../etc@champion", False),
        ("s3://bucket/my-artifact", False),  # a path the requester names: never read by the watcher
        ("/etc/passwd", False),
        ("models:/x@champion\n--optimizer=random", False),
    ],
)
def test_a_requested_meta_artifact_is_a_checked_models_uri_passed_to_the_search(value, ok, search_parser):
    from quicktune.tracking.schema import TAG_META_ARTIFACT

    t = s3_request()
    t.tags[TAG_META_ARTIFACT] = value
    if not ok:
        with pytest.raises(RequestError, match="quicktune.meta_artifact"):
            parse_request(t, check_data=False)
        return
    req = parse_request(t, check_data=False)
    assert search_parser.parse_args(["search", *req.search_args("http://mlflow:5000")]).meta_artifact == value
