"""Primus that sees its patch tokens in the order nnssl's EvaMAE pretraining saw them.

dynamic_network_architectures' :class:`Primus` (what nnU-Net and we fine-tune) flattens the patch grid
``b c w h d -> b (w h d) c``; nnssl's ``EvaMAE`` (the MAE pretraining of Primus, also the encoder of nnssl's
contrastive, Models Genesis, SwinUNETR and volume-fusion Eva trainers) flattens ``b c w h d -> b (h w d) c``; nnssl's
SimMIM flattens ``(w h d)`` as Primus does. Both the learned positional embedding (one row per token index) and the
rotary embedding (a position per token index, from a grid of the flattened order) tie a token's *index* to a
position: a checkpoint pretrained ``(h w d)`` and fine-tuned ``(w h d)`` sees its first two spatial axes swapped.

:class:`PrimusHWD` is :class:`Primus` with the pretraining's order: tokens flattened ``(h w d)`` and unflattened the
same way, the rotary embedding's grid ``(H, W, D)`` (so its first axis is ``h``, as in pretraining). Its parameters
are :class:`Primus`'s, name for name and shape for shape; only the order of the token sequence differs. Both parts of
the position are then exact: the learned embedding's rows and the rotary embedding's coordinates are those of
pretraining, for any patch grid (the embedding is resampled along the right axes by the loader, which reads the grid
from the rotary embedding). Plans name it by its dotted path, which nnU-Net's network builder imports
(``pydoc.locate``), so the stock ``nnUNetv2_predict`` builds it where this package is installed.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from dynamic_network_architectures.architectures.primus import Primus
from einops import rearrange
from torch import Tensor

__all__ = ["PRIMUS_HWD", "PrimusHWD", "TokenOrder"]

#: the flatten order of a Primus's patch tokens: "whd" (dynamic_network_architectures, nnssl's SimMIM) or "hwd"
#: (nnssl's EvaMAE)
TokenOrder = Literal["whd", "hwd"]

#: the dotted name nnU-Net plans use for :class:`PrimusHWD`
PRIMUS_HWD = "nnunet_transfer.core.primus.PrimusHWD"


class PrimusHWD(Primus):
    """:class:`Primus` whose patch tokens are flattened ``(h w d)``, as nnssl's EvaMAE pretraining flattened them
    (same constructor, same parameters)."""

    token_order: TokenOrder = "hwd"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        rope = self.eva.rope
        if rope is not None and rope.feat_shape is not None:  # the rotary grid in the tokens' order: (H, W, D)
            w, h, *rest = rope.feat_shape
            rope.ref_feat_shape = [h, w, *rest] if rope.ref_feat_shape is not None else None
            rope.update_feat_shape([h, w, *rest])

    # Primus's own parameters (no deep_supervision): what nnU-Net's builder and ours inspect before building it
    __init__.__signature__ = inspect.signature(Primus.__init__)  # type: ignore[attr-defined]

    def forward(self, x: Tensor, ret_mask: bool = False) -> Tensor | tuple[Tensor, Tensor | None]:
        full = x.shape[2:]
        x = self.down_projection(x)
        _, _, w, h, d = x.shape
        x = rearrange(x, "b c w h d -> b (h w d) c")
        if self.register_tokens is not None:
            x = torch.cat((self.register_tokens.expand(x.shape[0], -1, -1), x), dim=1)
        x, keep_indices = self.eva(x)
        if self.register_tokens is not None:
            x = x[:, self.register_tokens.shape[1]:]
        restored, restoration_mask = self.restore_full_sequence(x, keep_indices, w * h * d)
        out = self.up_projection(rearrange(restored, "b (h w d) c -> b c w h d", h=h, w=w, d=d))
        if not ret_mask:
            return out
        if restoration_mask is None:
            return out, None
        mask = rearrange(restoration_mask, "b (h w d) -> b w h d", h=h, w=w, d=d)
        for axis, (f, t) in enumerate(zip(full, (w, h, d), strict=True), start=1):
            mask = mask.repeat_interleave(f // t, dim=axis)
        return out, mask[:, None]
