"""Every backbone of settings.ARCHITECTURES: ImageNet fold, fine-tune strategies, a training step, evaluation,
inference, ONNX export, and runs of one architecture refused where another is asked for (tiny input, CPU)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from weights_files import write_imagenet_densenet121

from cxrutils.engine import run_folder
from cxrutils.engine.gradcam import gradcam, gradcam_grid, gradcam_layer_for, is_last_stage
from cxrutils.engine.model import (
    BACKBONES,
    WeightsNotFoundError,
    apply_strategy,
    build_model,
    imagenet_weights_path,
    load_checkpoint_weights,
    load_imagenet_features,
)
from cxrutils.engine.train import check_same_settings, train
from cxrutils.settings import ARCHITECTURES, load_train_config

SIZE = 32  # the tiny profile's input: every stage's grid is SIZE // stride
# At 32 px "auto" is the stride-8 stage (4 x 4), the deepest with a 4 x 4 grid.
AUTO_AT_32 = {"densenet121": "denseblock2", "resnet50": "layer2", "efficientnet_v2_s": "stage2",
              "convnext_tiny": "stage2"}
NEW_ARCHITECTURES = tuple(arch for arch in ARCHITECTURES if arch != "densenet121")
IMAGENET_FILES = {"densenet121": "densenet121-a639ec97.pth", "resnet50": "resnet50-11ad3fa6.pth",
                  "efficientnet_v2_s": "efficientnet_v2_s-dd5fe13b.pth", "convnext_tiny": "convnext_tiny-983f1562.pth"}


def test_the_registry_is_the_settings_list_and_names_torchvisions_default_imagenet_files():
    assert tuple(BACKBONES) == ARCHITECTURES == tuple(AUTO_AT_32)
    assert {arch: spec.imagenet_file for arch, spec in BACKBONES.items()} == IMAGENET_FILES
    for arch, spec in BACKBONES.items():
        assert list(spec.strides.values()) == [4, 8, 16, 32], arch
        assert gradcam_layer_for(224, arch=arch) == spec.gradcam_stage and is_last_stage(spec.gradcam_stage, arch)
        assert gradcam_layer_for(SIZE, arch=arch) == AUTO_AT_32[arch] and gradcam_grid(SIZE, AUTO_AT_32[arch]) == 4
    with pytest.raises(ValueError, match="'layer4'.*densenet121|densenet121.*'layer4'"):
        gradcam_layer_for(224, "layer4", arch="densenet121")


def _imagenet_file(arch: str, folder: Path) -> torch.nn.Module:
    """A random torchvision network of ``arch`` saved in the format of its ImageNet file; returns the network."""
    path = folder / IMAGENET_FILES[arch]
    if arch == "densenet121":
        return write_imagenet_densenet121(path)
    reference = torchvision.models.get_model(arch, weights=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), path)
    return reference


def _without_last_linear(network: torch.nn.Module) -> torch.nn.Module:
    """torchvision's network up to its 1000-way linear layer (whose 1000 outputs our model does not have)."""
    if hasattr(network, "fc"):
        network.fc = torch.nn.Identity()
    elif isinstance(network.classifier, torch.nn.Linear):
        network.classifier = torch.nn.Identity()
    else:
        network.classifier[-1] = torch.nn.Identity()
    return network.eval()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_imagenet_weights_load_from_the_torch_cache_with_the_stem_folded_to_one_channel(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    torch.manual_seed(0)
    model = build_model("none", arch=arch).eval()
    with pytest.raises(WeightsNotFoundError) as missing:
        load_imagenet_features(model)
    assert IMAGENET_FILES[arch] in str(missing.value) and str(folder) in str(missing.value)

    reference = _without_last_linear(_imagenet_file(arch, folder))
    assert imagenet_weights_path(arch) == folder / IMAGENET_FILES[arch]
    load_imagenet_features(model)
    model.classifier = torch.nn.Identity()
    gray = torch.rand(2, 1, SIZE, SIZE)
    # The 1-channel network on a gray film is the RGB network on the film copied into three channels.
    with torch.no_grad():
        torch.testing.assert_close(model(gray), reference(gray.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_freezing_through_the_third_stage_trains_the_last_stage_and_the_head_only(arch):
    model = build_model("none", arch=arch, strategy="freeze_through_denseblock3").train()
    last = tuple(f"features.{name}." for name in BACKBONES[arch].last_stage)
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (not name.startswith("features.") or name.startswith(last)), name
    # Frozen BatchNorm keeps its statistics: eval mode inside train mode; the last stage's BatchNorm trains.
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            assert module.training == f"{name}.".startswith(last), name
    apply_strategy(model, "head_only")
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert not any(name.startswith("features.") for name in trainable)


@pytest.fixture(scope="module")
def backbone_runs(tiny_phantom_root, tmp_path_factory):
    """A one-step, one-epoch run per architecture on the tiny phantoms, trained when a test first asks for it.

    DenseNet121's runs are the other tests' (the tiny_run fixture, test_train.py, test_export.py).
    """
    folder = tmp_path_factory.mktemp("backbones")
    runs: dict[str, Path] = {}

    def config(arch: str, **overrides):
        return load_train_config("tiny", {
            "data_root": str(tiny_phantom_root), "runs_dir": str(folder / "runs"), "cache_dir": str(folder / "cache"),
            "name": arch, "arch": arch, "epochs": 1, "limit_train_batches": 1, "tensorboard": False, **overrides})

    def run(arch: str) -> Path:
        if arch not in runs:
            runs[arch] = train(config(arch)).run_dir
        return runs[arch]

    run.config = config  # type: ignore[attr-defined]
    return run


@pytest.mark.parametrize("arch", NEW_ARCHITECTURES)
def test_each_backbone_trains_a_step_opens_for_evaluation_and_inference_and_refuses_a_resume_as_another(
        arch, backbone_runs, tiny_phantom_root):
    from cxrutils.evaluate.evaluation import evaluate_run
    from cxrutils.inference.scoring import infer_films

    run_dir = backbone_runs(arch)
    assert run_folder.read_config(run_dir)["arch"] == arch
    checkpoint = run_folder.load_checkpoint(run_dir / run_folder.BEST_CHECKPOINT)
    assert checkpoint["arch"] == checkpoint["config"]["arch"] == arch
    assert run_folder.read_history(run_dir)["epoch"].tolist() == [1]
    run = run_folder.open_run(run_dir)  # as evaluation and the comparison open it
    model = run.model()
    assert model.arch == run.config.arch == arch and not model.training

    # Grad-CAM on the stage "auto" picks: a 4 x 4 grid at 32 px, upsampled to the input.
    layer = gradcam_layer_for(run.config.input_size, "auto", arch)
    grids = []
    hook = model.stage(layer).register_forward_hook(lambda module, inputs, output: grids.append(output.shape[-2:]))
    images = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    maps = gradcam(model, images, "Effusion", layer=model.stage(layer))
    hook.remove()
    assert tuple(grids[0]) == (4, 4) == (gradcam_grid(SIZE, layer),) * 2
    assert maps.shape == (2, SIZE, SIZE) and 0 <= float(maps.min()) and float(maps.max()) <= 1

    # The whole evaluation (predictions, bootstrap, localization, gallery), its "auto" choosing that stage of this arch.
    evaluated = evaluate_run(run, n_bootstrap=10, gallery_per_kind=1)
    assert evaluated.gradcam_layer == layer and len(evaluated.predictions) == len(run.dataset.images_in("test"))
    assert np.isfinite(evaluated.probabilities).all()

    film = sorted((tiny_phantom_root / "images").iterdir())[0]
    inferred = infer_films(run_dir, [film], num_workers=0, device="cpu", show_progress=False)
    assert inferred.n_scored == 1 and inferred.gradcam_layer == layer
    assert all(heatmap.shape == (SIZE, SIZE) for film in inferred.films for heatmap in film.heatmaps.values())

    other = next(a for a in ARCHITECTURES if a != arch)
    written = (run_dir / run_folder.LAST_CHECKPOINT).stat().st_mtime_ns
    with pytest.raises(run_folder.SettingsChangedError, match=f"arch: '{arch}' -> '{other}'"):
        train(backbone_runs.config(other, name=arch, epochs=2), resume=True)
    assert (run_dir / run_folder.LAST_CHECKPOINT).stat().st_mtime_ns == written


@pytest.mark.parametrize("arch", NEW_ARCHITECTURES)
def test_each_backbone_exports_to_onnx_and_onnxruntime_matches_torch(arch, backbone_runs, tmp_path):
    import onnxruntime

    from cxrutils.inference.export import TOLERANCE, export_onnx

    run_dir = backbone_runs(arch)
    exported = export_onnx(run_dir, out=tmp_path / "model.onnx", max_films=2)
    assert exported.verification["passed"] and exported.verification["max_abs_difference"] <= TOLERANCE
    assert exported.metadata["architecture"].startswith(arch)
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    model, _, _ = run_folder.load_run_model(run_dir)
    images = torch.randn(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    logits, _ = session.run(None, {"image": images.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(images).numpy(), atol=1e-4)


def _run_opened_from(run_dir: Path, folder: Path) -> Path:
    """What load_run_model reads of a run (config.json, the best checkpoint) in a folder of its own to change."""
    folder.mkdir()
    shutil.copy(run_dir / run_folder.CONFIG_NAME, folder)
    shutil.copy(run_dir / run_folder.BEST_CHECKPOINT, folder)
    return folder


def test_a_run_recorded_before_arch_existed_resumes_and_opens_as_densenet121(tiny_run, tmp_path):
    config = run_folder.read_run_config(tiny_run)
    saved = {key: value for key, value in config.to_dict().items() if key != "arch"}
    check_same_settings(saved, config)  # raises nothing
    with pytest.raises(run_folder.SettingsChangedError, match="arch: 'densenet121' -> 'resnet50'"):
        check_same_settings(saved, dataclasses.replace(config, arch="resnet50"))

    run_dir = _run_opened_from(tiny_run, tmp_path / "old")
    checkpoint = run_folder.load_checkpoint(run_dir / run_folder.BEST_CHECKPOINT)
    checkpoint.pop("arch", None)
    checkpoint["config"].pop("arch", None)
    run_folder.save_checkpoint(run_dir / run_folder.BEST_CHECKPOINT, checkpoint)
    record = run_folder.read_config(run_dir)
    record.pop("arch", None)
    run_folder.write_config(run_dir, record)
    model, config, _ = run_folder.load_run_model(run_dir)
    assert model.arch == config.arch == "densenet121"


def test_a_checkpoint_of_another_architecture_is_refused_naming_both(backbone_runs, tmp_path):
    run_dir = _run_opened_from(backbone_runs("resnet50"), tmp_path / "resnet50")
    record = run_folder.read_config(run_dir)
    # As if another run's checkpoint had been copied in.
    run_folder.write_config(run_dir, {**record, "arch": "convnext_tiny"})
    with pytest.raises(run_folder.ArchitectureMismatchError, match="resnet50 model.*trains convnext_tiny"):
        run_folder.load_run_model(run_dir)
    densenet = build_model("none")
    with pytest.raises(ValueError, match="holds a resnet50 model; this run builds densenet121"):
        load_checkpoint_weights(densenet, run_dir / run_folder.BEST_CHECKPOINT)
