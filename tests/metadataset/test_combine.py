"""One table from several campaigns (quicktune/metadataset/combine.py): an earlier campaign's rows
and names never change, a reused name with other data is renamed, the same data is one task."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pandas.testing import assert_frame_equal

from quicktune.metadataset.combine import combine_tables

KEY = ["dataset", "config_id", "epoch"]


@st.composite
def campaigns(draw):
    """A campaign table: 1-3 tasks named from a small pool (so campaigns reuse names), each with
    meta-features drawn from two variants (so a reused name is sometimes the same data), curves of
    1-3 epochs over configs from a shared pool (so campaigns sometimes measured the same config)."""
    rows = []
    names = draw(st.lists(st.sampled_from(["digits", "lfw", "emoji"]), min_size=1, max_size=3, unique=True))
    extra = draw(st.booleans())
    for name in names:
        images = draw(st.sampled_from([300.0, 600.0]))
        for cid in draw(st.sets(st.sampled_from(["c1", "c2", "c3"]), min_size=1, max_size=3)):
            for e in range(1, draw(st.integers(1, 3)) + 1):
                row = {
                    "dataset": name,
                    "config_id": cid,
                    "epoch": e,
                    "score": draw(st.floats(0, 1, allow_nan=False)),
                    "cost": 1.0,
                    "meta.num_images": images,
                }
                if extra:
                    row["cpu_cost"] = 0.5
                rows.append(row)
    return pd.DataFrame(rows)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(KEY).reset_index(drop=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=campaigns(), b=campaigns())
def test_combining_keeps_the_first_campaign_and_never_mixes_two_datasets(a, b):
    ab = combine_tables([a, b])
    # the first campaign's rows are in the result unchanged, names included
    first = ab.merge(a[KEY], on=KEY, how="inner")[list(a.columns)]
    assert_frame_equal(_sorted(first), _sorted(a), check_dtype=False)
    # every (dataset, config, epoch) once; one set of meta-features per dataset name
    assert not ab.duplicated(KEY).any()
    assert (ab.groupby("dataset")["meta.num_images"].nunique() == 1).all()
    # nothing of the second campaign is lost except curves the first already measured on the same data
    for name in b["dataset"].unique():
        images = b.loc[b["dataset"] == name, "meta.num_images"].iloc[0]
        same = name in set(a["dataset"]) and a.loc[a["dataset"] == name, "meta.num_images"].iloc[0] == images
        target = name if (same or name not in set(a["dataset"])) else f"{name}-v2"
        got = ab[ab["dataset"] == target]
        assert (got["meta.num_images"] == images).all()
        want = set(b.loc[b["dataset"] == name, "config_id"])
        assert want <= set(got["config_id"])
    # a single table comes back unchanged; the column order starts with the first table's
    assert combine_tables([a]) is a
    assert list(ab.columns)[: len(a.columns)] == list(a.columns)


def test_the_shapes_of_v1_and_v2_names():
    """v1's digits (600 images) and v2's digits (300) are two tasks; lfw (200 in both) is one."""

    def rows(name, images, cids, epochs):
        return [
            {"dataset": name, "config_id": c, "epoch": e, "score": 0.5, "cost": 1.0, "meta.num_images": images}
            for c in cids
            for e in range(1, epochs + 1)
        ]

    v1 = pd.DataFrame(rows("digits", 600.0, ["a", "b"], 10) + rows("lfw", 200.0, ["a", "b"], 10))
    v2 = pd.DataFrame(rows("digits", 300.0, ["a", "c"], 12) + rows("lfw", 200.0, ["b", "c"], 12))
    v2["cpu_cost"] = 0.25
    out = combine_tables([v1, v2])
    per = out.groupby("dataset")["config_id"].apply(lambda s: sorted(set(s))).to_dict()
    assert per == {"digits": ["a", "b"], "digits-v2": ["a", "c"], "lfw": ["a", "b", "c"]}
    assert (out[(out["dataset"] == "lfw") & (out["config_id"] == "b")]["epoch"].max()) == 10  # v1's curve kept
    assert out.loc[out["dataset"] == "digits", "cpu_cost"].isna().all()
    assert (out.loc[out["dataset"] == "digits-v2", "cpu_cost"] == 0.25).all()


def test_combining_nothing_is_an_error():
    with pytest.raises(ValueError, match="no table"):
        combine_tables([])
