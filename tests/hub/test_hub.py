"""quicktune.hub: catalogue, real efficientnet-lite weights, configurable weight sources.

Cost: ~20 s (efficientnet-lite0 conversion is cached in the user's cache dir after the first run).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
import yaml

from quicktune import storage
from quicktune.cli import main
from quicktune.hub import HubError, create_model, list_models, model_info, package_weights_file, weight_source


@pytest.fixture
def weights_cache(tmp_path, monkeypatch):
    """Per-test weight cache for S3 downloads (package conversions keep the shared cache)."""
    monkeypatch.delenv("QUICKTUNE_WEIGHTS_CONFIG", raising=False)
    return tmp_path / "weights"


def test_cpu_hub_flags_offline_pretrained_and_random_init():
    cpu = {m.name: m for m in list_models("cpu")}
    for n in ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"):
        assert cpu[n].pretrained_available_offline and cpu[n].default_source == "package"
        assert cpu[n].top1 is not None and 74 < cpu[n].top1 < 78
    for n in ("resnet10t", "mobilenetv3_small_100", "regnetx_002", "convnext_atto", "test_vit"):
        assert not cpu[n].pretrained_available_offline and not cpu[n].pretrained and cpu[n].top1 is None
    params = [m.params for m in list_models("cpu")]
    assert params == sorted(params)


def test_paper_hub_is_the_24_models_of_the_paper_space():
    from importlib import resources

    space = yaml.safe_load(resources.files("quicktune.spaces").joinpath("paper.yaml").read_text())
    paper = list_models("paper")
    assert len(paper) == 24
    assert {m.name for m in paper} == set(space["params"]["model"]["choices"])
    assert all(m.default_source == "hf" and m.top1 is not None for m in paper)
    assert model_info("tf_efficientnet_b7_ns").timm_name == "tf_efficientnet_b7.ns_jft_in1k"


def test_catalogue_parameter_counts_match_timm():
    import timm

    # every CPU-hub model and the small paper models (building the big ones takes ~30 s on two
    # cores even on the meta device; their counts were made the same way)
    for m in [m for m in list_models("all") if "cpu" in m.hubs or m.params < 7e6]:
        with torch.device("meta"):
            model = timm.create_model(m.arch)
        assert sum(p.numel() for p in model.parameters()) == m.params, m.name


def test_unknown_model_lists_close_matches():
    with pytest.raises(HubError, match="unknown model 'tf_efficientnet_lite9'.*did you mean.*tf_efficientnet_lite"):
        model_info("tf_efficientnet_lite9")
    with pytest.raises(HubError, match="unknown model"):
        create_model("no_such_net", num_classes=3)


def test_efficientnet_lite0_package_weights_load_strict_and_see_a_cat():
    import timm
    from PIL import Image
    from safetensors.torch import load_file
    from skimage.data import chelsea

    path = package_weights_file("tf_efficientnet_lite0")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(load_file(path), strict=True)
    model.eval()
    img = Image.fromarray(chelsea()).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
    x = torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1)[None] / 255
    info = model_info("tf_efficientnet_lite0")
    x = (x - torch.tensor(info.mean)[:, None, None]) / torch.tensor(info.std)[:, None, None]
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert 285 in top5  # ImageNet class 285 'Egyptian cat'
    assert probs[285] > 0.3


def test_create_model_resets_head_and_adapts_stem_to_gray():
    from safetensors.torch import load_file

    ref = load_file(package_weights_file("tf_efficientnet_lite0"))
    model = create_model("tf_efficientnet_lite0", num_classes=7, in_chans=1, drop_rate=0.3)
    assert model.classifier.out_features == 7 and model.conv_stem.in_channels == 1 and model.drop_rate == 0.3
    state = model.state_dict()
    # backbone weights are the pretrained ones; the gray stem is timm's channel sum of the RGB stem
    assert torch.equal(state["blocks.3.1.conv_pw.weight"], ref["blocks.3.1.conv_pw.weight"])
    assert torch.allclose(state["conv_stem.weight"], ref["conv_stem.weight"].sum(1, keepdim=True))
    random = create_model("tf_efficientnet_lite0", num_classes=7, pretrained=False)
    assert not torch.equal(random.state_dict()["blocks.3.1.conv_pw.weight"], ref["blocks.3.1.conv_pw.weight"])
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_random_init_models_and_fixed_size_vit():
    assert weight_source("resnet10t").source == "none"
    model = create_model("resnet10t", num_classes=4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    vit = create_model("test_vit", num_classes=3, image_size=32)
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_hf_source_offline_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_info("dla46x_c").pretrained_cfg()  # import timm before timing
    t0 = time.monotonic()
    with pytest.raises(HubError, match="dla46x_c.*not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        create_model("dla46x_c", num_classes=5)
    assert time.monotonic() - t0 < 10
    # configuration, not code, switches the source: the same model from nowhere = random init
    model = create_model("dla46x_c", num_classes=5, weights_config={"models": {"dla46x_c": {"source": "none"}}})
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def _seeded_resnet10t_file(path) -> dict[str, torch.Tensor]:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(123)
    state = {k: v.contiguous() for k, v in timm.create_model("resnet10t", num_classes=1000).state_dict().items()}
    save_file(state, str(path))
    return state


def test_weights_from_a_local_file_via_env_config(tmp_path, monkeypatch, weights_cache):
    state = _seeded_resnet10t_file(tmp_path / "r10.safetensors")
    config = tmp_path / "weights.yaml"
    config.write_text(
        yaml.safe_dump({"models": {"resnet10t": {"source": "file", "uri": str(tmp_path / "r10.safetensors")}}})
    )
    monkeypatch.setenv("QUICKTUNE_WEIGHTS_CONFIG", str(config))
    assert weight_source("resnet10t").source == "file"
    model = create_model("resnet10t", num_classes=3)
    assert torch.equal(model.state_dict()["layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])
    assert model.fc.out_features == 3
    config.write_text(yaml.safe_dump({"models": {"resnet10t": {"source": "file", "uri": str(tmp_path / "gone")}}}))
    with pytest.raises(HubError, match="weights file .*gone does not exist"):
        create_model("resnet10t", num_classes=3)


def test_weights_from_an_s3_mirror(s3_env, tmp_path, weights_cache, monkeypatch):
    state = _seeded_resnet10t_file(tmp_path / "r10.safetensors")
    s3_env.create_bucket("models")
    prefix = f"s3://models/mirror-{os.urandom(3).hex()}"
    storage.upload_file(tmp_path / "r10.safetensors", f"{prefix}/resnet10t.safetensors")
    config = {"s3_prefix": prefix, "cache_dir": str(weights_cache), "models": {"resnet10t": "s3"}}
    model = create_model("resnet10t", num_classes=2, weights_config=config)
    assert torch.equal(model.state_dict()["layer1.0.conv2.weight"], state["layer1.0.conv2.weight"])
    cached = list(weights_cache.rglob("*.safetensors"))
    assert len(cached) == 1
    # a cached file cut short (a node crashed on a shared cache volume) is fetched again, not loaded
    full = cached[0].read_bytes()
    cached[0].write_bytes(full[: len(full) // 2])
    model = create_model("resnet10t", num_classes=2, weights_config=config)
    assert cached[0].read_bytes() == full
    assert torch.equal(model.state_dict()["layer1.0.conv2.weight"], state["layer1.0.conv2.weight"])
    # second use: served from the ETag-keyed cache, no download
    monkeypatch.setattr(storage, "download_file", lambda *a, **k: pytest.fail("downloaded again"))
    create_model("resnet10t", num_classes=2, weights_config=config)
    with pytest.raises(HubError, match="no such object in the S3 mirror"):
        create_model(
            "resnet10t",
            num_classes=2,
            weights_config={"models": {"resnet10t": {"source": "s3", "uri": f"{prefix}/missing.safetensors"}}},
        )


def test_bad_weights_config_is_named(tmp_path):
    with pytest.raises(HubError, match="model 'resnet10t' needs source one of"):
        create_model("resnet10t", num_classes=2, weights_config={"models": {"resnet10t": {"source": "ftp"}}})
    with pytest.raises(HubError, match="unknown keys \\['model'\\]"):
        create_model("resnet10t", num_classes=2, weights_config={"model": {}})
    with pytest.raises(HubError, match="source 'package' is only available for"):
        create_model("resnet10t", num_classes=2, weights_config={"models": {"resnet10t": "package"}})
    with pytest.raises(HubError, match="weights config .*nope.yaml.*no such file"):
        create_model("resnet10t", num_classes=2, weights_config=str(tmp_path / "nope.yaml"))


def test_hub_list_cli(capsys):
    assert main(["hub", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["tf_efficientnet_lite0"]["source"] == "package"
    assert rows["resnet10t"]["pretrained"] is False
    assert main(["hub", "list", "--hub", "paper"]) == 0
    out = capsys.readouterr().out
    assert "beit_large_patch16_512" in out and "88.6" in out


def test_hf_source_without_network_fails_fast(monkeypatch):
    from quicktune.testing import free_port_pair

    (port,) = free_port_pair(1, offset=0)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")  # nothing listens there
    model_info("mobilevit_xxs").pretrained_cfg()  # import timm before timing
    t0 = time.monotonic()
    with pytest.raises(HubError, match="cannot reach the Hugging Face hub to download timm/mobilevit_xxs.cvnets_in1k"):
        create_model("mobilevit_xxs", num_classes=3)
    assert time.monotonic() - t0 < 10
