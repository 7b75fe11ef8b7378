"""Model descriptors: every timm model described without weights and without network; the catalogue's
models from the shipped cache (no model construction during a search)."""

from __future__ import annotations

import math
import socket

import pytest

from quicktune.hub import HubError, describe, descriptor as dmod, descriptor_features, list_models

PAPER = [m.name for m in list_models("paper")]
CPU = [m.name for m in list_models("cpu")]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access during a descriptor computation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def fresh(monkeypatch):
    """No in-memory cache; the file cache only when a test does not remove it."""
    dmod.describe.cache_clear()
    yield
    dmod.describe.cache_clear()


def test_catalogue_descriptors_come_from_the_cache_without_building_a_model(monkeypatch, fresh, no_network):
    def build(*args, **kwargs):
        raise AssertionError("a catalogue model was built although its descriptor is cached")

    monkeypatch.setattr(dmod, "_count", build)
    assert len(PAPER) == 24
    for size in (None, 32, 64, 224):
        ds = {n: describe(n, size) for n in PAPER + CPU}
        assert all(d.gmacs > 0 and d.num_features > 0 and d.arch_type in dmod.ARCH_TYPES for d in ds.values())
    native = {n: describe(n) for n in PAPER}
    assert len({d.gmacs for d in native.values()}) == 24  # at their training resolution no two paper models alike
    big, small = native["beit_large_patch16_512"], native["mobilevit_xxs"]
    assert big.gmacs > 100 * small.gmacs and big.params > 100 * small.params
    assert (big.arch_type, small.arch_type, describe("dla46x_c").arch_type) == ("vit", "hybrid", "cnn")
    assert big.image_size == big.input_size == 512 and describe("beit_large_patch16_512", 64).image_size == 64
    # a random-init twin: the same architecture, not pretrained, top-1 unknown
    twin, real = describe("tf_efficientnet_lite0.random"), describe("tf_efficientnet_lite0")
    assert twin.gmacs == real.gmacs and twin.params == real.params and real.pretrained and not twin.pretrained
    f = twin.features()
    assert f["pretrained"] == 0.0 and math.isnan(f["top1"]) and real.features()["top1"] == pytest.approx(0.7483)
    # MACs grow with the resolution
    assert describe("resnet10t", 32).gmacs < describe("resnet10t", 64).gmacs < describe("resnet10t", 224).gmacs


def test_descriptors_are_computed_on_the_meta_device_like_the_cache(monkeypatch, fresh, no_network):
    """The cheap models recomputed from timm (meta device: no weights, no network) give the cached numbers."""
    shipped = dmod._cache_file()
    monkeypatch.setattr(dmod, "_cache_file", lambda: {})
    for name in ("tf_efficientnet_lite0", "test_vit", "mobilevit_xxs", "edgenext_xx_small"):
        fresh_d = describe(name, 64)
        cached = shipped[name]
        assert fresh_d.gmacs == pytest.approx(cached["gmacs"]["64"], rel=1e-3)  # the cache keeps 6 decimals
        assert fresh_d.num_features == cached["num_features"] and fresh_d.arch_type == cached["arch_type"]


def test_a_timm_model_outside_the_catalogue_is_described_the_same_way(fresh, no_network):
    assert "resnet18" not in PAPER + CPU and "deit_tiny_patch16_224" not in PAPER + CPU
    r18 = describe("resnet18", 64)
    assert r18.arch_type == "cnn" and r18.params == 11689512 and r18.top1 is None and r18.input_size == 224
    assert r18.gmacs == pytest.approx(1.82 * (64 / 224) ** 2, rel=0.05)  # timm's 1.82 GMACs at 224 px
    deit = descriptor_features(["deit_tiny_patch16_224"], 64)["deit_tiny_patch16_224"]
    assert deit["arch_vit"] == 1.0 and deit["log10_params"] == pytest.approx(math.log10(5717416))


def test_an_unknown_name_is_a_clear_error(fresh):
    with pytest.raises(HubError, match="unknown model 'resnet_does_not_exist'"):
        describe("resnet_does_not_exist")
    with pytest.raises(HubError, match="too small"):
        describe("resnet10t", 4)


@pytest.mark.slow
def test_the_shipped_cache_matches_timm_for_every_catalogue_model(monkeypatch, fresh, no_network):
    """Every paper and cpu model recomputed at 64 px on the meta device matches descriptors.json."""
    cached = dmod._cache_file()
    monkeypatch.setattr(dmod, "_cache_file", lambda: {})
    for name in dict.fromkeys(PAPER + CPU):
        d = describe(name, 64)
        assert d.gmacs == pytest.approx(cached[name]["gmacs"]["64"], rel=1e-3)  # the cache keeps 6 decimals, name
        assert d.arch_type == cached[name]["arch_type"], name
