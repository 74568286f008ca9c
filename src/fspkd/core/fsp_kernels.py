"""CPU kernels behind ``fspkd.core.fsp``: the same numbers as the plain PyTorch calls, in layouts that run faster.

``fspkd bench`` times the FSP matrices + loss with these kernels against the naive PyTorch reference, and
``docs/performance.md`` records what it measured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def flow_product(a: torch.Tensor, b: torch.Tensor, area: int) -> torch.Tensor:
    """``bmm(a, b.transpose(1, 2)) / area`` for (B, m, L) and (B, n, L)."""
    return _FlowProduct.apply(a, b, area)


class _FlowProduct(torch.autograd.Function):
    """``flow_product`` with a backward of our own.

    Why: autograd's bmm backward multiplies the contiguous (B, m, n) gradient into (B, n, L), which on CPU is
    several times slower than the same product with the gradient as a transposed view, and it returns gradients
    in a layout of its own (b's channels-last once reshaped to a feature map, a's NCHW even for a channels-last
    map), so that their sums with the network's own gradients cost copies. Here each gradient comes out in its
    input's layout (see ``_product_like``).
    """

    @staticmethod
    def forward(ctx, a, b, area):
        ctx.save_for_backward(a, b)
        ctx.area = area
        return torch.bmm(a, b.transpose(1, 2)).div_(area)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad = grad / ctx.area
        grad_a = _product_like(a, grad, b) if ctx.needs_input_grad[0] else None
        grad_b = _product_like(b, grad.transpose(1, 2), a) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None


def _product_like(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``bmm(left, right)``, (B, m, n) @ (B, n, L), laid out like ``x`` (B, m, L): positions innermost when x
    was reshaped from an NCHW map, channels innermost from a channels-last one. Either way the small left
    operand enters as a transposed view, the fast case of CPU bmm for these shapes."""
    if x.stride(-1) == 1:
        return torch.bmm(left.transpose(1, 2).contiguous().transpose(1, 2), right)
    return torch.bmm(right.transpose(1, 2), left.transpose(1, 2)).transpose(1, 2)


def max_pool(x: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """``F.max_pool2d(x, kernel)`` with non-overlapping windows that tile ``x`` exactly, by the fastest path."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return window_max(x, *kernel)
    if x.device.type == "cpu" and x.is_contiguous():
        return _MaxPoolViaChannelsLast.apply(x, kernel)
    return F.max_pool2d(x, kernel_size=kernel, stride=kernel)


class _MaxPoolViaChannelsLast(torch.autograd.Function):
    """``F.max_pool2d(x, kernel)`` of a contiguous (NCHW) CPU map, its maxima found on a channels-last copy.

    Why: on CPU, max_pool2d with indices loops window by window over an NCHW map but vectorises across channels
    over a channels-last one, which repays the copy. The indices are positions within each (h, w) plane whatever
    the layout, so the backward is max_pool2d's own on the NCHW map: same values, same indices (the first maximum
    of each window), same gradient.
    """

    @staticmethod
    def forward(ctx, x, kernel):
        pooled, indices = F.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), kernel)
        indices = indices.contiguous()
        ctx.save_for_backward(x, indices)
        ctx.kernel = list(kernel)
        return pooled.contiguous()

    @staticmethod
    def backward(ctx, grad):
        x, indices = ctx.saved_tensors
        kernel = ctx.kernel
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), x, kernel, kernel, [0, 0], [1, 1], False, indices)
        return grad_x, None


def window_max(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """``F.max_pool2d(x, (kh, kw))`` (non-overlapping windows, exact sizes) as elementwise maxima of strided
    views, for the teacher's side where no gradient is needed.

    Why by hand: on CPU max_pool2d's per-window loop is an order of magnitude slower than these maxima. With
    gradients the backward needs the argmax indices, which cost as much to find by hand as max_pool2d's forward
    does; ``_MaxPoolViaChannelsLast`` finds them faster.
    """
    rows = x[..., 0::kh, :]
    for i in range(1, kh):
        rows = torch.maximum(rows, x[..., i::kh, :])
    out = rows[..., 0::kw]
    for j in range(1, kw):
        out = torch.maximum(out, rows[..., j::kw])
    return out
