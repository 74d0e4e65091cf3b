"""A classifier on a pretrained encoder: global pooling of one or several stages, concatenated, dropout, a linear head.

Its parameter groups are the package's (``encoder.stem`` if the encoder has one, ``encoder.stage{i}``, ``heads``):
the classifier declares them (``parameter_group_patterns``), so :func:`~nnunet_transfer.core.schedules.groups.
derive_groups`, recipes and :class:`~nnunet_transfer.encoders.FineTuning` work on it as on nnU-Net's networks.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from nnunet_transfer.encoders.encoder import FeatureSpec, PretrainedEncoder, resolve_features

__all__ = ["EncoderClassifier", "Pooling"]

Pooling = Literal["avg", "max", "avgmax"]


class EncoderClassifier(nn.Module):
    """``head(dropout(norm(cat(pool(feature map of stage s) for s in stages))))``.

    ``encoder``: a :class:`~nnunet_transfer.encoders.PretrainedEncoder` or an ``EncoderBundle`` (its encoder).
    ``stages``: the stages pooled (``"deepest"``, ``"all"``, an index or a list; default: the encoder's ``features``).
    ``pooling``: global average (``"avg"``), maximum (``"max"``) or both concatenated (``"avgmax"``, the default:
    nnU-Net's stages end in instance normalisation, which leaves a global average nearly the same for every image).
    ``norm``: standardise the pooled features over the batch (``BatchNorm1d`` without parameters; running
    statistics in eval mode; training batches then need 2 or more images). ``dropout``: probability before the
    head (0: none). The head is ``nn.Linear(pooled features, num_classes)``; logits out.
    """

    def __init__(self, encoder: PretrainedEncoder | object, num_classes: int, *, stages: FeatureSpec | None = None,
                 pooling: Pooling = "avgmax", norm: bool = True, dropout: float = 0.0):
        super().__init__()
        encoder = getattr(encoder, "encoder", encoder)  # an EncoderBundle gives its encoder
        if not isinstance(encoder, PretrainedEncoder):
            raise TypeError(f"encoder must be a PretrainedEncoder or an EncoderBundle, not {type(encoder).__name__}")
        if pooling not in ("avg", "max", "avgmax"):
            raise ValueError(f"pooling={pooling!r}: expected 'avg', 'max' or 'avgmax'")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout}: must be within [0, 1)")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes={num_classes}: must be at least 1")
        self.encoder = encoder
        self.stages: tuple[int, ...] = (encoder.features if stages is None
                                        else resolve_features(stages, encoder.num_stages)[0])
        self.pooling = pooling
        self.num_features = sum(encoder.channels[i] for i in self.stages) * (2 if pooling == "avgmax" else 1)
        # nnU-Net's stages end in instance normalisation: pooled features vary little between images; a batch norm
        # (no parameters) brings them to a scale a linear head learns from quickly
        self.norm = nn.BatchNorm1d(self.num_features, affine=False) if norm else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.head = nn.Linear(self.num_features, int(num_classes))

    def parameter_group_patterns(self) -> dict[str, list[str]]:
        """The classifier's parameter groups (read by the architecture registry's default ``group_patterns``)."""
        groups: dict[str, list[str]] = {}
        if self.encoder.stem is not None:
            groups["encoder.stem"] = [r"encoder\.stem\..+"]
        for i in range(self.encoder.num_stages):
            groups[f"encoder.stage{i}"] = [rf"encoder\.stages\.{i}\..+"]
        groups["heads"] = [r"head\..+"]
        return groups

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.ndim))
        if self.pooling == "avg":
            return x.mean(dim=dims)
        if self.pooling == "max":
            return x.amax(dim=dims)
        return torch.cat((x.mean(dim=dims), x.amax(dim=dims)), dim=1)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled, concatenated features ``(batch, num_features)`` (before dropout and head)."""
        return torch.cat([self._pool(f) for f in self.encoder.forward_stages(x, self.stages)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.norm(self.pooled(x))))

    def extra_repr(self) -> str:
        return f"stages={list(self.stages)}, pooling={self.pooling!r}, num_features={self.num_features}"
