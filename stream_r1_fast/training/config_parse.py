"""Reading training configs: YAML files and packaged recipes, ``key=value`` overrides, and
the loose typing that turns a raw mapping into the config dataclasses.

Overrides (``stream-r1 train --config cfg.yaml optim.lr_generator=1e-5 train.steps=10``):
:func:`apply_overrides` sets dotted keys on the *raw* mapping read from the YAML file, so the
one schema (the dataclasses of :mod:`~stream_r1_fast.training.config` and
:func:`~stream_r1_fast.training.config_checks.validate`) checks file and overrides alike and
every error names the key. Values are YAML scalars, lists or mappings
(``rollout.steps=[1000,500]``, ``train.device=null``); a string field takes the text as given
when YAML would read it as something else (``train.output_dir=2024-01-01``). This is a
small parser on top of ``yaml.safe_load`` rather than OmegaConf: OmegaConf's dotlist merge
would add a dependency and a second type system (its structured configs raise their own
errors, which do not list the valid keys), while the only thing it would save here is the
``a.b.c=value`` split. PyYAML reads ``1e-5`` (no dot) as a string; the loader used here
(:func:`yaml_load`) reads it as a float, as YAML 1.2 does.

The functions that walk the schema take it as ``schema`` (the top-level dataclass), so this
module does not import the dataclasses; :mod:`~stream_r1_fast.training.config` binds them.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from stream_r1_fast.training.errors import ConfigError

# ---------------------------------------------------------------------- reading YAML


def _yaml_loader():
    """yaml.SafeLoader that also reads ``1e-5`` / ``3E+2`` (no dot) as floats, as YAML 1.2 does."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def yaml_load(text: str):
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)


PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def packaged_configs() -> dict[str, Path]:
    """``{name: path}`` of the recipes shipped in the package (``stream_r1_fast/configs``)."""
    if not PACKAGED_CONFIGS.is_dir():
        return {}
    return {p.stem: p for p in sorted(PACKAGED_CONFIGS.glob("*.yaml"))}


def describe_config(path: Path) -> str:
    """The first comment line of a recipe (its one-line description), or ''."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().rstrip(":")
            return text.split(". ")[0].rstrip(".")
        if line.strip():
            break
    return ""


def resolve_config_path(spec: str | Path) -> Path:
    """``spec`` -> the YAML file: an existing path as it is; a bare name (no ``.yaml`` / ``.yml``
    suffix, no folder) that is not a path -> the packaged recipe of that name. FileNotFoundError
    (saying which names exist) otherwise."""
    path = Path(spec)
    if path.exists():
        return path
    name = str(spec)
    packaged = packaged_configs()
    if path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
        if name in packaged:
            return packaged[name]
        raise FileNotFoundError(f"config file {name} does not exist, and {name!r} is not a packaged recipe "
                                f"(packaged: {', '.join(packaged) or 'none'}; stream-r1 train --list-configs)")
    raise FileNotFoundError(f"config file {path} does not exist")


def read_yaml_config(spec: str | Path) -> dict:
    """The raw mapping of a config file (or packaged recipe name); ConfigError names the file
    (and line) of a YAML error."""
    import yaml

    path = resolve_config_path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist (it is a folder)")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc})") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data or {}



# ---------------------------------------------------------------------- key=value overrides


def field_hint(path: list[str], schema):
    """The type hint of dotted ``path`` in the schema, None past a dataclass (inside a dict
    field such as ``reward.kwargs``); ConfigError naming the key (and listing the valid keys)
    for a key the schema does not have."""
    cls = schema
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            prefix = ".".join(path[:i])
            valid = sorted(f.name for f in dataclasses.fields(cls))
            raise ConfigError(f"unknown config key '{prefix + '.' if prefix else ''}{part}'; valid keys: {valid}")
        cls = hints[part]
    return cls


def parse_override(item, schema) -> tuple[str, object]:
    """``"a.b=value"`` -> ``("a.b", value)``: the value read as YAML (scalars, ``[lists]``,
    ``{mappings}``, ``null``); a ``(key, value)`` pair passes through."""
    import yaml

    if isinstance(item, tuple):
        return item
    key, sep, text = str(item).partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} must be KEY=VALUE with a dotted key, e.g. optim.lr_generator=1e-5")
    hint = field_hint(key.split("."), schema)
    try:
        value = yaml_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = _Unparsed(text)
    if hint is not None and not dataclasses.is_dataclass(hint) and _takes_str(hint):
        # A string field takes the text as written when YAML reads it as another type
        # (``train.output_dir=2024-01-01``, ``data.negative_prompt=a: b``), but ``null`` stays None.
        ok = isinstance(value, str) or (value is None and type(None) in (typing.get_args(hint) or (hint,)))
        if not ok:
            try:
                check_type(value, hint, key)
            except ConfigError:
                value = text
    if isinstance(value, _Unparsed):
        raise ConfigError(f"override {item!r}: the value is not valid YAML")
    return key, value


class _Unparsed(str):
    pass


def _takes_str(hint) -> bool:
    return hint is str or str in typing.get_args(hint)


def apply_overrides(data: dict, overrides: typing.Sequence, schema) -> dict:
    """A copy of the raw config mapping ``data`` with each override set (later ones win):
    ``"section.key=value"`` or ``("section.key", value)``; deeper keys go into dict fields
    (``reward.kwargs.path=/data/reward``). The result is validated by ``schema.from_dict``
    like a file; an unknown key raises ConfigError at once, listing the valid keys."""
    import copy

    data = copy.deepcopy(data or {})
    for item in overrides:
        key, value = parse_override(item, schema)
        parts = key.split(".")
        field_hint(parts, schema)  # unknown keys: the schema's error, for pairs too
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}={value!r}: config key '{'.'.join(parts[:i + 1])}' is a value, "
                                  "not a section")
            node = child
        node[parts[-1]] = value
    return data


def config_diff(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """``[(dotted key, old value, new value)]`` of the leaves that differ between two config
    mappings (a key missing on one side counts as ``<absent>``)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, name + ".")
        elif a != b:
            out.append((name, a, b))
    return out


def build_dataclass(cls, data, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys: {sorted(fields)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build_dataclass(hint, value, f"{prefix}{key}.")
        else:
            kwargs[key] = check_type(value, hint, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_type(value, hint, name: str):
    """Loose YAML typing: ints pass as floats; ``X | None`` takes None; lists and dicts by kind."""
    args = typing.get_args(hint)
    options = args if args else (hint,)
    for opt in options:
        if opt is type(None) and value is None:
            return value
        if opt is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if opt is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if opt is bool and isinstance(value, bool):
            return value
        if opt is str and isinstance(value, str):
            return value
        if typing.get_origin(opt) in (list, dict) or opt in (list, dict):
            kind = typing.get_origin(opt) or opt
            if isinstance(value, kind):
                return value
    names = [getattr(o, "__name__", str(o)) for o in options]
    raise ConfigError(f"config key {name!r} must be {' or '.join(names)}, got {value!r}")


__all__ = ["PACKAGED_CONFIGS", "apply_overrides", "build_dataclass", "check_type", "config_diff", "describe_config",
           "field_hint", "packaged_configs", "parse_override", "read_yaml_config", "resolve_config_path", "yaml_load"]
