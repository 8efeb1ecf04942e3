"""One schema for every setting: training profiles, report profiles, and --set routed to the right one."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re

import nbformat
import pytest
import yaml

from cxrutils import settings
from cxrutils.engine.gradcam import gradcam_layer_for
from cxrutils.paths import NOTEBOOKS_DIR
from cxrutils.settings import (
    REPORT_PROFILE_KEYS,
    TRAIN_CONFIGS_DIR,
    AugmentConfig,
    ComparisonSettings,
    EvaluationSettings,
    InferenceSettings,
    SettingsError,
    apply_overrides,
    declared_phantom_roots,
    describe_settings,
    load_profile,
    load_train_config,
    parse_override,
    profile_train_config,
    set_setting,
    settings_table,
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


# --------------------------------------------------------------------------- report profiles: the schema


def test_a_report_profile_with_an_unknown_top_level_key_names_the_file_and_the_known_keys(tmp_path):
    (tmp_path / "typo.yaml").write_text("train_profile: demo\nparameter:\n  n_bootstrap: 5\n")
    with pytest.raises(SettingsError) as refused:
        load_profile("typo", configs_dir=tmp_path)
    message = str(refused.value)
    assert str(tmp_path / "typo.yaml") in message and "'parameter'" in message
    assert all(key in message for key in REPORT_PROFILE_KEYS)


def test_every_shipped_report_profile_uses_only_known_keys():
    import yaml

    from cxrutils.paths import CONFIGS_DIR

    for path in sorted(CONFIGS_DIR.glob("*.yaml")):
        assert set(yaml.safe_load(path.read_text())) <= set(REPORT_PROFILE_KEYS), path


def test_declared_phantom_roots_are_parsed_once_and_again_when_a_profile_changes(tmp_path, monkeypatch):
    reads = []
    real_load_profile = settings.load_profile
    monkeypatch.setattr(settings, "load_profile", lambda *args: reads.append(args) or real_load_profile(*args))
    profile = tmp_path / "mine.yaml"
    profile.write_text("demo_data:\n  root: /phantoms/a\n  n_patients: 30\n")
    first = declared_phantom_roots(tmp_path)
    assert list(first) == [settings.resolve("/phantoms/a")]
    assert first[settings.resolve("/phantoms/a")].spec == {"n_patients": 30}
    first[settings.resolve("/phantoms/a")].spec["n_patients"] = 1  # a caller's change stays its own
    assert declared_phantom_roots(tmp_path)[settings.resolve("/phantoms/a")].spec == {"n_patients": 30}
    assert len(reads) == 1
    profile.write_text("demo_data:\n  root: /phantoms/a\n  n_patients: 300\n")
    assert declared_phantom_roots(tmp_path)[settings.resolve("/phantoms/a")].spec == {"n_patients": 300}
    assert len(reads) == 2


def test_a_phantom_spec_with_an_unknown_key_names_the_profile(tmp_path):
    from cxrutils.demo.roots import phantom_roots

    (tmp_path / "mine.yaml").write_text("demo_data:\n  root: /phantoms/b\n  n_patient: 30\n")
    with pytest.raises(SettingsError, match=r"mine\.yaml: demo_data has unknown key\(s\) \['n_patient'\]"):
        phantom_roots(tmp_path)
    (tmp_path / "mine.yaml").write_text("rehearsal_data:\n  image_size: 32\n")
    with pytest.raises(SettingsError, match="rehearsal_data needs root"):
        phantom_roots(tmp_path)


# --------------------------------------------------------------------------- evaluation, comparison, inference


def test_choices_copied_into_the_base_layer_equal_their_sources():
    from cxrutils.compare.provenance import DEFAULT_MODELS
    from cxrutils.compare.txv import TXV_MODEL_NAMES
    from cxrutils.engine.predict import SPLITS
    from cxrutils.stats.thresholds import METHODS

    assert settings.THRESHOLD_METHODS == METHODS
    assert settings.SPLITS == SPLITS
    assert settings.TXV_MODEL_NAMES == TXV_MODEL_NAMES
    assert settings.DEFAULT_TXV_MODELS == DEFAULT_MODELS


def _signature_defaults(function) -> dict:
    return {name: parameter.default for name, parameter in inspect.signature(function).parameters.items()
            if parameter.default is not inspect.Parameter.empty}


def test_the_library_functions_take_the_schema_defaults():
    from cxrutils.compare.run import compare_run
    from cxrutils.evaluate.evaluation import evaluate_run
    from cxrutils.inference.scoring import infer_films, load_inference_model

    # to_dict() is splatted into these: its keys must be their keyword names, its values their defaults.
    for function, family in ((evaluate_run, EvaluationSettings), (compare_run, ComparisonSettings)):
        defaults = _signature_defaults(function)
        assert family().to_dict() == {name: defaults[name] for name in family().to_dict()}, function.__name__
    inference = InferenceSettings()
    scoring_names = {"threshold_method": "threshold_method", "batch_size": "batch_size", "workers": "num_workers",
                     "device": "device", "overlays": "with_gradcam", "max_pixels": "max_pixels"}
    assert set(scoring_names) == set(inference.to_dict())
    defaults = _signature_defaults(infer_films)
    assert {name: defaults[scoring_names[name]] for name in scoring_names} == inference.to_dict()
    loading = _signature_defaults(load_inference_model)
    assert (loading["threshold_method"], loading["device"]) == (inference.threshold_method, inference.device)


# Each notebook's settings family; parameters named otherwise in the notebook; and the parameters that are not
# settings of the family (the run's profile, where the report goes, what the notebook shows).
NOTEBOOK_SETTINGS = {
    "03_evaluate": (EvaluationSettings, {}, {"train_profile", "settings", "output_dir"}),
    "04_txv_comparison": (ComparisonSettings, {"txv_max_images": "max_images"},
                          {"train_profile", "settings", "output_dir", "use_random_txv_weights_for_testing"}),
    "05_inference": (InferenceSettings, {},
                     {"train_profile", "settings", "output_dir", "paths", "n_films", "film_seed", "max_films_shown",
                      "run_dir", "with_training_films"}),
}


def notebook_parameters(stem: str) -> dict:
    """The literals of a notebook's cell tagged ``parameters``."""
    notebook = nbformat.read(NOTEBOOKS_DIR / f"{stem}.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body
            if isinstance(node, ast.Assign)}


@pytest.mark.parametrize("stem", sorted(NOTEBOOK_SETTINGS))
def test_every_notebook_parameter_is_a_setting_with_the_schema_default_or_a_known_other(stem):
    family, renamed, not_settings = NOTEBOOK_SETTINGS[stem]
    defaults = family().to_dict()
    parameters = notebook_parameters(stem)
    shared = {renamed.get(name, name): value for name, value in parameters.items() if name not in not_settings}
    unknown = set(shared) - set(defaults)
    assert not unknown, f"{stem} has parameters that are neither {family.__name__} fields nor listed here: {unknown}"
    different = {name: (value, defaults[name]) for name, value in shared.items()
                 if (list(value) if isinstance(value, list) else value)
                 != (list(defaults[name]) if isinstance(defaults[name], tuple) else defaults[name])}
    assert not different, f"{stem}: (notebook, schema) defaults differ: {different}"
    assert "threshold_method" in shared  # the test compares something in every notebook


def test_the_evaluation_and_comparison_notebooks_expose_every_setting():
    for stem in ("03_evaluate", "04_txv_comparison"):
        family, renamed, _ = NOTEBOOK_SETTINGS[stem]
        exposed = {renamed.get(name, name) for name in notebook_parameters(stem)}
        assert {item.name for item in dataclasses.fields(family)} <= exposed, stem


@pytest.mark.parametrize("family", [EvaluationSettings, ComparisonSettings, InferenceSettings])
def test_options_come_from_the_fields_and_read_back_as_the_defaults(family):
    parser = argparse.ArgumentParser()
    family.add_arguments(parser)
    assert family.from_arguments(parser.parse_args([])) == family()
    help_text = parser.format_help()
    for item in dataclasses.fields(family):
        flag = item.metadata.get("flag") or "--" + ("no-" if item.default is True else "") + item.name.replace("_", "-")
        assert flag in help_text, flag


def test_options_set_the_settings_and_bad_choices_are_refused(capsys):
    parser = argparse.ArgumentParser()
    EvaluationSettings.add_arguments(parser)
    chosen = EvaluationSettings.from_arguments(parser.parse_args(["--n-bootstrap", "7", "--tta-hflip", "--split", "val"]))
    assert (chosen.n_bootstrap, chosen.tta_hflip, chosen.split) == (7, True, "val")
    with pytest.raises(SystemExit):
        parser.parse_args(["--threshold-method", "otsu"])
    assert "otsu" in capsys.readouterr().err

    parser = argparse.ArgumentParser()
    ComparisonSettings.add_arguments(parser)
    models = ComparisonSettings.from_arguments(parser.parse_args(["--model", "densenet121-res224-all",
                                                                  "--model", "resnet50-res512-all"])).txv_models
    assert models == ("densenet121-res224-all", "resnet50-res512-all")

    parser = argparse.ArgumentParser()
    InferenceSettings.add_arguments(parser)
    assert InferenceSettings.from_arguments(parser.parse_args(["--no-overlays"])).overlays is False


def test_one_subgroup_minimum_in_positive_patients_rules_evaluation_and_comparison_alike():
    from cxrutils.compare.run import compare_run
    from cxrutils.evaluate.evaluation import evaluate_run

    assert EvaluationSettings().subgroup_min_positive_patients == 5
    assert ComparisonSettings().subgroup_min_positive_patients == 5
    for family in (EvaluationSettings, ComparisonSettings):
        parser = argparse.ArgumentParser()
        family.add_arguments(parser)
        chosen = family.from_arguments(parser.parse_args(["--subgroup-min-positive-patients", "8"]))
        assert chosen.subgroup_min_positive_patients == 8
        assert "patients (not films)" in " ".join(parser.format_help().split())  # help wraps lines
    for function in (evaluate_run, compare_run):
        with pytest.raises(ValueError, match="subgroup_min_positive_patients must be at least 1"):
            function("runs/none", subgroup_min_positive_patients=0)  # refused before any file is read


def test_settings_made_in_code_are_checked_too():
    with pytest.raises(SettingsError, match="otsu"):
        EvaluationSettings(threshold_method="otsu")
    with pytest.raises(SettingsError, match="densenet-made-up"):
        ComparisonSettings(txv_models=["densenet121-res224-nih", "densenet-made-up"])
    with pytest.raises(SettingsError, match="list of names"):
        ComparisonSettings(txv_models="densenet121-res224-nih")
    # a list (as a notebook passes it) is the same setting as the tuple
    assert ComparisonSettings(txv_models=list(settings.DEFAULT_TXV_MODELS)) == ComparisonSettings()


def test_describe_settings_lists_every_setting_with_its_default_and_meaning():
    train = describe_settings("train")
    assert "lr = 0.0001" in train and "augment.hflip_probability = 0.5" in train
    assert "split_seed = 0" in train and "draws the validation (and, without lists, test) patients" in train
    names = {name for name, _, _ in settings_table("train")}
    assert names == settings.setting_names() - {"augment"}
    evaluation = describe_settings("evaluation")
    assert "n_bootstrap = 1000" in evaluation and "patient-bootstrap resamples" in evaluation
    assert "max_images = None" in describe_settings("comparison")
    assert "(None: the run's)" in describe_settings("inference")
    with pytest.raises(SettingsError, match="evaluation"):
        describe_settings("evaluate")


# --------------------------------------------------------------------------- typed values (issue 25: --set lr=4e-4)


def test_numbers_written_as_yaml_1_1_reads_them_arrive_as_numbers():
    """YAML 1.1 reads ``4e-4`` (no dot) as text; the README's own example must reach the optimiser as a number."""
    config = load_train_config("tiny", ["lr=4e-4", "weight_decay=1e-5", "augment.scale_min=9e-1", "epochs=3.0"])
    assert (config.lr, config.weight_decay, config.augment.scale_min, config.epochs) == (4e-4, 1e-5, 0.9, 3)
    assert isinstance(config.lr, float) and isinstance(config.epochs, int)


@pytest.mark.parametrize(("override", "named"), [
    ("batch_size=96/4", "batch_size=24"),  # the arithmetic is the user's: say what to write
    ("lr=fast", "lr='fast': expected a number"),
    ("amp=maybe", "amp='maybe': expected true or false"),
    ("epochs=2.5", "epochs=2.5: expected a whole number"),
    ("augment.hflip_probability=half", "augment.hflip_probability='half'"),
    ("epochs=null", "epochs needs a whole number"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_setting(override, named):
    with pytest.raises(SettingsError, match=re.escape(named)):
        load_train_config("tiny", [override])


def test_every_shipped_training_profile_is_already_typed():
    """Typing the values moves no number: each profile's values are what its YAML says, as the declared type."""
    for path in sorted(TRAIN_CONFIGS_DIR.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        config = load_train_config(path.stem)
        for key, value in raw.items():
            if key == "augment":
                assert {k: getattr(config.augment, k) for k in value} == value, path.name
            else:
                assert getattr(config, key) == value, (path.name, key)


def _declared_kind(key: str) -> str:
    schema, name = (AugmentConfig, key.split(".", 1)[1]) if key.startswith("augment.") else (settings.TrainConfig, key)
    return str(next(f.type for f in dataclasses.fields(schema) if f.name == name)).split("|")[0].strip()


@pytest.mark.parametrize("key", sorted(settings.setting_names() - {"augment"}))
def test_every_training_setting_is_read_as_its_type_or_refused(key):
    """Each setting: its value written as text arrives typed, and a value of no sensible reading is refused by name."""
    kind = _declared_kind(key)
    accepted = {"float": ("2e-1", 0.2), "int": ("3", 3), "bool": ("true", True), "str": ("17", "17")}[kind]
    if key == "arch":  # a choice among names: any one of them, as text
        accepted = ("resnet50", "resnet50")
    config = load_train_config("tiny", [f"{key}={accepted[0]}"])
    value = config.augment if key.startswith("augment.") else config
    got = getattr(value, key.split(".")[-1])
    assert got == accepted[1] and type(got) is type(accepted[1]), (key, got)
    if kind != "str":
        with pytest.raises(SettingsError, match=re.escape(key)):
            load_train_config("tiny", [f"{key}=[1, 2]"])


@pytest.mark.parametrize(("override", "named"), [
    ("grad_accumulation_steps=0", "grad_accumulation_steps=0: must be 1"),
    ("grad_accumulation_steps=-2", "grad_accumulation_steps=-2: must be 1"),
    ("warmup_epochs=-0.5", "warmup_epochs=-0.5: must be 0"),
    ("warmup_epochs=.inf", "warmup_epochs=inf: must be 0"),
    ("warmup_epochs=.nan", "warmup_epochs=nan: must be 0"),
    ("arch=vgg16", "arch='vgg16': choose one of densenet121, resnet50"),
])
def test_an_impossible_accumulation_or_warmup_is_refused_naming_the_setting(override, named):
    with pytest.raises(SettingsError, match=re.escape(named)):
        load_train_config("tiny", [override])
    with pytest.raises(SettingsError, match=re.escape(named)):  # made in code, as a notebook does
        key, value = settings.parse_override(override)
        settings.TrainConfig(**{key: value})


def test_the_cluster_settings_default_to_training_as_before():
    """One step per batch, no warmup, each process's own BatchNorm: what every run did before they existed."""
    config = settings.TrainConfig()
    assert (config.grad_accumulation_steps, config.warmup_epochs, config.sync_batchnorm) == (1, 0, False)
    table = describe_settings("train")
    assert "grad_accumulation_steps = 1" in table and "warmup_epochs = 0.0" in table
    assert "sync_batchnorm = False" in table


@pytest.mark.parametrize("name", ["../../etc", "a/b", "a\\b", "..", ".", "", "tab\there"])
def test_a_run_name_that_is_not_one_folder_name_is_refused(name):
    """The name is a folder under runs_dir and under reports/: '../x' would write outside both."""
    with pytest.raises(SettingsError, match="one folder name"):
        load_train_config("tiny", {"name": name})


@pytest.mark.parametrize("text", ["weights_dir=...", "paths=[unclosed", "lr={"])
def test_a_set_value_yaml_cannot_read_is_a_settings_error_that_says_to_quote_it(text):
    with pytest.raises(SettingsError, match="quote it as text"):
        parse_override(text)


def test_the_cache_size_follows_the_input_size_unless_set():
    """A 448 px run caches 512 px films (the same 8/7 margin as 256 for 224), unless a profile or --set says otherwise."""
    assert settings.TrainConfig().cache_size == 256
    assert load_train_config("nih", ["input_size=448"]).cache_size == 512
    assert load_train_config("nih_448").cache_size == 512
    assert load_train_config("nih", ["input_size=448", "cache_size=600"]).cache_size == 600
    assert load_train_config("demo").cache_size == 64  # a profile's own value stands


# --------------------------------------------------------------------------- typed values of the settings families


FAMILY_FIELDS = {(family.__name__, item.name): item
                 for family in settings.SETTINGS_FAMILIES.values() for item in dataclasses.fields(family)}
FAMILIES_BY_NAME = {family.__name__: family for family in settings.SETTINGS_FAMILIES.values()}
# What a refusal calls each declared type.
TYPE_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text",
              "tuple[str, ...]": "a list of names"}


def _choices(name: str) -> tuple[str, ...] | None:
    """The choices of a setting of that name in any family (a notebook parameter must fit every family's field)."""
    return next((item.metadata["choices"] for (_, other), item in FAMILY_FIELDS.items()
                 if other == name and "choices" in item.metadata), None)


def _written_and_meant(item: dataclasses.Field) -> tuple[str, object]:
    """A value of the field as --set writes it, and what it must arrive as (numbers as YAML 1.1 reads text: 1e3)."""
    kind = str(item.type).split("|")[0].strip()
    choices = _choices(item.name)
    if kind == "tuple[str, ...]":
        return f"[{choices[-1]}]", (choices[-1],)
    if choices:
        return choices[-1], choices[-1]
    return {"int": ("1e3", 1000), "float": ("5e-1", 0.5), "bool": ("true", True), "str": ("17", "17")}[kind]


@pytest.mark.parametrize(("family_name", "name"), [pytest.param(*key, id=".".join(key)) for key in sorted(FAMILY_FIELDS)])
def test_every_family_setting_is_read_as_its_type_or_refused_by_name(family_name, name):
    """Made in code (as a notebook or JSON hands it) or passed to a notebook by --set: text in, the declared type out;
    a value of no sensible reading is refused, naming the setting, the value and the type."""
    family, item = FAMILIES_BY_NAME[family_name], FAMILY_FIELDS[family_name, name]
    kind = str(item.type).split("|")[0].strip()
    assert kind in TYPE_WORDS, f"{family_name}.{name}: a type this test does not know: {item.type}"
    written, meant = _written_and_meant(item)
    _, value = parse_override(f"{name}={written}")
    if kind in ("int", "float", "str") and not _choices(name):
        assert type(value) is not type(meant)  # YAML hands over the wrong type: the reading is what is tested
    got = getattr(family(**{name: value}), name)
    assert got == meant and type(got) is type(meant), (got, meant)

    refusal = f"{name}={{'a': 1}}: expected {TYPE_WORDS[kind]}"
    with pytest.raises(SettingsError, match=re.escape(refusal)):
        family(**{name: {"a": 1}})
    # As a notebook parameter (inference's batch_size and device are no notebook's: --set gives the training's).
    if not settings.is_setting(name):
        passed = apply_overrides(load_profile("demo"), [f"{name}={written}"], parameters={name})["parameters"][name]
        expected = list(meant) if isinstance(meant, tuple) else meant  # papermill passes lists, not tuples
        assert passed == expected and type(passed) is type(expected), (passed, expected)
        with pytest.raises(SettingsError, match=re.escape(f"--set {refusal}")):
            apply_overrides(load_profile("demo"), [f"{name}={{a: 1}}"], parameters={name})
    if "None" in str(item.type):
        assert getattr(family(**{name: None}), name) is None
    else:
        with pytest.raises(SettingsError, match=re.escape(f"{name} needs {TYPE_WORDS[kind]}, got null")):
            family(**{name: None})


def test_set_n_bootstrap_1e3_reaches_the_notebooks_as_the_whole_number_1000():
    """YAML 1.1 reads 1e3 (no dot) as text: the reports runner used to hand the notebooks the string '1e3'."""
    assert parse_override("n_bootstrap=1e3") == ("n_bootstrap", "1e3")
    profile = apply_overrides(load_profile("demo"), ["n_bootstrap=1e3", "txv_max_images=2e2", "split=val"],
                              parameters={"n_bootstrap", "txv_max_images", "split"})
    assert profile["parameters"] == {"integrity_check": "full", "n_bootstrap": 1000, "txv_max_images": 200,
                                     "split": "val"}
    assert type(profile["parameters"]["n_bootstrap"]) is int and type(profile["parameters"]["txv_max_images"]) is int
    for written, problem in (("n_bootstrap=2.5", "n_bootstrap=2.5: expected a whole number"),
                             ("n_bootstrap=many", "n_bootstrap='many': expected a whole number"),
                             ("txv_max_images=lots", "txv_max_images='lots': expected a whole number"),
                             ("split=holdout", "split: 'holdout' is not one of ['train', 'val', 'test']")):
        with pytest.raises(SettingsError, match=re.escape(f"--set {problem}")):
            apply_overrides(load_profile("demo"), [written], parameters={"n_bootstrap", "txv_max_images", "split"})


def test_a_report_profiles_own_parameters_are_typed_too(tmp_path):
    (tmp_path / "mine.yaml").write_text("train_profile: demo\nparameters:\n  n_bootstrap: 1e3\n  txv_models: []\n")
    assert apply_overrides(load_profile("mine", tmp_path), [])["parameters"] == {"n_bootstrap": 1000, "txv_models": []}
    (tmp_path / "mine.yaml").write_text("train_profile: demo\nparameters:\n  n_bootstrap: lots\n")
    with pytest.raises(SettingsError, match=re.escape("profile 'mine', parameters: n_bootstrap='lots'")):
        apply_overrides(load_profile("mine", tmp_path), [])


@pytest.mark.parametrize("stem", sorted(NOTEBOOK_SETTINGS))
def test_every_notebook_parameter_that_is_a_family_setting_is_typed_by_the_runner(stem):
    """A parameter of notebooks 03-05 that is a family's field (under its own name or a known other) is typed by
    apply_overrides: a new renamed parameter that the runner would pass through raw fails here."""
    _, renamed, not_settings = NOTEBOOK_SETTINGS[stem]
    assert {name: settings.RENAMED_NOTEBOOK_PARAMETERS[name][1] for name in renamed} == renamed
    for name in set(notebook_parameters(stem)) - not_settings:
        with pytest.raises(SettingsError, match=re.escape(f"{name}={{'a': 1}}: expected")):
            settings.typed_notebook_parameter(name, {"a": 1})
    assert settings.typed_notebook_parameter("paths", {"a": 1}) == {"a": 1}  # not a setting: as given
