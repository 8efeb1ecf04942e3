"""Report profiles: YAML files in ``configs/``, the only place settings live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cxrutils.paths import CONFIGS_DIR


class ProfileError(ValueError):
    """A profile is missing, malformed, or lacks a required setting."""


def available_profiles(configs_dir: Path = CONFIGS_DIR) -> list[str]:
    return sorted(p.stem for p in configs_dir.glob("*.yaml"))


def load_profile(name: str, configs_dir: Path = CONFIGS_DIR) -> dict[str, Any]:
    """Read ``configs/<name>.yaml``; ``parameters`` always present."""
    path = configs_dir / f"{name}.yaml"
    if not path.is_file():
        raise ProfileError(
            f"no profile {name!r}: {path} does not exist; choose one of {available_profiles(configs_dir)}"
        )
    profile = yaml.safe_load(path.read_text()) or {}
    if not isinstance(profile, dict):
        raise ProfileError(f"{path}: expected a mapping at the top level")
    profile.setdefault("parameters", {})
    profile["name"] = name
    return profile


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as YAML, so numbers, booleans and null keep their type."""
    key, sep, raw_value = text.partition("=")
    if not sep or not key.strip():
        raise ProfileError(f"--set expects KEY=VALUE, got {text!r}")
    raw_value = raw_value.strip()
    value = yaml.safe_load(raw_value) if raw_value else ""
    # YAML 1.1 reads on/off/yes/no as booleans; only true/false mean a boolean here.
    if isinstance(value, bool) and raw_value.lower() not in ("true", "false"):
        value = raw_value
    return key.strip(), value


def apply_overrides(profile: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Profile with ``--set`` values applied and required settings checked."""
    parameters = dict(profile["parameters"])
    for text in overrides:
        key, value = parse_override(text)
        parameters[key] = value
    missing = [key for key in profile.get("required", []) if parameters.get(key) in (None, "")]
    if missing:
        sets = " ".join(f"--set {key}=..." for key in missing)
        raise ProfileError(f"profile {profile['name']!r} needs {', '.join(missing)}: add {sets}")
    return {**profile, "parameters": parameters}
