"""The loader: a config class from its defaults, a YAML file and command-line overrides, and back to YAML.

A config is resolved in three layers, later wins:

1. the dataclass defaults (each field's docstring is its `--help` text),
2. a YAML file given with `-c file.yaml` (nested mappings mirror the sections),
3. command-line overrides, `section.field=value` or `--section.field value` (cli.py turns them into tyro's).

Unknown keys are rejected with a did-you-mean suggestion and wrong types name the key; the checks that types
cannot express are each config class's `validate()`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from posttrain.errors import ConfigError


def field_paths(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every leaf key of a config class as 'section.field' → its type."""
    paths = {}
    for f in dataclasses.fields(cls):
        ftype = _hints(cls)[f.name]
        if dataclasses.is_dataclass(ftype):
            paths.update(field_paths(ftype, prefix + f.name + "."))
        else:
            paths[prefix + f.name] = ftype
    return paths


def unknown_key_error(key: str, valid: list[str], source: str) -> ConfigError:
    """A ConfigError for an unknown key, with the closest valid keys as a suggestion."""
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"valid keys: {', '.join(valid)}"
    return ConfigError(f"{source}: unknown config key '{key}' — {hint}")


def from_dict(cls: type, values: dict, source: str = "config", prefix: str = "", base: Any = None):
    """Build `cls` from a nested mapping, starting from `base` (or the defaults); unknown keys are errors."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'top level'}' must be a mapping of keys to values")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
    kwargs = {} if base is None else {n: getattr(base, n) for n in names}
    for key, value in values.items():
        if key not in names:
            valid = [prefix + k for k in field_paths(cls)]
            raise unknown_key_error(prefix + str(key), valid, source)
        ftype = hints[key]
        if dataclasses.is_dataclass(ftype):  # a section starts from this command's default for it, e.g. rm's data
            section = kwargs.get(key, _field_default(fields[key]))
            kwargs[key] = from_dict(ftype, value, source, prefix + key + ".", section)
        else:
            kwargs[key] = coerce(value, ftype, f"{source}: {prefix}{key}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field (export/plot) is missing
        raise ConfigError(f"{source}: {e}") from None


def _field_default(f: dataclasses.Field) -> Any:
    """The value a field gets when it is not given (None for a required one)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def load_yaml(path: str | Path, cls: type):
    """Read a YAML config file into `cls`, naming the file in every error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} — fix: check the path given to -c")
    try:
        values = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    return from_dict(cls, apply_resumed(values), source=str(p))


def apply_resumed(values: dict) -> dict:
    """A run's config.yaml keeps the settings it started with and, under `resumed:`, each resume's changes
    ({step, changes: {key: {from, to}}}); the settings in effect at the end are the first with the changes applied
    in order. Other config files pass through unchanged."""
    if not isinstance(values, dict) or "resumed" not in values:
        return values
    resumed = values["resumed"] or []
    values = copy.deepcopy({k: v for k, v in values.items() if k != "resumed"})
    for entry in resumed:
        for key, change in (entry.get("changes") or {}).items():
            *sections, name = key.split(".")
            node = values
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = change["to"]
    return values


def coerce(value: Any, ftype: Any, where: str) -> Any:
    """Check (and gently convert) a YAML value against a field type; the error names the key."""
    origin, args = typing.get_origin(ftype), typing.get_args(ftype)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:  # e.g. bool | Literal["auto"]: the first type the value fits
            try:
                return coerce(value, option, where)
            except ConfigError:
                pass
        return coerce(value, inner[-1], where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, args[0], where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if ftype is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if ftype is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if ftype is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-3" as a string
        except ValueError:
            pass
    if ftype in (int, float, str) and not (isinstance(value, ftype) and not isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {ftype.__name__}, got {value!r}")
    return value


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts (what config.yaml stores)."""
    return dataclasses.asdict(cfg)


def save_yaml(cfg: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)
