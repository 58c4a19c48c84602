"""`--backbone-weights`: each checkpoint flavour FER repositories pass around loads what matches and
reports the rest; files that match nothing or would run code are refused, and no code runs."""

import logging
import pathlib

import pytest
import torch
import torchvision

from rald_fast.models.backbone import BackboneWeightsError, build_resnet18, load_backbone_weights


def resnet18_state(num_classes=1000) -> dict:
    torch.manual_seed(1)
    return torchvision.models.resnet18(weights=None, num_classes=num_classes).state_dict()


def assert_loaded(net, state, prefix=""):
    own = net.state_dict()
    for k, v in state.items():
        name = k.removeprefix(prefix)
        if name in own and not name.startswith("fc."):
            assert torch.equal(own[name], v), name


def test_torchvision_state_dict(tmp_path):
    state = resnet18_state()
    torch.save(state, tmp_path / "resnet18.pth")
    net = build_resnet18()
    report = load_backbone_weights(net, tmp_path / "resnet18.pth")
    assert report["skipped"] == ["fc.bias", "fc.weight"] and report["missing"] == []
    assert len(report["loaded"]) == len(net.state_dict())
    assert_loaded(net, state)


def test_msceleb_checkpoint_with_module_prefix_and_other_classifier(tmp_path, caplog):
    state = resnet18_state(num_classes=8631)                   # MS-Celeb-1M identities
    ckpt = {"epoch": 40, "arch": "resnet18", "best_prec1": 0.7,
            "state_dict": {f"module.{k}": v for k, v in state.items()}}
    ckpt["state_dict"]["module.feature.weight"] = torch.zeros(8631, 512)
    torch.save(ckpt, tmp_path / "resnet18_msceleb.pth")
    net = build_resnet18()
    with caplog.at_level(logging.INFO):
        report = load_backbone_weights(net, tmp_path / "resnet18_msceleb.pth")
    assert report["missing"] == [] and set(report["skipped"]) == {"fc.weight", "fc.bias",
                                                                  "feature.weight"}
    assert_loaded(net, ckpt["state_dict"], prefix="module.")
    assert "skipped 3 (fc.bias, fc.weight, feature.weight)" in caplog.text
    # the same file through the model builder, as --backbone-weights does
    assert torch.equal(build_resnet18(str(tmp_path / "resnet18_msceleb.pth")).conv1.weight,
                       state["conv1.weight"])


def test_partial_match_reports_shape_mismatches_and_missing(tmp_path, caplog):
    state = resnet18_state()
    state["layer4.0.conv1.weight"] = torch.zeros(512, 256, 1, 1)   # another architecture's block
    del state["layer4.1.bn2.running_var"]
    torch.save({"model": state}, tmp_path / "partial.pt")
    with caplog.at_level(logging.INFO):
        report = load_backbone_weights(build_resnet18(), tmp_path / "partial.pt")
    assert report["mismatched"] == ["layer4.0.conv1.weight"]
    assert report["missing"] == ["layer4.0.conv1.weight", "layer4.1.bn2.running_var"]
    assert "wrong shape: layer4.0.conv1.weight (512, 256, 1, 1) vs (512, 256, 3, 3)" in caplog.text
    assert "2 ResNet18 tensors missing, left at random init" in caplog.text


def test_file_that_matches_nothing_is_refused(tmp_path):
    torch.save({"encoder.blocks.0.weight": torch.zeros(3)}, tmp_path / "vit.pt")
    with pytest.raises(BackboneWeightsError, match="vit.pt: no weight matches a ResNet18"):
        load_backbone_weights(build_resnet18(), tmp_path / "vit.pt")
    # BN step counters have the same () shape in any network: they do not count as a match
    torch.save({"bn1.num_batches_tracked": torch.tensor(5)}, tmp_path / "counter.pt")
    with pytest.raises(BackboneWeightsError, match="no weight matches"):
        load_backbone_weights(build_resnet18(), tmp_path / "counter.pt")


class Payload:
    """Unpickling this would create a file: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


class Custom:
    def __init__(self):
        self.weight = torch.zeros(2)


def test_pickles_that_need_code_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": resnet18_state(), "hook": Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(BackboneWeightsError, match=r"evil\.pt: refused, loading it would run code"):
        load_backbone_weights(build_resnet18(), tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save({"model": Custom()}, tmp_path / "custom.pt")
    with pytest.raises(BackboneWeightsError, match=r"refused.*Unsupported global.*Custom"):
        load_backbone_weights(build_resnet18(), tmp_path / "custom.pt")


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"\x00not a torch file")
    with pytest.raises(BackboneWeightsError, match=r"junk\.pth: not a PyTorch file"):
        load_backbone_weights(build_resnet18(), tmp_path / "junk.pth")
    with pytest.raises(BackboneWeightsError, match="no such file"):
        load_backbone_weights(build_resnet18(), tmp_path / "absent.pth")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(BackboneWeightsError, match="not a state dict of tensors"):
        load_backbone_weights(build_resnet18(), tmp_path / "list.pt")
