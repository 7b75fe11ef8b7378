"""The step contract's data: :class:`StepRequest` round trips and its one command line.

Why: a request is written to disk by the local backend (``request.json``) and read back by a later
backend, and ``StepRequest.argv`` is the only place the ``quicktune step`` command line is built
for every backend: what it emits must parse back, through the real step parser, to the request.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings, strategies as st

from quicktune.backends.base import StepRequest, TrialBackend

_text = st.text(alphabet=string.ascii_letters + string.digits + "-_./:=$ ", min_size=1, max_size=30)

requests = st.builds(
    StepRequest,
    search_id=_text,
    config_id=_text,
    config=st.dictionaries(st.sampled_from(["model", "lr", "opt"]), st.one_of(st.integers(), _text), max_size=3),
    data_uri=_text,
    to_epoch=st.integers(1, 10_000),
    checkpoint_dir=_text,
    seed=st.integers(0, 2**31 - 1),
    device=st.sampled_from(["cpu", "cuda", "cuda:1"]),
    image_size=st.one_of(st.none(), st.integers(1, 1024)),
    extra_env=st.dictionaries(st.sampled_from(["A", "B_C"]), _text, max_size=2),
    max_epochs=st.one_of(st.none(), st.integers(1, 1000)),
    precision=st.one_of(st.none(), st.sampled_from(["fp32", "fp16", "bf16", "auto"])),
)


@given(requests)
def test_to_dict_from_dict_round_trip(req):
    assert StepRequest.from_dict(req.to_dict()) == req
    assert StepRequest.from_dict({**req.to_dict(), "queued_at": 1.5}) == req  # a backend's own keys


def test_a_request_recorded_before_max_epochs_existed_still_reads():
    old = {
        "search_id": "s",
        "config_id": "c",
        "config": {"model": "m"},
        "data_uri": "/d",
        "to_epoch": 2,
        "checkpoint_dir": "/ck",
        "seed": 0,
        "device": "cpu",
        "image_size": None,
        "extra_env": {"QUICKTUNE_MAX_EPOCHS": "10"},
        "queued_at": 3.0,
    }
    req = StepRequest.from_dict(old)
    assert req.max_epochs is None and req.extra_env == {"QUICKTUNE_MAX_EPOCHS": "10"}
    assert req.precision is None and not any(a.startswith("--precision") for a in req.argv(out="/o"))


@pytest.mark.parametrize("bad", ["FP16", "half", "", 16, True])
def test_precision_must_be_one_the_step_knows(bad):
    with pytest.raises(ValueError, match="precision"):
        StepRequest("s", "c", {}, "/d", 1, "/ck", precision=bad)


def test_the_requests_precisions_are_the_steps():
    """base.py keeps its own copy (backends do not import the training code): the two stay equal."""
    from quicktune.backends.base import STEP_PRECISIONS
    from quicktune.finetune.precision import PRECISIONS

    assert STEP_PRECISIONS == PRECISIONS


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "10"])
def test_max_epochs_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="max_epochs"):
        StepRequest("s", "c", {}, "/d", 1, "/ck", max_epochs=bad)


@settings(max_examples=60, deadline=None)
@given(requests, _text, _text)
def test_argv_parses_back_to_the_request(req, out, config_path):
    """Through the real ``quicktune step`` parser: every value arrives unchanged, including values
    that start with ``-`` (each option is one ``--flag=value`` token)."""
    from quicktune.cli import build_parser

    argv = req.argv(out="-" + out, config_path=config_path)
    args = build_parser().parse_args(["step", *argv])
    assert (args.config, args.data, args.to_epoch, args.checkpoint_dir, args.out) == (
        config_path,
        req.data_uri,
        req.to_epoch,
        req.checkpoint_dir,
        "-" + out,
    )
    assert (args.device, args.seed, args.image_size, args.max_epochs, args.precision) == (
        req.device,
        req.seed,
        req.image_size or None,
        req.max_epochs,
        req.precision or "auto",  # unset: the step's own default
    )
    assert any(a.startswith("--precision=") for a in argv) == (req.precision is not None)
    assert all(a.startswith("--") and "=" in a for a in argv)


def test_argv_options():
    req = StepRequest("s", "c", {}, "/d", 3, "/ck", device="cpu")
    assert not any(a.startswith("--config") for a in req.argv(out="/o"))  # a wrapper adds it itself
    assert "--device=cuda" in req.argv(out="/o", device="cuda")
    assert not any(a.startswith(("--max-epochs", "--image-size", "--precision")) for a in req.argv(out="/o"))
    assert StepRequest("s", "c", {}, "/d", 3, "/ck", precision="bf16").argv(out="/o")[-1] == "--precision=bf16"


def test_shares_filesystem_is_off_unless_a_backend_says_so():
    assert TrialBackend.shares_filesystem is False
    from quicktune.backends.kubernetes import KubernetesBackend
    from quicktune.backends.local import LocalBackend

    assert KubernetesBackend.shares_filesystem is False
    assert LocalBackend.shares_filesystem is True
