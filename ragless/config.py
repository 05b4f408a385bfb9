"""Command-line flags generated from the configuration dataclasses, so a flag and its field cannot drift apart.

Each field ``batch_docs: int = 256  # reason`` becomes ``--batch-docs N`` (help: the reason, and the default);
``bool`` fields become ``--flag/--no-flag``; ``tuple[str, ...]`` fields take repeated or comma-separated values
(``--systems a,b`` or ``--systems a --systems b``). Types are checked by
argparse, so a wrong type is refused with a clear message, and unknown flags are refused by the parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import typing
from typing import Any


def _field_comments(cls: type) -> dict[str, str]:
    """The trailing comment of each field line in the class source: its one-line reason."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments = {}
    for line in source.splitlines():
        code, _, comment = line.partition("  # ")
        name = code.strip().split(":")[0]
        if comment and name.isidentifier():
            comments[name] = comment.strip()
    return comments


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per scalar field of dataclass ``cls`` (nested dataclasses and ``skip`` are left out)."""
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip or dataclasses.is_dataclass(hints[f.name]):
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        helptext = f"{comments.get(f.name, '')} (default: {default!r})".strip()
        if tp is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        elif typing.get_origin(tp) is tuple:
            group.add_argument(flag, dest=f.name, action="append", default=None, metavar="A,B", help=helptext)
        elif tp in (int, float, str):
            group.add_argument(flag, dest=f.name, type=tp, default=None, help=helptext)
        elif typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
            group.add_argument(flag, dest=f.name, type=inner, default=None, help=helptext)
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for type {tp}")


def given_fields(cls: type, ns: argparse.Namespace) -> dict[str, Any]:
    """The fields of dataclass ``cls`` whose flags were given on the command line."""
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(ns, f.name, None)
        if isinstance(value, list):  # a tuple field: repeated or comma-separated values
            value = tuple(v for item in value for v in item.split(",") if v)
        if value is not None:
            values[f.name] = value
    return values


def from_args(cls: type, ns: argparse.Namespace, **nested: Any) -> Any:
    """Build ``cls`` from the flags that were given, keeping field defaults for the rest."""
    return cls(**given_fields(cls, ns), **nested)

