"""Exact invariants of the shape adaptation rules."""

import pytest
import torch
import torch.nn.functional as F

from nnunet_transfer.core.loading.adapt import adapt_conv_kernel, adapt_input_channels, adapt_transposed_kernel


def randn(*shape):
    """float64, so that exact properties are checked to 1e-10."""
    return torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize(("n", "m"), [(1, 4), (4, 1), (3, 5), (5, 3), (2, 4), (4, 2), (3, 3)])
def test_input_channels_keep_sum_over_channels(n, m):
    w = randn(6, n, 3, 3, 3)
    out = adapt_input_channels(w, m)
    assert out.shape == (6, m, 3, 3, 3)
    torch.testing.assert_close(out.sum(1), w.sum(1), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("n", "m"), [(1, 3), (3, 1), (2, 5)])
def test_input_channels_same_output_on_equal_channels(n, m):
    w, b = randn(4, n, 3, 3, 3), randn(4)
    x = randn(1, 1, 8, 8, 8)
    ref = F.conv3d(x.expand(1, n, 8, 8, 8), w, b, padding=1)
    out = F.conv3d(x.expand(1, m, 8, 8, 8), adapt_input_channels(w, m), b, padding=1)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


def test_input_channels_one_to_n_divides_and_n_to_one_sums():
    w = randn(2, 1, 3)
    assert torch.equal(adapt_input_channels(w, 4), w.expand(2, 4, 3) / 4)
    w3 = randn(2, 3, 3)
    torch.testing.assert_close(adapt_input_channels(w3, 1), w3.sum(1, keepdim=True), rtol=0, atol=0)


def test_input_channels_of_transposed_conv_use_dim0():
    w = randn(2, 5, 2, 2, 2)  # [in, out, k]
    out = adapt_input_channels(w, 3, dim=0)
    assert out.shape == (3, 5, 2, 2, 2)
    torch.testing.assert_close(out.sum(0), w.sum(0), rtol=0, atol=1e-12)


def _conv_pair(k_src, k_tgt, axis):
    w = randn(5, 3, *k_src)
    b = randn(5)
    return w, b, adapt_conv_kernel(w, k_tgt)


@pytest.mark.parametrize(
    ("k_src", "k_tgt", "axis"),
    [((3, 3, 3), (1, 3, 3), 0), ((1, 3, 3), (3, 3, 3), 0), ((3, 3, 3), (3, 3, 1), 2), ((3, 3, 1), (3, 3, 3), 2),
     ((5, 3, 3), (3, 3, 3), 0), ((3, 3, 3), (5, 3, 3), 0)],
)
def test_conv_kernel_keeps_output_on_input_constant_along_changed_axis(k_src, k_tgt, axis):
    w, b, w_t = _conv_pair(k_src, k_tgt, axis)
    assert tuple(w_t.shape[2:]) == k_tgt
    shape = [12, 12, 12]
    plane = [12, 12, 12]
    plane[axis] = 1
    x = randn(1, 3, *plane).expand(1, 3, *shape)  # constant along `axis`
    ref = F.conv3d(x, w, b, padding=[k // 2 for k in k_src])
    out = F.conv3d(x, w_t, b, padding=[k // 2 for k in k_tgt])
    margin = max(max(k_src), max(k_tgt)) // 2
    inner = tuple([slice(None), slice(None)] + [slice(margin, -margin)] * 3)
    torch.testing.assert_close(out[inner], ref[inner], rtol=0, atol=1e-10)


def test_conv_kernel_growth_is_exact_on_any_input():
    w, b, w_t = _conv_pair((1, 3, 3), (3, 3, 3), 0)
    x = randn(1, 3, 6, 10, 10)
    torch.testing.assert_close(F.conv3d(x, w_t, b, padding=1), F.conv3d(x, w, b, padding=(0, 1, 1)), rtol=0, atol=1e-10)


def test_transposed_kernel_shrink_equals_source_output_averaged_over_axis():
    w, b = randn(4, 3, 2, 2, 2), randn(3)  # [in, out, k]
    x = randn(1, 4, 5, 6, 7)
    w_t = adapt_transposed_kernel(w, (2, 2, 1))
    ref = F.conv_transpose3d(x, w, b, stride=(2, 2, 2))  # [1, 3, 10, 12, 14]
    out = F.conv_transpose3d(x, w_t, b, stride=(2, 2, 1))  # [1, 3, 10, 12, 7]
    ref_avg = ref.reshape(1, 3, 10, 12, 7, 2).mean(-1)
    torch.testing.assert_close(out, ref_avg, rtol=0, atol=1e-10)


def test_transposed_kernel_growth_repeats_source_output():
    w, b = randn(4, 3, 1, 2, 2), randn(3)
    x = randn(1, 4, 5, 6, 7)
    w_t = adapt_transposed_kernel(w, (2, 2, 2))
    ref = F.conv_transpose3d(x, w, b, stride=(1, 2, 2))  # [1, 3, 5, 12, 14]
    out = F.conv_transpose3d(x, w_t, b, stride=(2, 2, 2))  # [1, 3, 10, 12, 14]
    for offset in (0, 1):  # every upsampled voxel equals the source output
        torch.testing.assert_close(out[:, :, offset::2], ref, rtol=0, atol=1e-10)


def test_transposed_kernel_non_integer_factor_is_refused():
    assert adapt_transposed_kernel(randn(2, 2, 3, 2, 2), (2, 2, 2)) is None
    assert adapt_transposed_kernel(randn(2, 2, 2, 2, 2), (3, 2, 2)) is None
