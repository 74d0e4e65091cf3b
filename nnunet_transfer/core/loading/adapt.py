"""Shape adaptation rules for convolution weights, each exact in a property the tests check.

* :func:`adapt_input_channels` - first convolution, ``n`` source input channels to ``m`` target ones. For every
  output channel (and kernel position) the sum of the weights over input channels is unchanged: growing, source
  channel ``i`` goes to target channels ``j`` with ``j % n == i``, split evenly between its copies; shrinking,
  source channels with ``i % m == j`` are summed into target channel ``j``. So ``1 -> n`` divides by ``n``,
  ``n -> 1`` sums, and an input whose channels are all equal gives the same output as before.
* :func:`adapt_conv_kernel` - spatial kernel size of a convolution. Growing pads the kernel with zeros around the
  centre (the layer computes exactly what it did); shrinking folds the outer taps onto the nearest kept tap. Either
  way the sum of the weights along the changed axis is kept, so the output on an input that is constant along that
  axis is unchanged away from the borders.
* :func:`adapt_transposed_kernel` - kernel of a transposed convolution with stride = kernel (nnU-Net's upsampling).
  Shrinking by a factor ``f`` averages groups of ``f`` taps: the output equals the source output averaged over
  the collapsed axis. Growing by ``f`` repeats each tap ``f`` times: every upsampled voxel equals the source output
  (nearest-neighbour upsampling of it).
* :func:`resample_positional_embedding` - a learnable positional embedding ``[1, prefix + prod(grid), C]`` (tokens
  in row-major order over the patch grid, as Primus flattens them) to another grid: the grid part is exactly
  ``F.interpolate(mode="trilinear", align_corners=False)`` of the source grid (bilinear / linear in 2d / 1d);
  the prefix tokens (class or register tokens) are kept apart, never interpolated. :func:`infer_token_grid` finds
  the grid from the number of tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["adapt_conv_kernel", "adapt_input_channels", "adapt_transposed_kernel", "infer_token_grid",
           "resample_positional_embedding"]


def adapt_input_channels(weight: torch.Tensor, num_channels: int, dim: int = 1) -> torch.Tensor:
    """Change the input-channel count of a convolution weight (``dim`` 1 for conv, 0 for transposed conv)."""
    n = weight.shape[dim]
    m = num_channels
    if m == n:
        return weight
    w = weight.movedim(dim, 0)
    if m > n:
        idx = torch.arange(m) % n
        copies = torch.bincount(idx, minlength=n).to(w.dtype)
        out = w[idx] / copies[idx].view(-1, *([1] * (w.ndim - 1)))
    else:
        out = torch.zeros((m, *w.shape[1:]), dtype=w.dtype)
        out.index_add_(0, torch.arange(n) % m, w.to(out.dtype))
    return out.movedim(0, dim).contiguous()


def _fold_axis(w: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Shrink ``axis`` to ``size`` taps by adding each dropped outer tap onto the nearest kept one (sum kept)."""
    k = w.shape[axis]
    start = (k - size) // 2
    # nearest kept tap for every source tap: clamp the source position into the kept window
    target = torch.clamp(torch.arange(k) - start, 0, size - 1)
    out = torch.zeros((*w.shape[:axis], size, *w.shape[axis + 1:]), dtype=w.dtype)
    out.index_add_(axis, target, w)
    return out


def _pad_axis(w: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Grow ``axis`` to ``size`` taps with zeros placed symmetrically around the original kernel."""
    k = w.shape[axis]
    before = (size - k) // 2
    out = torch.zeros((*w.shape[:axis], size, *w.shape[axis + 1:]), dtype=w.dtype)
    out.narrow(axis, before, k).copy_(w)
    return out


def adapt_conv_kernel(weight: torch.Tensor, kernel_size: tuple[int, ...]) -> torch.Tensor:
    """Resize the spatial kernel of a convolution weight ``[out, in, *k]`` to ``kernel_size``."""
    w = weight
    for i, size in enumerate(kernel_size):
        axis = 2 + i
        k = w.shape[axis]
        if size < k:
            w = _fold_axis(w, axis, size)
        elif size > k:
            w = _pad_axis(w, axis, size)
    return w.contiguous()


def adapt_transposed_kernel(weight: torch.Tensor, kernel_size: tuple[int, ...]) -> torch.Tensor | None:
    """Resize the kernel of a stride = kernel transposed convolution ``[in, out, *k]``; None if sizes don't divide."""
    w = weight
    for i, size in enumerate(kernel_size):
        axis = 2 + i
        k = w.shape[axis]
        if size < k:
            if k % size:
                return None
            f = k // size
            shape = (*w.shape[:axis], size, f, *w.shape[axis + 1:])
            w = w.reshape(shape).mean(dim=axis + 1)
        elif size > k:
            if size % k:
                return None
            w = w.repeat_interleave(size // k, dim=axis)
    return w.contiguous()


def infer_token_grid(num_tokens: int, hints: Iterable[Sequence[int]] = (), ndim: int = 3) -> tuple[int, ...] | None:
    """The patch grid of ``num_tokens`` tokens: the first hint whose product is ``num_tokens``, else the cube
    (square) grid if ``num_tokens`` is a perfect power, else None. The grid is read from the tensor, never from a
    plan alone: a plan's patch size may describe another grid than the embedding holds."""
    for hint in hints:
        grid = tuple(int(g) for g in hint)
        if len(grid) == ndim and all(g > 0 for g in grid) and math.prod(grid) == num_tokens:
            return grid
    side = round(num_tokens ** (1 / ndim))
    for s in (side - 1, side, side + 1):
        if s > 0 and s ** ndim == num_tokens:
            return (s,) * ndim
    return None


_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def resample_positional_embedding(pos: torch.Tensor, src_grid: Sequence[int], tgt_grid: Sequence[int],
                                  prefix: int = 0) -> torch.Tensor:
    """Resample ``pos`` (``[1, prefix + prod(src_grid), C]``) to ``[1, prefix + prod(tgt_grid), C]``: the first
    ``prefix`` tokens unchanged, the grid part interpolated (trilinear for 3d grids, ``align_corners=False``)."""
    n, c = pos.shape[1], pos.shape[2]
    if n != prefix + math.prod(src_grid):
        raise ValueError(f"positional embedding of {n} tokens does not hold {prefix} prefix tokens and a "
                         f"{'x'.join(map(str, src_grid))} grid")
    head, grid = pos[:, :prefix], pos[:, prefix:]
    grid = grid.reshape(1, *src_grid, c).movedim(-1, 1).float()
    out = F.interpolate(grid, size=tuple(int(g) for g in tgt_grid), mode=_MODES[len(src_grid)], align_corners=False)
    out = out.movedim(1, -1).reshape(1, math.prod(tgt_grid), c).to(pos.dtype)
    return torch.cat([head, out], dim=1).contiguous()
