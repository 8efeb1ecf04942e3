"""One schema for every setting: training profiles, report profiles, and --set routed to the right one."""

from __future__ import annotations

import pytest

from cxrutils.engine.model import gradcam_layer_for
from cxrutils.settings import (
    AugmentConfig,
    SettingsError,
    apply_overrides,
    load_profile,
    load_train_config,
    profile_train_config,
    set_setting,
)


def test_dotted_overrides_reach_nested_settings_and_unknown_ones_are_named():
    config = load_train_config("demo", ["augment.hflip_probability=0.5", "augment.rotation_degrees=3", "epochs=2"])
    assert config.augment == AugmentConfig(rotation_degrees=3, scale_min=0.92, scale_max=1.08, translate_fraction=0.04,
                                           hflip_probability=0.5)
    assert config.epochs == 2
    with pytest.raises(SettingsError, match="augment.spin"):
        load_train_config("demo", ["augment.spin=1"])
    with pytest.raises(SettingsError, match="learning_rate"):
        set_setting({}, "learning_rate", 0.1)


def test_set_routes_training_settings_to_settings_and_the_rest_to_notebook_parameters():
    profile = apply_overrides(load_profile("demo"), ["val_fraction=0.2", "n_bootstrap=50", "split_seed=3"],
                              parameters={"n_bootstrap", "integrity_check"})
    assert profile["settings"]["val_fraction"] == 0.2 and profile["settings"]["split_seed"] == 3
    assert profile["parameters"]["n_bootstrap"] == 50 and "val_fraction" not in profile["parameters"]
    config = profile_train_config(profile)
    assert (config.val_fraction, config.split_seed, config.seed, config.data_root) == (0.2, 3, 0, "data/demo")
    with pytest.raises(SettingsError, match="neither a training setting nor a parameter"):
        apply_overrides(load_profile("demo"), ["dataroot=/x"], parameters={"n_bootstrap"})


def test_every_shipped_report_profile_names_a_training_profile_that_loads():
    for name in ("demo", "metadata", "nih", "rehearsal"):
        profile = load_profile(name)
        settings = {**profile["settings"], **({"data_root": "/data/nih"} if name == "nih" else {})}
        assert load_train_config(profile["train_profile"], settings).data_root


def test_a_report_profile_with_an_unknown_setting_is_refused(tmp_path):
    (tmp_path / "odd.yaml").write_text("train_profile: demo\nsettings:\n  n_bootstrap: 5\n")
    with pytest.raises(SettingsError, match="n_bootstrap"):
        load_profile("odd", configs_dir=tmp_path)


@pytest.mark.parametrize(("input_size", "layer"), [(224, "denseblock4"), (128, "denseblock4"), (64, "denseblock3"),
                                                   (32, "denseblock2"), (16, "denseblock1")])
def test_gradcam_auto_picks_the_deepest_block_with_a_4_by_4_grid(input_size, layer):
    assert gradcam_layer_for(input_size) == layer
    assert gradcam_layer_for(input_size, "denseblock1") == "denseblock1"
    with pytest.raises(ValueError, match="denseblock9"):
        gradcam_layer_for(input_size, "denseblock9")
