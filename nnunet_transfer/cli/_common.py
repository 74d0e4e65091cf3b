"""Helpers shared by the commands: the loader flags (derived from :class:`LoadOptions`) and the ``--json`` output.

Each :class:`~nnunet_transfer.core.loading.options.LoadOptions` field becomes one flag: ``--min-coverage`` (float),
``--rename`` (repeatable), ``--no-map-heads`` (a bool that defaults to True), ``--trust-checkpoint`` (a bool that
defaults to False)... Fields excluded from dumps (``key_map``, a Python callable) have no flag. Every flag defaults to
None, so :func:`load_options_from_args` sets only what the user gave, on top of the defaults or a recipe's section.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from typing import Any

from nnunet_transfer.core.io import write_json_atomic
from nnunet_transfer.core.loading.options import LoadOptions
from nnunet_transfer.errors import TransferError

__all__ = ["READ_FIELDS", "add_json_option", "add_load_flags", "load_flag", "load_options_from_args", "write_json"]

# the options that only concern reading the checkpoint file
READ_FIELDS = ("container", "allow_globals", "trust_checkpoint")

# flag names that differ from the field name (kept from earlier releases)
_FLAG_NAMES = {"allow_globals": "--allow-global"}
_METAVARS = {"min_coverage": "FRACTION", "rename": "PATTERN=REPLACEMENT", "allow_globals": "NAME",
             "container": "ENTRY", "head_pattern": "REGEX"}


def _cli_fields(only: Iterable[str] | None) -> list[str]:
    fields = LoadOptions.model_fields
    names = [n for n, f in fields.items() if not f.exclude] if only is None else list(only)
    for n in names:
        if n not in fields or fields[n].exclude:
            raise ValueError(f"{n!r} is not a loader option that has a command-line flag")
    return names


def _is_sequence(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_sequence(a) for a in typing.get_args(annotation) if a is not type(None))
    return origin in (tuple, list)


def _scalar_type(annotation: Any) -> type:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    t = args[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1 else annotation
    return t if t in (int, float) else str


def load_flag(name: str) -> str:
    """The command-line flag of a :class:`LoadOptions` field (as the user types it)."""
    field = LoadOptions.model_fields[name]
    flag = _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
    return flag.replace("--", "--no-", 1) if field.annotation is bool and field.default is True else flag


def add_load_flags(p: argparse.ArgumentParser, only: Iterable[str] | None = None, defaults_from: str = "") -> None:
    """Add a flag for each :class:`LoadOptions` field (or those in ``only``); help is the field's description.

    Every flag's value is None unless given (dest: the field name). ``defaults_from`` names where unset options come
    from when it is not the schema's defaults (shown in the help).
    """
    group = p.add_argument_group("loader options" + (f" (default: {defaults_from})" if defaults_from else ""))
    for name in _cli_fields(only):
        field = LoadOptions.model_fields[name]
        help_text = field.description or ""
        flag = load_flag(name)
        if field.annotation is bool:
            off = field.default is True
            group.add_argument(flag, dest=name, action="store_false" if off else "store_true", default=None,
                               help=f"do not {help_text}" if off else help_text)
        elif _is_sequence(field.annotation):
            group.add_argument(flag, dest=name, action="append", default=None, metavar=_METAVARS.get(name, "VALUE"),
                               help=help_text + "; repeatable")
        else:
            shown = "" if field.default is None else f" (default {field.default})"
            group.add_argument(flag, dest=name, type=_scalar_type(field.annotation), default=None,
                               metavar=_METAVARS.get(name, name.upper()), help=help_text + shown)


def load_options_from_args(args: argparse.Namespace, base: LoadOptions | None = None) -> LoadOptions:
    """``base`` (the schema's defaults if None) with every loader flag the user gave set on top.

    Invalid values (a bad rename rule, a coverage above 1) raise :class:`TransferError` naming the flag.
    """
    base = base if base is not None else LoadOptions()
    given = {n: getattr(args, n) for n in LoadOptions.model_fields if getattr(args, n, None) is not None}
    try:
        return base.replace(**given)
    except ValueError as e:  # pydantic's ValidationError
        errors = getattr(e, "errors", None)
        if callable(errors):
            msgs = [f"{load_flag(str(err['loc'][0])) if err['loc'] else 'loader options'}: "
                    f"{err['msg'].removeprefix('Value error, ')}" for err in errors()]
            raise TransferError("; ".join(msgs)) from None
        raise TransferError(str(e)) from None


def add_json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON to PATH")


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        write_json_atomic(path, data, default=str)
