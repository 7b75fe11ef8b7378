"""The shipped campaign's archive: it reproduces the shipped table, round-trips, and unpacks safely.

Cost: the shipped-archives test reads 1,380 records (~10-20 s on 2 shared cores); the rest < 2 s.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from quicktune.metadataset.archive import campaign_files, pack, shipped_archive_paths, unpack
from quicktune.metadataset.plan import CampaignError, CampaignPlan
from quicktune.metadataset.records import RecordStore, export, export_many


def test_shipped_archives_resume_complete_and_export_the_shipped_table_bit_for_bit(tmp_path):
    """Both campaigns are complete (resuming starts nothing), pack back to the shipped bytes, and
    ``export --workdir V1 --workdir V2`` rebuilds the shipped table; v1's table is a subset of it."""
    from quicktune.lct import load_lct, table_hash
    from quicktune.metadataset import shipped_table_path

    workdirs, expected = [], {"campaign-v1.tar.gz": (543, 540), "campaign-v2.tar.gz": (843, 840)}
    for archive in shipped_archive_paths():
        wd = tmp_path / archive.name.removesuffix(".tar.gz")
        names = unpack(wd, archive)
        n_files, n_curves = expected[archive.name]
        assert "plan.json" in names and "progress.log" in names and len(names) == n_files
        store = RecordStore(wd, CampaignPlan.load(wd))
        store.load()
        assert store.todo() == []  # resuming the complete campaign starts nothing
        # packing the unpacked state gives the shipped bytes (the archive is deterministic)
        assert pack(wd, tmp_path / "again.tar.gz").read_bytes() == archive.read_bytes()
        prog = export(wd, tmp_path / f"{wd.name}.parquet")
        assert prog["total"]["done"] == prog["total"]["planned"] == n_curves
        workdirs.append(wd)
    prog = export_many(workdirs, tmp_path / "table.parquet")
    assert prog["total"]["done"] == 540 + 840
    shipped = load_lct(str(shipped_table_path()))
    assert table_hash(load_lct(str(tmp_path / "table.parquet"))) == table_hash(shipped)
    v1 = load_lct(str(tmp_path / "campaign-v1.parquet"))
    key = ["dataset", "config_id", "epoch"]
    again = v1[key].merge(shipped, on=key, how="left")[list(v1.columns)]
    assert again.reset_index(drop=True).equals(v1.reset_index(drop=True))  # nothing v1 measured is lost


_names = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).map(lambda s: "t" + s)
_state = st.fixed_dictionaries(
    {
        "plan": st.binary(max_size=300),
        "log": st.one_of(st.none(), st.binary(max_size=300)),
        "results": st.dictionaries(st.tuples(_names, _names), st.binary(max_size=200), max_size=6),
    }
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=_state)
def test_pack_unpack_round_trip_is_exact_and_deterministic(state):
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "src", Path(d) / "dst"
        src.mkdir()
        (src / "plan.json").write_bytes(state["plan"])
        if state["log"] is not None:
            (src / "progress.log").write_bytes(state["log"])
        for (task, cid), data in state["results"].items():
            (src / "results" / task).mkdir(parents=True, exist_ok=True)
            (src / "results" / task / f"{cid}.json").write_bytes(data)
        (src / "results" / "dropped").mkdir(parents=True, exist_ok=True)
        (src / "results" / "dropped" / "x.json.dropped-1").write_bytes(b"old")  # never packed
        (src / "ckpt").mkdir()
        (src / "ckpt" / "big.safetensors").write_bytes(b"\0" * 100)  # never packed
        a = pack(src, Path(d) / "a.tar.gz")
        first = a.read_bytes()
        assert pack(src, Path(d) / "b.tar.gz").read_bytes() == first
        unpack(dst, a)
        assert campaign_files(dst) == campaign_files(src)
        for rel in campaign_files(src):
            assert (dst / rel).read_bytes() == (src / rel).read_bytes()
        assert not (dst / "ckpt").exists()
        assert unpack(dst, a) == []  # idempotent: the same files are kept, nothing rewritten


def _archive(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return path


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


SECRET = b"s3cr3t-contents-never-echoed"


@pytest.mark.parametrize(
    "members",
    [
        [("plan.json", b"{}"), ("../evil.json", SECRET)],
        [("plan.json", b"{}"), ("/tmp/evil.json", SECRET)],
        [("plan.json", b"{}"), ("results/t/../../evil.json", SECRET)],
        [("plan.json", b"{}"), ("ckpt/t/c/epoch-0001.safetensors", SECRET)],
        [("plan.json", b"{}"), _link("results/t/c.json", "/etc/passwd")],
        [("plan.json", b"{}"), _link("progress.log", "plan.json", tarfile.LNKTYPE)],
        [("results/t/c.json", SECRET)],  # no plan
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "unknown-file", "symlink", "hardlink", "no-plan"],
)
def test_unpack_refuses_hostile_archives_and_writes_nothing(tmp_path, members):
    bad = _archive(tmp_path / "bad.tar.gz", members)
    wd = tmp_path / "a" / "wd"
    with pytest.raises(CampaignError) as err:
        unpack(wd, bad)
    assert SECRET.decode() not in str(err.value) and "passwd" not in str(err.value)
    assert not wd.exists() and not (tmp_path / "a" / "evil.json").exists() and not (tmp_path / "evil.json").exists()


def test_unpack_never_overwrites_other_contents_and_reads_bad_files_as_errors(tmp_path):
    good = _archive(tmp_path / "good.tar.gz", [("plan.json", b'{"a": 1}'), ("results/t/c.json", b"{}")])
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "plan.json").write_text('{"a": 2}')
    with pytest.raises(CampaignError, match="other contents"):
        unpack(wd, good)
    assert (wd / "plan.json").read_text() == '{"a": 2}' and not (wd / "results").exists()
    (tmp_path / "junk.tar.gz").write_bytes(SECRET)
    with pytest.raises(CampaignError, match="cannot read") as err:
        unpack(tmp_path / "wd2", tmp_path / "junk.tar.gz")
    assert SECRET.decode() not in str(err.value)
    with pytest.raises(CampaignError, match="no such"):
        unpack(tmp_path / "wd3", tmp_path / "missing.tar.gz")
    with pytest.raises(CampaignError, match="no campaign plan"):
        pack(tmp_path / "empty", tmp_path / "x.tar.gz")


def test_inspecting_a_campaign_needs_no_backend(tmp_path):
    # The run loop needs a backend; planning, the records, the table and export must not (the old
    # code built a Campaign around a stub backend to export).
    wd = Path(tempfile.mkdtemp(dir=tmp_path))
    code = f"""
import json, sys
from pathlib import Path
from quicktune.metadataset.plan import CampaignPlan, make_or_extend_plan, parse_dataset_spec
from quicktune.metadataset.records import RecordStore, export, export_many
from quicktune.space import load_space
wd = Path({str(wd)!r})
make_or_extend_plan(wd, [parse_dataset_spec("digits:classes=0,1")], 2, 2, 0, load_space("builtin:cpu"),
                    "builtin:cpu", 16)
store = RecordStore(wd, CampaignPlan.load(wd))
t, c = store.todo()[0]
store.record(t, c, "sid", {{"status": "ok", "epochs": [{{"epoch": 1, "score": 0.5, "cost": 1.0}},
                                                   {{"epoch": 2, "score": 0.6, "cost": 1.0}}]}}, "", None)
prog = export(wd, wd / "t.parquet")
print(json.dumps([prog["total"]["done"], prog["total"]["planned"],
                  sorted(m for m in sys.modules if m.startswith("quicktune.backends"))]))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    done, planned, backends = json.loads(p.stdout.strip().splitlines()[-1])
    assert (done, planned) == (1, 2) and (wd / "t.parquet").exists()
    assert backends == []
