"""Config dataclasses: one docstring per field, loadable from TOML/JSON, overridable on the CLI.

A config is a plain (usually frozen) dataclass whose fields each carry an attribute docstring:

    @dataclass(frozen=True)
    class TrainConfig:
        lr: float = 5e-4
        '''Peak learning rate.'''

`field_docs` reads those docstrings from the source (so they double as `--help` text), `from_dict`
builds a config from a mapping with a clear error for unknown keys (suggesting the closest) and
wrong types, and `add_arguments` exposes chosen fields as argparse options whose help shows the
docstring and the default.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import tomllib
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import SparsesteerError, did_you_mean

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

C = TypeVar("C", bound="DataclassInstance")  # a config dataclass (its fields are read)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Map field name -> the docstring written right below it in the class body."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _resolve_hints(cls: type) -> dict[str, Any]:
    """Field types, each resolved in the module of the class that declares it (option groups)."""
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a JSON/TOML value to the annotated type; raise a SparsesteerError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except SparsesteerError as e:
                errors.append(str(e))
        raise SparsesteerError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise SparsesteerError(
                f"{where}: {value!r} is not one of {', '.join(map(repr, args))}{did_you_mean(str(value), map(str, args))}"
            )
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise SparsesteerError(f"{where}: expected a table/object, got {value!r}")
        return from_dict(tp, value, where=where)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise SparsesteerError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise SparsesteerError(f"{where}: expected a table/object, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise SparsesteerError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise SparsesteerError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else int(value)
            except ValueError:
                pass
        raise SparsesteerError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise SparsesteerError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SparsesteerError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise SparsesteerError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type[C], data: dict[str, Any], *, where: str | None = None) -> C:
    """Build dataclass `cls` from a mapping; unknown keys and bad types are clear errors."""
    where = where or cls.__name__
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown_keys = [k for k in data if k not in names]
    if unknown_keys:
        k = unknown_keys[0]
        raise SparsesteerError(
            f"{where}: unknown config key {k!r}{did_you_mean(k, names)}; valid keys: {', '.join(names)}"
        )
    hints = _resolve_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> JSON-friendly dict (tuples become lists, Paths strings)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return clean(dataclasses.asdict(obj))


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise SparsesteerError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            import json

            return json.loads(text)
        return tomllib.loads(text)
    except Exception as e:  # noqa: BLE001 - both parsers raise their own types
        raise SparsesteerError(f"cannot parse config file {path}: {e}") from None


def help_for(cls: type, name: str) -> str:
    """'<docstring> (default: X)' for an argparse option."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    f = fields[name]
    doc = field_docs(cls).get(name, "")
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
    else:
        return doc
    if isinstance(default, (tuple, list)):
        default = ",".join(map(str, default)) or "none"
    return f"{doc} (default: {default})".replace("%", "%%")


REPEATABLE = {"repeatable": True}
"""Field metadata: repeated flags add up (`--latent 3 --latent 7`). List fields of strings always do;
numeric grids (`--lams 0,1,2`) take a comma list and, as argparse does, the last flag wins."""


class _CommaList(argparse.Action):
    """A list option given as a comma list; a repeated flag replaces the earlier one."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, [v.strip() for v in str(values).split(",") if v.strip()])


class _Extend(argparse.Action):
    """A list option given as repeated flags and/or comma lists: --hook a --hook b,c -> [a, b, c]."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        items += [v.strip() for v in str(values).split(",") if v.strip()]
        setattr(namespace, self.dest, items)


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    names: list[str] | None = None,
    *,
    flags: dict[str, str] | None = None,
    exclude: tuple[str, ...] = (),
    required: bool = True,
    metavars: dict[str, str] | None = None,
) -> None:
    """Add `--field-name` options for the chosen fields of `cls` (all but `exclude` when `names` is
    None); their argparse default is None so that only flags actually given override a config file.
    Fields without a default are required flags unless `required=False` (a config file may give them).
    List fields (list[X], tuple[X, ...]) take comma lists; repeated flags add up for lists of strings
    and fields marked `REPEATABLE`, else the last one wins."""
    flags = flags or {}
    metavars = metavars or {}
    hints = _resolve_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if (names is not None and f.name not in names) or f.name in exclude or not f.init:
            continue
        tp = hints[f.name]
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        kwargs: dict[str, Any] = dict(dest=f.name, default=None, help=help_for(cls, f.name))
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        if required and no_default:
            kwargs["required"] = True
        origin = typing.get_origin(tp)
        inner = (
            [a for a in typing.get_args(tp) if a is not type(None)] if origin in (typing.Union, types.UnionType) else []
        )
        if inner and len(inner) == 1:
            tp, origin = inner[0], typing.get_origin(inner[0])
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kwargs["choices"] = list(typing.get_args(tp))
        elif origin is list or (origin is tuple and (typing.get_args(tp)[1:] == (Ellipsis,))):
            repeat = typing.get_args(tp)[:1] == (str,) or f.metadata.get("repeatable", False)
            kwargs["action"] = _Extend if repeat else _CommaList
            kwargs["metavar"] = metavars.get(f.name, f.name.upper().removesuffix("S"))
        else:
            kwargs["metavar"] = metavars.get(f.name, f.name.upper())
        parser.add_argument(flag, **kwargs)


def from_args(
    cls: type[C], args: argparse.Namespace, *, file: str | Path | None = None, where: str | None = None, **given: Any
) -> C:
    """A command's config: an optional TOML/JSON file, then the flags given, then `given` on top."""
    data: dict[str, Any] = load_file(file) if file else {}
    data.update(overrides(args, cls))
    data.update({k: v for k, v in given.items() if v is not None})
    return from_dict(cls, data, where=where)


def overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` that were given on the command line (not None)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return {k: v for k, v in vars(args).items() if k in names and v is not None}
