"""Every setting, in one schema: a run's training settings, how runs are evaluated, compared and applied, and
the report profiles that name them.

- **Training settings** (``TrainConfig``): the data root and its split (``val_fraction``,
  ``test_fraction``, ``split_seed``), the image cache, the model, the optimiser,
  augmentation (``AugmentConfig``), the run's name and folder. A training profile,
  ``configs/train/<name>.yaml``, fills them; ``KEY=VALUE`` overrides any of them,
  nested ones by a dotted key (``augment.hflip_probability=0``).
- **Report profiles** (``configs/<name>.yaml``): which training profile every notebook
  describes (``train_profile``), the training settings this profile changes
  (``settings``, e.g. ``data_root``), and the notebooks' own parameters
  (``parameters``, e.g. ``n_bootstrap``). The reports runner hands every notebook the
  same training profile and settings, so the EDA, training, evaluation and
  comparison always describe one split of one dataset. ``REPORT_PROFILE_KEYS`` lists the
  keys a profile may have; the phantom roots profiles declare (``demo_data``,
  ``rehearsal_data``) are read once per change of the files (``declared_phantom_roots``).
- **Evaluation, comparison and inference settings** (``EvaluationSettings``,
  ``ComparisonSettings``, ``InferenceSettings``): each field's default and meaning, from
  which the command line builds its options (``cxrutils evaluate --n-bootstrap``). The
  notebooks' parameters cells and the library functions use the same defaults (the
  tests hold them equal). Every value, made in code or passed to a notebook by the
  reports runner, arrives as its field's declared type or is refused by name.

``describe_settings(family)`` lists a family's settings, defaults and meanings.

Seeds have one meaning each: ``split_seed`` draws the validation patients,
``seed`` the training run's randomness, and the notebooks' ``bootstrap_seed`` their
resamples.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import decimal
import functools
import inspect
import io
import math
import os
import textwrap
import tokenize
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Self

import yaml

from cxrutils.paths import CONFIGS_DIR, RUNS_DIR, resolve

TRAIN_CONFIGS_DIR = CONFIGS_DIR / "train"


class SettingsError(ValueError):
    """A profile is missing or malformed, or a setting is unknown or missing."""



@dataclass(frozen=True)
class AugmentConfig:
    """Batched augmentation of training images (``cxrutils.engine.augment``)."""

    rotation_degrees: float = 10.0  # uniform in [-d, d]
    scale_min: float = 0.9  # zoom factor range; > 1 zooms in
    scale_max: float = 1.1
    translate_fraction: float = 0.05  # of the image side, in x and y independently
    hflip_probability: float = 0.5

    def is_identity(self) -> bool:
        return (
            self.rotation_degrees == 0
            and self.scale_min == self.scale_max == 1
            and self.translate_fraction == 0
            and self.hflip_probability == 0
        )


_NUMBER_WORDS = {"float": "a number", "int": "a whole number", "bool": "true or false", "str": "text",
                 "tuple[str, ...]": "a list of names"}
# A whole number written with an exponent (1e3) is read up to this many digits: no setting counts past 10^18.
_LARGEST_WHOLE_NUMBER_DIGITS = 19


def typed_setting(schema: type, key: str, value: Any, prefix: str = "") -> Any:
    """``value`` as the type ``schema`` declares for ``key``, or a ``SettingsError`` naming the key, the value and the type.

    ``--set`` values and YAML arrive loosely typed: YAML 1.1 reads ``4e-4`` and ``1e3`` (no dot)
    as strings, a shell user writes ``batch_size=96/4``. A number written as text is read as
    the number (``1e3`` as the whole number 1000); anything else that does not fit is refused
    before any work starts.
    """
    declared = str(next(f.type for f in dataclasses.fields(schema) if f.name == key))
    return _typed_value(declared, f"{prefix}{key}", value)


def _typed_value(declared: str, label: str, value: Any, text_may_be_null: bool = True) -> Any:
    """``value`` as the annotation ``declared`` (``"int | None"``, ``"tuple[str, ...]"``) says, or a ``SettingsError``.

    ``label`` names the setting in the error. ``text_may_be_null``: a text setting that is
    not declared Optional may still be null (the training settings: ``data_root`` is judged
    where it is needed); a settings family's text setting may not.
    """
    kinds = [part.strip() for part in declared.split("|")]
    kind = kinds[0]
    if value is None:
        if "None" in kinds or (kind == "str" and text_may_be_null):
            return None
        raise SettingsError(f"{label} needs {_NUMBER_WORDS.get(kind, kind)}, got null")
    problem = f"{label}={value!r}: expected {_NUMBER_WORDS.get(kind, kind)}"
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise SettingsError(problem)
    if kind == "float":
        if isinstance(value, bool):
            raise SettingsError(problem)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SettingsError(problem) from None
    if kind == "int":
        if isinstance(value, bool):
            raise SettingsError(problem)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            whole = _whole_number(value)
            if whole is not None:
                return whole
        raise SettingsError(problem + (" (write the result, e.g. batch_size=24 for 96/4)" if "/" in str(value) else ""))
    if kind == "str":
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise SettingsError(problem)
    if kind == "tuple[str, ...]":
        if isinstance(value, str):  # one name is not a list of its letters
            raise SettingsError(f"{problem}, got one name as text; write [{value}]")
        if isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value):
            return tuple(value)  # a list from YAML, a notebook or JSON: equal settings compare equal
        raise SettingsError(problem + ", e.g. [first, second]")
    return value


def _whole_number(text: str) -> int | None:
    """The whole number ``text`` writes (``12``, ``1e3``, ``1_000``), or None where it writes none (``2.5``, ``96/4``)."""
    try:
        number = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        return None
    if (not number.is_finite() or number.adjusted() >= _LARGEST_WHOLE_NUMBER_DIGITS
            or number != number.to_integral_value()):
        return None
    return int(number)


@dataclass
class TrainConfig:
    """Every setting of a run; saved resolved next to it as config.json."""

    name: str = "demo"  # the run: <runs_dir>/<name>/
    data_root: str = "data/demo"  # a dataset folder in any NIH layout, or "metadata-only" (EDA only)
    images_dir: str | None = None  # images kept apart from the metadata (None: under data_root)
    val_fraction: float = 0.1  # share of train_val patients held out for validation
    test_fraction: float = 0.2  # share of patients for test, only where there are no official lists
    split_seed: int = 0  # draws the validation (and, without lists, test) patients
    cache_dir: str | None = None  # default: data/cache/<dataset folder>_<cache_size>
    cache_size: int | None = None  # film side in the cache; None: follows input_size (x 8/7: 256 for 224, 512 for 448)
    skip_bad_images: bool = False  # True: unreadable files are listed in the run folder, not fatal
    input_size: int = 224
    arch: str = "densenet121"  # the backbone: densenet121, resnet50, efficientnet_v2_s or convnext_tiny
    weights: str = "imagenet"  # "imagenet", "none", or a path to a cxrutils checkpoint
    head: str = "gap"  # "gap" or "lse"
    lse_r: float = 10.0
    strategy: str = "full"  # "full", "freeze_through_denseblock3" (all but the last stage frozen), "head_only"
    class_weighting: str = "none"  # "none" or "pos_weight" (from training prevalence)
    lr: float = 1e-4
    weight_decay: float = 1e-5
    scheduler: str = "plateau"  # "plateau" (on val loss) or "cosine"
    plateau_factor: float = 0.1
    plateau_patience: int = 5
    epochs: int = 20
    early_stopping_patience: int = 10  # epochs without a better mean val AUROC
    batch_size: int = 64  # films per batch and process; a step sees batch_size x processes x grad_accumulation_steps
    grad_accumulation_steps: int = 1  # batches per optimizer step (an epoch's last step may have fewer)
    warmup_epochs: float = 0.0  # lr rises linearly per step, from lr/(warmup steps) to lr, over these epochs (0: none)
    sync_batchnorm: bool = False  # torchrun on GPUs: BatchNorm statistics over all processes' batches (one: ignored)
    num_workers: int = 4
    seed: int = 0  # the training run's randomness (initialisation, shuffling, augmentation)
    amp: bool = True  # bf16 autocast on CUDA where supported, else fp16 with a GradScaler
    channels_last: bool = True
    compile: bool = False
    device: str = "auto"  # "auto" (cuda, then mps, then cpu), or a torch device string
    limit_train_batches: int | None = None  # for smoke tests and benchmarks
    tensorboard: bool = True  # rank 0 writes each epoch's scalars and an augmented batch to <run>/tensorboard/
    runs_dir: str = str(RUNS_DIR)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        # Here, so that a profile or a --set with an impossible value is refused before torch loads or anything is read.
        if self.grad_accumulation_steps < 1:
            raise SettingsError(f"grad_accumulation_steps={self.grad_accumulation_steps}: must be 1 (a step per batch) "
                                "or more (k: one step per k batches)")
        if not 0 <= self.warmup_epochs < math.inf:
            raise SettingsError(f"warmup_epochs={self.warmup_epochs}: must be 0 (no warmup) or a positive number of "
                                "epochs, e.g. 1 or 0.5")
        if self.arch not in ARCHITECTURES:
            raise SettingsError(f"arch={self.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
        if self.cache_size is None:
            # The cache holds films a little larger than the network's input, so zoom and crop have pixels to use.
            self.cache_size = round(self.input_size * 8 / 7)
        # The name is a folder under runs_dir and under reports/: one plain path component, never a way out of them.
        if (not self.name or self.name in (".", "..") or any(separator in self.name for separator in ("/", "\\"))
                or not self.name.isprintable()):
            raise SettingsError(f"name={self.name!r}: a run's name is one folder name (no / or \\, not . or .., "
                                "no control characters), e.g. nih_448 or seed1")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        typed = {key: typed_setting(cls, key, value) for key, value in values.items() if key != "augment"}
        augment = values.get("augment")
        if isinstance(augment, dict):
            unknown = sorted(set(augment) - {f.name for f in dataclasses.fields(AugmentConfig)})
            if unknown:
                raise SettingsError(f"unknown augment setting(s) {unknown}; known: "
                                    f"{sorted(f.name for f in dataclasses.fields(AugmentConfig))}")
            augment = AugmentConfig(**{key: typed_setting(AugmentConfig, key, value, prefix="augment.")
                                       for key, value in augment.items()})
        if augment is not None:
            typed["augment"] = augment
        return cls(**typed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        return resolve(self.runs_dir) / self.name


def setting_names() -> set[str]:
    """Every training setting's key, nested ones dotted (``augment.hflip_probability``)."""
    names = set()
    for item in dataclasses.fields(TrainConfig):
        if item.name == "augment":
            names.update(f"augment.{nested.name}" for nested in dataclasses.fields(AugmentConfig))
        names.add(item.name)
    return names


def is_setting(key: str) -> bool:
    return key in setting_names()


def set_setting(values: dict[str, Any], key: str, value: Any) -> None:
    """``values[key] = value`` for a dotted key (``augment.scale_min``); an unknown key is an error naming it."""
    if not is_setting(key):
        raise SettingsError(f"unknown training setting {key!r}; known: {sorted(setting_names())}")
    *parents, leaf = key.split(".")
    target = values
    for parent in parents:
        nested = target.get(parent)
        if isinstance(nested, AugmentConfig):
            nested = dataclasses.asdict(nested)
        target[parent] = dict(nested or {})
        target = target[parent]
    target[leaf] = value


def load_train_config(profile: str, overrides: list[str] | dict[str, Any] | None = None) -> TrainConfig:
    """``configs/train/<profile>.yaml`` (or a YAML path) with overrides (``key=value`` strings or a dict)."""
    path = Path(profile) if profile.endswith((".yaml", ".yml")) else TRAIN_CONFIGS_DIR / f"{profile}.yaml"
    path = resolve(path)
    if not path.is_file():
        known = sorted(p.stem for p in TRAIN_CONFIGS_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no training profile {profile!r} ({path}); known profiles: {known}")
    values = yaml.safe_load(path.read_text()) or {}
    pairs = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in pairs:
        set_setting(values, key, value)
    return TrainConfig.from_dict(values)


# --------------------------------------------------------------------------- evaluation, comparison, inference

# Choices that higher layers define. This base layer imports none of them, so it keeps copies,
# and tests/base/test_settings.py holds each equal to its source.
# The largest film decoded, in pixels: 40 MP is 6,300 px square, above every chest detector and digitiser in use
# (NIH 1024 px, CheXpert and MIMIC about 3,000 px, 43 cm at 100 um is 4,300 px). Decoding one such film takes
# at most about 1 GB (16-bit values and their float64 windowing). cxrutils.data.film_files applies it.
DEFAULT_MAX_PIXELS = 40_000_000
MAX_PIXELS_VARIABLE = "CXRUTILS_MAX_IMAGE_PIXELS"
THRESHOLD_METHODS: tuple[str, ...] = ("youden", "max_f1")  # the one list: cxrutils.stats.thresholds imports it
# Recalibration fitted on validation and shown beside the raw model: the one list, cxrutils.stats.calibration imports it.
RECALIBRATION_METHODS: tuple[str, ...] = ("none", "platt", "temperature")
SPLITS: tuple[str, ...] = ("train", "val", "test")  # the one list: cxrutils.engine.predict imports it
# The one list of backbones: cxrutils.engine.model builds each and checks its registry against this.
ARCHITECTURES: tuple[str, ...] = ("densenet121", "resnet50", "efficientnet_v2_s", "convnext_tiny")
# A copy of cxrutils.compare.txv.TXV_MODEL_NAMES (the keys of its provenance table; a test holds them equal), so
# the command line can offer the choices without importing torch.
TXV_MODEL_NAMES: tuple[str, ...] = (
    "densenet121-res224-nih", "densenet121-res224-all", "densenet121-res224-rsna", "resnet50-res512-all",
    "densenet121-res224-pc", "densenet121-res224-chex", "densenet121-res224-mimic_nb", "densenet121-res224-mimic_ch",
)
# The recipes' comparator (NIH-trained), and one that never saw NIH films; cxrutils.compare.provenance imports it.
DEFAULT_TXV_MODELS: tuple[str, ...] = ("densenet121-res224-nih", "densenet121-res224-pc")


def _setting(default: Any, meaning: str, **command_line: Any) -> Any:
    """A field of a settings family: its default and one-line meaning, and how the command line spells it.

    ``command_line`` may hold ``flag`` (default ``--name-with-dashes``, or ``--no-name`` for a
    setting that is on by default), ``dest``, ``metavar``, ``choices``, and ``default_text``: how
    ``--help`` says what a default of None means.
    """
    return field(default=default, metadata={"help": meaning, **command_line})


def _shown_default(item: dataclasses.Field) -> str:
    if item.default is None:
        return item.metadata.get("default_text", "None")
    if isinstance(item.default, bool):
        return "on" if item.default else "off"
    if isinstance(item.default, tuple):
        return ", ".join(map(str, item.default))
    return str(item.default)


def _value_type(annotation: Any) -> type:
    """``int | None`` -> int, ``tuple[str, ...]`` -> str: what one command-line value is read as."""
    return next((t for t in typing.get_args(annotation) if t is not type(None)), annotation)


def _check_choices(label: str, value: Any, choices: tuple[str, ...] | None) -> None:
    """A ``SettingsError`` naming the setting when ``value`` (or a name in a list of names) is not one of ``choices``."""
    names = value if isinstance(value, tuple) else () if value is None else (value,)
    wrong = [name for name in names if choices and name not in choices]
    if wrong:
        raise SettingsError(f"{label}: {', '.join(map(repr, wrong))} is not one of {list(choices)}")


class _SettingsFamily:
    """The command line and checks of a frozen dataclass of settings, generated from its fields."""

    def __post_init__(self) -> None:
        # Every field as its declared type, whether the settings come from the command line, a notebook or code:
        # a notebook's n_bootstrap="1e3" is the number 1000, a list of names a tuple; anything else refused by name.
        for item in dataclasses.fields(self):
            value = _typed_value(str(item.type), item.name, getattr(self, item.name), text_may_be_null=False)
            _check_choices(item.name, value, item.metadata.get("choices"))
            object.__setattr__(self, item.name, value)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One option per setting: ``n_bootstrap`` is ``--n-bootstrap``; a repeatable option for a list."""
        types = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            metadata = item.metadata
            default = item.default
            flag = metadata.get("flag") or "--" + ("no-" if default is True else "") + item.name.replace("_", "-")
            repeatable = "repeatable; " if isinstance(default, tuple) else ""
            help_text = f"{metadata['help']} ({repeatable}default: {_shown_default(item)})"
            if "metavar" in metadata and "choices" in metadata:  # a short name in the usage line, the list here
                help_text += f"; one of {', '.join(metadata['choices'])}"
            option: dict[str, Any] = {"dest": metadata.get("dest", item.name),
                                      "help": help_text.replace("%", "%%")}  # argparse formats % in help
            if "metavar" in metadata:
                option["metavar"] = metadata["metavar"]
            if isinstance(default, bool):
                parser.add_argument(flag, action="store_false" if default else "store_true", **option)
            elif isinstance(default, tuple):  # nothing given keeps the default list
                parser.add_argument(flag, action="append", default=[], type=_value_type(types[item.name]),
                                    choices=metadata.get("choices"), **option)
            else:
                parser.add_argument(flag, default=default, type=_value_type(types[item.name]),
                                    choices=metadata.get("choices"), **option)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> Self:
        """The settings ``add_arguments``'s options were given (or their defaults)."""
        values = {}
        for item in dataclasses.fields(cls):
            value = getattr(args, item.metadata.get("dest", item.name))
            values[item.name] = (tuple(value) or item.default) if isinstance(item.default, tuple) else value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The settings by name: the keyword arguments of the library function the family configures."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EvaluationSettings(_SettingsFamily):
    """How a run's split is scored: ``cxrutils.evaluate.evaluate_run``, notebook 03, ``cxrutils evaluate``."""

    split: str = _setting("test", "the split to score: test is held out; val and train give optimistic numbers",
                          choices=SPLITS)
    threshold_method: str = _setting("youden", "which validation thresholds of the run's thresholds.json to apply",
                                     choices=THRESHOLD_METHODS)
    n_bootstrap: int = _setting(1000, "patient-bootstrap resamples for every interval")
    bootstrap_seed: int = _setting(0, "seeds the bootstrap resamples and the random-heatmap baseline")
    tta_hflip: bool = _setting(False, "also score each film mirrored and average (films are not left-right symmetric)")
    gradcam_layer: str = _setting("auto", "auto (the deepest stage with at least a 4 x 4 grid), or a stage of the run's "
                                          "arch: denseblock1-4 (densenet121), layer1-4 (resnet50), stage1-4 "
                                          "(efficientnet_v2_s, convnext_tiny)")
    gallery_per_kind: int = _setting(4, "films per gallery row: true positives, false positives, false negatives")
    subgroup_min_positive_patients: int = _setting(5, "a subgroup figure needs at least this many patients (not "
                                                      "films) with a positive film in the group")
    target_sensitivity: float = _setting(0.90, "the fixed-sensitivity operating point: the highest validation "
                                               "threshold whose validation sensitivity reaches this")
    target_specificity: float = _setting(0.95, "the fixed-specificity operating point: the most sensitive validation "
                                               "threshold whose validation specificity reaches this")
    calibration_bins: int = _setting(10, "bins of the reliability diagrams and ECE (equal-mass and equal-width alike)")
    recalibration: str = _setting("platt", "a recalibration fitted per finding on validation predictions only and "
                                           "shown beside the raw model, never in its place (none: skip it)",
                                  choices=RECALIBRATION_METHODS)


@dataclass(frozen=True)
class ComparisonSettings(_SettingsFamily):
    """How a run is set beside TorchXRayVision: ``cxrutils.compare.compare_run``, notebook 04, ``cxrutils compare``."""

    txv_models: tuple[str, ...] = _setting(DEFAULT_TXV_MODELS, "the TorchXRayVision models to compare with",
                                           flag="--model", dest="models", metavar="MODEL", choices=TXV_MODEL_NAMES)
    weights_dir: str | None = _setting(None, "the folder of the TorchXRayVision release files",
                                       default_text="~/.torchxrayvision/models_data")
    split: str = _setting("test", "the split both models score")
    n_bootstrap: int = _setting(1000, "patient-bootstrap resamples for every interval")
    bootstrap_seed: int = _setting(0, "seeds the bootstrap resamples (and the test-only random weights)")
    threshold_method: str = _setting("youden", "which validation thresholds (chosen on our validation films) to apply",
                                     choices=THRESHOLD_METHODS)
    max_images: int | None = _setting(None, "compare at most this many films per split: a seeded sample of whole "
                                            "patients, for CPU runs", default_text="every film")
    subgroup_min_positive_patients: int = _setting(5, "a subgroup figure needs at least this many patients (not "
                                                      "films) with a positive film in the group")
    target_sensitivity: float = _setting(0.90, "the fixed-sensitivity operating point, for both models: the highest "
                                               "threshold whose sensitivity on our validation films reaches this")
    target_specificity: float = _setting(0.95, "the fixed-specificity operating point, for both models: the most "
                                               "sensitive threshold whose specificity on our validation films "
                                               "reaches this")


@dataclass(frozen=True)
class InferenceSettings(_SettingsFamily):
    """How a run scores new films: ``cxrutils.inference.infer_films``, notebook 05, ``cxrutils infer``."""

    threshold_method: str = _setting("youden", "which validation thresholds of the run's thresholds.json make the calls",
                                     choices=THRESHOLD_METHODS)
    batch_size: int | None = _setting(None, "films per batch", default_text="the run's")
    workers: int | None = _setting(None, "loader processes that decode films (0: this one)",
                                   default_text="a core each but one, at most 8, none for fewer than 2 batches")
    device: str = _setting("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda:0, ...")
    overlays: bool = _setting(True, "a Grad-CAM overlay per finding called positive; --no-overlays skips them "
                                    "(faster on large folders)")
    max_pixels: int | None = _setting(None, "refuse films whose header declares more pixels than this",
                                      default_text=f"${MAX_PIXELS_VARIABLE}, else {DEFAULT_MAX_PIXELS:,}")


SETTINGS_FAMILIES: dict[str, type[_SettingsFamily]] = {
    "evaluation": EvaluationSettings,
    "comparison": ComparisonSettings,
    "inference": InferenceSettings,
}
# Notebook parameters that hold a family's setting under another name: notebook 04's txv_max_images is the
# comparison's max_images (notebook 07's max_films is a setting of its own).
RENAMED_NOTEBOOK_PARAMETERS: dict[str, tuple[str, str]] = {"txv_max_images": ("comparison", "max_images")}


@functools.cache
def _family_fields_of_parameters() -> dict[str, list[dataclasses.Field]]:
    """Notebook parameter -> every family field it sets: notebooks 03, 04 and 05 name their parameters after the
    fields (``n_bootstrap`` is evaluation's and comparison's alike), bar ``RENAMED_NOTEBOOK_PARAMETERS``."""
    fields: dict[str, list[dataclasses.Field]] = {}
    for family in SETTINGS_FAMILIES.values():
        for item in dataclasses.fields(family):
            fields.setdefault(item.name, []).append(item)
    for parameter, (family_name, name) in RENAMED_NOTEBOOK_PARAMETERS.items():
        fields[parameter] = [item for item in dataclasses.fields(SETTINGS_FAMILIES[family_name]) if item.name == name]
    return fields


def typed_notebook_parameter(key: str, value: Any) -> Any:
    """A notebook parameter that is a settings family's field, as that field's type (a list of names as a list,
    which papermill passes); any other parameter as it is. A ``SettingsError`` names the parameter, the value and
    the type: ``cxrutils reports --set n_bootstrap=1e3`` hands the notebook the number 1000, not the text."""
    for item in _family_fields_of_parameters().get(key, []):
        value = _typed_value(str(item.type), key, value, text_may_be_null=False)
        _check_choices(key, value, item.metadata.get("choices"))
    return list(value) if isinstance(value, tuple) else value


@functools.cache
def _trailing_comments(config_class: type) -> dict[str, str]:
    """Each field's trailing ``# comment`` in the class's source: the training settings' meanings sit beside them."""
    source = textwrap.dedent(inspect.getsource(config_class))
    comment_on_line = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT and token.line[: token.start[1]].strip()  # code before it: trailing
    }
    class_node = ast.parse(source).body[0]
    assert isinstance(class_node, ast.ClassDef)
    return {
        statement.target.id: comment_on_line[statement.end_lineno]
        for statement in class_node.body
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
        and statement.end_lineno in comment_on_line
    }


def settings_table(family: str) -> list[tuple[str, Any, str]]:
    """``(name, default, meaning)`` of every setting of ``family``: train, evaluation, comparison or inference."""
    if family == "train":
        rows = []
        comments = _trailing_comments(TrainConfig)
        for item in dataclasses.fields(TrainConfig):
            if item.name == "augment":
                augment_comments = _trailing_comments(AugmentConfig)
                rows.extend((f"augment.{nested.name}", nested.default, augment_comments.get(nested.name, ""))
                            for nested in dataclasses.fields(AugmentConfig))
            else:
                rows.append((item.name, item.default, comments.get(item.name, "")))
        return rows
    if family not in SETTINGS_FAMILIES:
        raise SettingsError(f"no settings family {family!r}; known: {['train', *SETTINGS_FAMILIES]}")
    return [
        (item.name, item.default, item.metadata["help"]
         + (f" (None: {item.metadata['default_text']})" if "default_text" in item.metadata else ""))
        for item in dataclasses.fields(SETTINGS_FAMILIES[family])
    ]


def describe_settings(family: str) -> str:
    """``settings_table(family)`` as lines of text: ``  name = default   meaning`` (a command's --help epilog)."""
    rows = [(f"{name} = {default!r}", meaning) for name, default, meaning in settings_table(family)]
    width = max(len(assignment) for assignment, _ in rows)
    return "\n".join(f"  {assignment:<{width}}  {meaning}".rstrip() for assignment, meaning in rows)


# --------------------------------------------------------------------------- report profiles


# The schema of configs/<name>.yaml: every top-level key a report profile may have, and what it means.
REPORT_PROFILE_KEYS: dict[str, str] = {
    "description": "one line for people: what the profile is for",
    "notebooks": "the notebooks it runs, e.g. [01_eda] (default: every one but those run on request: 06, 07)",
    "train_profile": "the training profile (configs/train/) every notebook describes (default: demo)",
    "required": "training settings that must have a value, e.g. [data_root] (--set data_root=...)",
    "settings": "training settings that differ from the training profile, e.g. data_root",
    "parameters": "notebook parameters, e.g. integrity_check or n_bootstrap",
    "demo_data": "a phantom demo root built on first use: root, then cxrutils.demo.roots.DemoSpec's fields",
    "rehearsal_data": "a full-size rehearsal root: root, then cxrutils.demo.roots.RehearsalSpec's fields",
}
# The keys above that declare a phantom root, which notebooks build where it is missing.
PHANTOM_ROOT_KEYS = ("demo_data", "rehearsal_data")


def available_profiles(configs_dir: Path = CONFIGS_DIR) -> list[str]:
    return sorted(p.stem for p in configs_dir.glob("*.yaml"))


def load_profile(name: str, configs_dir: Path = CONFIGS_DIR) -> dict[str, Any]:
    """Read ``configs/<name>.yaml``: ``train_profile``, ``settings`` and ``parameters`` always present."""
    path = configs_dir / f"{name}.yaml"
    if not path.is_file():
        raise SettingsError(
            f"no profile {name!r}: {path} does not exist; choose one of {available_profiles(configs_dir)}"
        )
    profile = yaml.safe_load(path.read_text()) or {}
    if not isinstance(profile, dict):
        raise SettingsError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(profile) - set(REPORT_PROFILE_KEYS))
    if unknown:
        raise SettingsError(f"{path}: unknown key(s) {unknown}; a report profile has only "
                            f"{list(REPORT_PROFILE_KEYS)} (training settings go under settings:, "
                            f"notebook parameters under parameters:)")
    profile.setdefault("parameters", {})
    profile.setdefault("settings", {})
    profile.setdefault("train_profile", "demo")
    for key in profile["settings"]:
        if not is_setting(key):
            raise SettingsError(f"{path}: settings has {key!r}, which is not a training setting "
                                f"(known: {sorted(setting_names())})")
    profile["name"] = name
    return profile


class DeclaredPhantomRoot(NamedTuple):
    """A phantom root a report profile declares: which key (``demo_data``), its spec's values, and the file."""

    key: str
    spec: dict[str, Any]
    profile_path: Path


def declared_phantom_roots(configs_dir: Path = CONFIGS_DIR) -> dict[Path, DeclaredPhantomRoot]:
    """Every phantom root the report profiles in ``configs_dir`` declare, by resolved folder.

    Notebooks call this on every start, so the profiles are parsed once and again only
    when a file in ``configs_dir`` changes (its name, size or modification time).
    """
    stamps = tuple((path.name, path.stat().st_mtime_ns, path.stat().st_size)
                   for path in sorted(configs_dir.glob("*.yaml")))
    declared = _declared_phantom_roots(configs_dir, stamps)
    # Copies, so that a caller changing a spec leaves the cached one as the files say.
    return {root: declared_root._replace(spec=dict(declared_root.spec)) for root, declared_root in declared.items()}


@functools.lru_cache(maxsize=8)
def _declared_phantom_roots(configs_dir: Path, stamps: tuple[tuple[str, int, int], ...]) -> dict[Path, DeclaredPhantomRoot]:
    del stamps  # part of the cache key only
    roots: dict[Path, DeclaredPhantomRoot] = {}
    for name in available_profiles(configs_dir):
        profile = load_profile(name, configs_dir)
        for key in PHANTOM_ROOT_KEYS:
            if profile.get(key):
                spec = dict(profile[key])
                if "root" not in spec:
                    raise SettingsError(f"{configs_dir / f'{name}.yaml'}: {key} needs root: (the folder to build)")
                roots[resolve(spec.pop("root"))] = DeclaredPhantomRoot(key, spec, configs_dir / f"{name}.yaml")
    return roots


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as YAML, so numbers, booleans and null keep their type."""
    key, sep, raw_value = text.partition("=")
    if not sep or not key.strip():
        raise SettingsError(f"--set expects KEY=VALUE, got {text!r}")
    raw_value = raw_value.strip()
    try:
        value = yaml.safe_load(raw_value) if raw_value else ""
    except yaml.YAMLError as err:
        problem = str(err).splitlines()[0]
        raise SettingsError(f"--set {key.strip()}={raw_value}: the value is not one YAML can read ({problem}); "
                            f"quote it as text, e.g. --set '{key.strip()}=\"{raw_value}\"'") from err
    # YAML 1.1 reads on/off/yes/no as booleans; only true/false mean a boolean here.
    if isinstance(value, bool) and raw_value.lower() not in ("true", "false"):
        value = raw_value
    return key.strip(), value


def apply_overrides(profile: dict[str, Any], overrides: list[str], parameters: set[str] | None = None) -> dict[str, Any]:
    """The profile with ``--set`` values applied: training settings to ``settings``, the rest to ``parameters``.

    ``parameters`` are the notebook parameters that may be set (default: any key that is
    not a training setting). A key that is neither is an error naming both lists. A
    parameter that is a settings family's field arrives as its type or is refused
    (``typed_notebook_parameter``). The profile's ``required`` settings must end up with a value.
    """
    settings = dict(profile["settings"])
    try:
        notebook_parameters = {key: typed_notebook_parameter(key, value) for key, value in profile["parameters"].items()}
    except SettingsError as err:
        raise SettingsError(f"profile {profile.get('name')!r}, parameters: {err}") from err
    for text in overrides:
        key, value = parse_override(text)
        if is_setting(key):
            settings[key] = value
        elif parameters is None or key in parameters:
            try:
                notebook_parameters[key] = typed_notebook_parameter(key, value)
            except SettingsError as err:
                raise SettingsError(f"--set {err}") from err
        else:
            raise SettingsError(
                f"--set {key}: neither a training setting nor a parameter of the selected notebooks; "
                f"notebook parameters: {sorted(parameters)}; training settings: {sorted(setting_names())}"
            )
    missing = [key for key in profile.get("required", []) if settings.get(key) in (None, "")]
    if missing:
        sets = " ".join(f"--set {key}=..." for key in missing)
        raise SettingsError(f"profile {profile['name']!r} needs {', '.join(missing)}: add {sets}")
    return {**profile, "settings": settings, "parameters": notebook_parameters}


def profile_train_config(profile: dict[str, Any]) -> TrainConfig:
    """The training settings a report profile describes: its training profile with its settings applied."""
    return load_train_config(profile["train_profile"], profile["settings"])


def run_dir_of(train_profile: str, settings: dict[str, Any] | None = None) -> Path:
    """Where the run of a training profile (with ``settings``) lives: ``<runs_dir>/<name>``."""
    return load_train_config(train_profile, settings or {}).run_dir


def describe(config: TrainConfig) -> dict[str, Any]:
    """The settings as a flat dict (augment's dotted), for display."""
    flat = {k: v for k, v in config.to_dict().items() if k != "augment"}
    flat.update({f"augment.{k}": v for k, v in dataclasses.asdict(config.augment).items()})
    return flat
