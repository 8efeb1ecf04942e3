"""Every setting, in one schema: a run's training settings and the report profiles that name them.

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
  comparison always describe one split of one dataset.

Seeds have one meaning each: ``split_seed`` draws the validation patients,
``seed`` the training run's randomness, and the notebooks' ``bootstrap_seed`` their
resamples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    cache_size: int = 256
    skip_bad_images: bool = False  # True: unreadable files are listed in the run folder, not fatal
    input_size: int = 224
    weights: str = "imagenet"  # "imagenet", "none", or a path to a cxrutils checkpoint
    head: str = "gap"  # "gap" or "lse"
    lse_r: float = 10.0
    strategy: str = "full"  # "full", "freeze_through_denseblock3", "head_only"
    class_weighting: str = "none"  # "none" or "pos_weight" (from training prevalence)
    lr: float = 1e-4
    weight_decay: float = 1e-5
    scheduler: str = "plateau"  # "plateau" (on val loss) or "cosine"
    plateau_factor: float = 0.1
    plateau_patience: int = 5
    epochs: int = 20
    early_stopping_patience: int = 10  # epochs without a better mean val AUROC
    batch_size: int = 64
    num_workers: int = 4
    seed: int = 0  # the training run's randomness (initialisation, shuffling, augmentation)
    amp: bool = True  # bf16 autocast on CUDA where supported, else fp16 with a GradScaler
    channels_last: bool = True
    compile: bool = False
    device: str = "auto"  # "auto" (cuda, then mps, then cpu), or a torch device string
    limit_train_batches: int | None = None  # for smoke tests and benchmarks
    runs_dir: str = str(RUNS_DIR)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("augment"), dict):
            values["augment"] = AugmentConfig(**values["augment"])
        return cls(**values)

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


# --------------------------------------------------------------------------- report profiles


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
    profile.setdefault("parameters", {})
    profile.setdefault("settings", {})
    profile.setdefault("train_profile", "demo")
    for key in profile["settings"]:
        if not is_setting(key):
            raise SettingsError(f"{path}: settings has {key!r}, which is not a training setting "
                                f"(known: {sorted(setting_names())})")
    profile["name"] = name
    return profile


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as YAML, so numbers, booleans and null keep their type."""
    key, sep, raw_value = text.partition("=")
    if not sep or not key.strip():
        raise SettingsError(f"--set expects KEY=VALUE, got {text!r}")
    raw_value = raw_value.strip()
    value = yaml.safe_load(raw_value) if raw_value else ""
    # YAML 1.1 reads on/off/yes/no as booleans; only true/false mean a boolean here.
    if isinstance(value, bool) and raw_value.lower() not in ("true", "false"):
        value = raw_value
    return key.strip(), value


def apply_overrides(profile: dict[str, Any], overrides: list[str], parameters: set[str] | None = None) -> dict[str, Any]:
    """The profile with ``--set`` values applied: training settings to ``settings``, the rest to ``parameters``.

    ``parameters`` are the notebook parameters that may be set (default: any key that is
    not a training setting). A key that is neither is an error naming both lists. The
    profile's ``required`` settings must end up with a value.
    """
    settings = dict(profile["settings"])
    notebook_parameters = dict(profile["parameters"])
    for text in overrides:
        key, value = parse_override(text)
        if is_setting(key):
            settings[key] = value
        elif parameters is None or key in parameters:
            notebook_parameters[key] = value
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
