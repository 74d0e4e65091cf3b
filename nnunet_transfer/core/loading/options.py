r"""The options of the adaptive loader: one pydantic schema for the Python API, the recipes and the command line.

:class:`LoadOptions` is the only definition. A recipe's ``pretrained:`` section is a subclass that adds
``checkpoint`` and ``required``; the ``nnunet-transfer`` flags are derived from the fields (name, type, default,
description). ``key_map`` is a Python callable: it is not part of YAML/JSON dumps nor of the command line.

>>> LoadOptions(min_coverage=0.8, rename=["backbone[.](.*)=encoder.\\1"]).rename
(('backbone[.](.*)', 'encoder.\\1'),)
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from nnunet_transfer.core.loading.keys import KeyMap, RenameRule, parse_rename_rule, rename_rule

__all__ = ["LoadOptions"]


class LoadOptions(BaseModel):
    """Options of :func:`nnunet_transfer.load_pretrained` (all have defaults; recipes and the CLI set the same).

    Frozen: derive a variant with :meth:`replace`. Unknown options are an error naming them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_coverage: float = Field(
        0.5, ge=0.0, le=1.0,
        description="guard: minimum fraction of the network's parameter elements (segmentation heads excluded) "
                    "that must be loaded or adapted; below it nothing is loaded")
    rename: tuple[RenameRule, ...] = Field(
        (), description="rename rule PATTERN=REPLACEMENT applied to checkpoint keys; the pattern must match the whole "
                        "key, the replacement may use groups (\\1); the first matching rule wins")
    container: str | None = Field(
        None, description="entry of the checkpoint that holds the weights (dotted for nested ones); "
                          "default: the usual containers (network_weights, state_dict, model, ...)")
    allow_globals: tuple[str, ...] = Field(
        (), description="allow this global (e.g. argparse.Namespace) for safe weights_only loading")
    trust_checkpoint: bool = Field(
        False, description="unpickle without restrictions: only for files you trust (can run code)")
    head_pattern: str | None = Field(
        None, description="regular expression (matched against whole parameter names) naming the segmentation-head "
                          "tensors; default: as the architecture declares (nnU-Net's decoder.seg_layers)")
    adapt_input_channels: bool = Field(
        True, description="adapt the first convolution to another input-channel count (sum over channels kept)")
    adapt_kernels: bool = Field(
        True, description="adapt spatial kernel sizes of (transposed) convolutions")
    map_heads: bool = Field(
        True, description="copy segmentation-head output channels whose label names match (other channels keep "
                          "their fresh init)")
    load_decoder: bool = Field(
        False, description="nnssl checkpoints: also load the pretraining decoder where names and shapes match "
                           "(default: stem and encoder only; the pretraining head never)")
    key_map: KeyMap | None = Field(
        None, exclude=True,
        description="Python only: a callable applied to every checkpoint key before the rename rules; it returns "
                    "the new key, or None to drop the tensor")

    @field_validator("rename", mode="before")
    @classmethod
    def _parse_rules(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value  # pydantic names the wrong type
        rules = []
        for rule in value:
            if isinstance(rule, str):
                rules.append(parse_rename_rule(rule))
            elif isinstance(rule, list | tuple) and len(rule) == 2 and all(isinstance(x, str) for x in rule):
                rules.append(rename_rule(*rule))
            else:
                raise ValueError(f"rename rule {rule!r} must be a 'PATTERN=REPLACEMENT' string or a "
                                 "(pattern, replacement) pair")
        return tuple(rules)

    @field_validator("head_pattern")
    @classmethod
    def _check_head_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"head_pattern {value!r} is not a valid regular expression: {e}") from e
        return value

    @field_serializer("rename")
    def _dump_rules(self, rules: tuple[RenameRule, ...]) -> list[str | list[str]]:
        # the recipe's form; a pattern holding "=" cannot be written as one string and stays a pair
        return [f"{p}={r}" if "=" not in p else [p, r] for p, r in rules]

    @classmethod
    def _check_names(cls, names: Any) -> None:
        unknown = sorted(set(names) - set(cls.model_fields))
        if unknown:
            raise TypeError(f"unknown loader option(s) {unknown}; known: {sorted(cls.model_fields)}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> LoadOptions:
        """Build options from keyword arguments; an unknown name is a TypeError naming it and the known ones."""
        cls._check_names(kwargs)
        return cls.model_validate(kwargs)

    def replace(self, **changes: Any) -> LoadOptions:
        """A validated copy with ``changes`` applied (like :func:`dataclasses.replace`)."""
        type(self)._check_names(changes)
        if not changes:
            return self
        return type(self).model_validate({**self.fields_dict(), **changes})

    def fields_dict(self) -> dict[str, Any]:
        """Every field of this object as Python values (``key_map`` included, unlike :meth:`model_dump`)."""
        return {name: getattr(self, name) for name in type(self).model_fields}

