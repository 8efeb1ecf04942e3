
import pytest
import torch
import torchvision
from weights_files import write_imagenet_densenet121

from cxrutils.engine.model import (
    IMAGENET_DENSENET121_FILE,
    LSEPool2d,
    WeightsNotFoundError,
    build_model,
    load_checkpoint_weights,
    load_imagenet_features,
)


def test_imagenet_weights_load_with_conv0_folded_to_one_channel(tmp_path):
    reference = write_imagenet_densenet121(tmp_path / IMAGENET_DENSENET121_FILE)
    model = build_model("none")
    load_imagenet_features(model, tmp_path / IMAGENET_DENSENET121_FILE)
    gray = torch.rand(2, 1, 64, 64)
    # The folded stem on gray input equals the RGB stem on the gray image copied three times.
    expected = reference.features.conv0(gray.repeat(1, 3, 1, 1))
    torch.testing.assert_close(model.features.conv0(gray), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.features.denseblock4.denselayer16.conv2.weight,
                               reference.features.denseblock4.denselayer16.conv2.weight)


def test_absent_imagenet_weights_name_the_file_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError) as error:
        build_model("imagenet")
    message = str(error.value)
    assert IMAGENET_DENSENET121_FILE in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message


def test_lse_pooling_moves_from_average_to_max():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 5.0]]]])
    assert LSEPool2d(r=0.01)(x).item() == pytest.approx(2.0, abs=0.05)
    assert LSEPool2d(r=100.0)(x).item() == pytest.approx(5.0, abs=0.02)
    assert build_model("none", head="lse")(torch.rand(2, 1, 64, 64)).shape == (2, 14)


def test_partial_strategy_freezes_weights_and_batchnorm_statistics_before_denseblock4():
    torch.manual_seed(0)
    model = build_model("none", strategy="freeze_through_denseblock3")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(torch.rand(4, 1, 64, 64)),
                                                                torch.ones(4, 14))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    frozen = [k for k in before if k.startswith(("features.conv0", "features.norm0", "features.denseblock1",
                                                  "features.transition1", "features.denseblock2",
                                                  "features.transition2", "features.denseblock3",
                                                  "features.transition3"))]
    assert any("running_mean" in k for k in frozen)
    for key in frozen:
        assert torch.equal(before[key], after[key]), f"{key} changed"
    assert not torch.equal(before["features.denseblock4.denselayer1.conv1.weight"],
                           after["features.denseblock4.denselayer1.conv1.weight"])
    assert not torch.equal(before["features.norm5.running_mean"], after["features.norm5.running_mean"])
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


def test_head_only_trains_only_the_classifier():
    model = build_model("none", strategy="head_only")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}


def test_checkpoints_load_with_weights_only_and_foreign_files_fail_clearly(tmp_path):
    model = build_model("none")
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "ours.pt")
    other = build_model("none")
    load_checkpoint_weights(other, tmp_path / "ours.pt")
    torch.testing.assert_close(other.classifier.weight, model.classifier.weight)
    torch.save(torchvision.models.resnet18(), tmp_path / "pickled_module.pt")  # a whole pickled module
    with pytest.raises(ValueError, match="weights_only=True"):
        load_checkpoint_weights(other, tmp_path / "pickled_module.pt")
