"""Typed, closed params: one frozen dataclass per params.yaml section.

A section class is a frozen dataclass whose fields carry their type and, through `spec(...)`,
their allowed range or choices. `parse_section` turns the plain dict read from YAML into such an
instance and rejects anything it does not describe: an unknown key is an error naming the nearest
valid key; a wrong type or out-of-range value names the key, the value and what is allowed. Nested sections (``heads.mlp``) are nested dataclasses.

Only the standard library and PyYAML are imported here: the runner validates params before it
decides what to run, without jax or tensorflow.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import yaml

from pipeline.errors import UserError


class ParamsError(UserError, ValueError):
    """A params problem the user must fix; the message names the key and the fix."""


def spec(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
         min: float | None = None, max: float | None = None, min_exclusive: bool = False,
         min_len: int | None = None, help: str = "", affects_output: bool = True) -> Any:
    """A dataclass field with validation metadata.

    Args:
      default / default_factory: as for `dataclasses.field`.
      min, max: inclusive numeric bounds (for lists: bounds on every element).
      min_exclusive: make `min` exclusive (``C > 0``).
      min_len: smallest allowed length for list values.
      help: one line shown in error messages and `pipeline params`.
      affects_output: False for knobs that change how a stage runs but not what it writes
        (decoding threads): they stay out of the cache key, so turning them reruns nothing.
    """
    meta = {"min": min, "max": max, "min_exclusive": min_exclusive, "min_len": min_len, "help": help,
            "affects_output": affects_output}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against type `tp`; return it in canonical form or raise ParamsError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ParamsError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(repr, choices))}.{hint}")
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(key, value, arg)
            except ParamsError as e:
                errors.append(e)
        raise ParamsError(f"{key}: {value!r} is not a valid {_type_name(tp)}.")
    if tp is type(None):
        if value is None:
            return None
        raise ParamsError(f"{key}: expected null, got {value!r}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{key}: expected a {_type_name(tp)}, got {value!r}.")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return tuple(_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ParamsError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}.")
        return parse_section(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ParamsError(f"{key}: expected true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ParamsError(f"{key}: expected an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ParamsError(f"{key}: expected a number, got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ParamsError(f"{key}: expected a string, got {value!r}.")
    raise TypeError(f"unsupported params type {tp!r} for {key}")


def _check_bounds(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    if isinstance(value, tuple):
        if meta.get("min_len") is not None and len(value) < meta["min_len"]:
            raise ParamsError(f"{key}: needs at least {meta['min_len']} item(s), got {list(value)!r}.")
        for i, v in enumerate(value):
            _check_bounds(f"{key}[{i}]", v, {**meta, "min_len": None})
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None:
        bad = value <= lo if meta.get("min_exclusive") else value < lo
        if bad:
            op = ">" if meta.get("min_exclusive") else ">="
            raise ParamsError(f"{key}: {value!r} is out of range; it must be {op} {lo}.")
    if hi is not None and value > hi:
        raise ParamsError(f"{key}: {value!r} is out of range; it must be <= {hi}.")


def parse_section(cls: type, data: Mapping[str, Any] | None, prefix: str) -> Any:
    """Build a frozen section dataclass from a plain mapping, rejecting anything unknown.

    Args:
      cls: the section dataclass.
      data: the mapping read from YAML (None means all defaults).
      prefix: the dotted key of this section, for error messages (``heads.mlp``).

    Returns:
      An instance of `cls`. Its `validate()` method, if any, runs last for cross-field checks.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            near = difflib.get_close_matches(str(k), list(fields), n=1, cutoff=0.5)
            hint = f" Did you mean {prefix}.{near[0]}?" if near else ""
            raise ParamsError(f"{prefix}.{k}: unknown key.{hint} Valid keys: {', '.join(fields)}.")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}"
        value = _coerce(key, data[name], hints[name])
        _check_bounds(key, value, f.metadata)
        kwargs[name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ParamsError as e:
            # Cross-field checks raise with the field name only; add the section prefix.
            msg = str(e)
            raise ParamsError(msg if msg.startswith(prefix) else f"{prefix}.{msg}") from None
    return obj


def to_plain(obj: Any) -> Any:
    """A section (or any nested value) as plain JSON-able data, tuples as lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def key_values(obj: Any) -> Any:
    """Like `to_plain`, without the fields marked ``affects_output=False``: what a cache key hashes."""
    if dataclasses.is_dataclass(obj):
        return {f.name: key_values(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if (f.metadata or {}).get("affects_output", True)}
    if isinstance(obj, (list, tuple)):
        return [key_values(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): key_values(v) for k, v in obj.items()}
    return obj


def canonical_json(obj: Any) -> str:
    """The one canonical text of a value, used in cache keys (sorted keys, no spaces)."""
    return json.dumps(to_plain(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one ``-S key.sub=value`` override; the value is read as YAML (``3``, ``[1, 2]``, ``null``)."""
    if "=" not in text:
        raise ParamsError(f"-S {text!r}: expected KEY=VALUE, for example -S heads.seed=3.")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ParamsError(f"-S {text!r}: the key must be dotted section names, for example heads.mlp.dropout.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ParamsError(f"-S {text!r}: the value is not valid YAML ({e.problem}).") from None
    return key.split("."), value


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    """Set ``tree[path[0]][path[1]]... = value``, creating intermediate mappings."""
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ParamsError(f"-S {'.'.join(path)}: {'.'.join(path[:i + 1])} is a value, not a section.")
        node = child
    node[path[-1]] = value


def load_yaml(path: Path) -> dict:
    """Read a params file; a YAML syntax error names the file, line and column."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ParamsError(f"params file {path} does not exist; pass --params FILE or create params.yaml.") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', e)}.") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level.")
    return data


def parse_all(schema: Mapping[str, type], raw: Mapping[str, Any], source: str = "params") -> dict[str, Any]:
    """Validate every section of `raw` against `schema` (section name -> dataclass).

    Sections missing from `raw` take their defaults; an unknown section is an error that names the
    nearest known one.
    """
    for section in raw:
        if section not in schema:
            near = difflib.get_close_matches(str(section), list(schema), n=1)
            hint = f" Did you mean {near[0]}?" if near else ""
            raise ParamsError(f"{section}: unknown params section in {source}.{hint} Sections: {', '.join(schema)}.")
    return {name: parse_section(cls, raw.get(name), prefix=name) for name, cls in schema.items()}


def dump_commented(sections: Mapping[str, Any]) -> str:
    """Params as YAML with each field's help as a comment (how params.yaml is generated).

    Args:
      sections: section name -> section dataclass instance (resolved params or defaults).
    """
    lines: list[str] = []

    def scalar(v: Any) -> str:
        return yaml.safe_dump(to_plain(v), default_flow_style=True, width=10_000).strip().removesuffix("\n...")

    def emit(obj: Any, indent: int) -> None:
        pad = "  " * indent
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            help_ = f.metadata.get("help", "") if f.metadata else ""
            if dataclasses.is_dataclass(value):
                lines.append(f"{pad}{f.name}:" + (f"  # {help_}" if help_ else ""))
                emit(value, indent + 1)
                continue
            plain = to_plain(value)
            if isinstance(plain, list) and plain and isinstance(plain[0], dict):
                lines.append(f"{pad}{f.name}:" + (f"  # {help_}" if help_ else ""))
                for item in plain:
                    block = yaml.safe_dump([item], sort_keys=False, default_flow_style=False).rstrip()
                    lines.extend(f"{pad}  {ln}" for ln in block.splitlines())
                continue
            text = f"{pad}{f.name}: {scalar(value)}"
            lines.append(text + (f"  # {help_}" if help_ else ""))

    for name, section in sections.items():
        doc = (type(section).__doc__ or "").strip().splitlines()
        lines.append(f"{name}:" + (f"  # {doc[0]}" if doc and not doc[0].startswith(type(section).__name__ + "(") else ""))
        emit(section, 1)
        lines.append("")
    return "\n".join(lines)
