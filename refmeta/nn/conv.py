"""The spatial primitives under ``layers.conv2d`` and ``layers.max_pool_2x2``.

Each primitive works on raw arrays (NumPy, CuPy or ``refmeta.device.strict.StrictArray``)
and is linear (max_pool: once the window choice is fixed).  Its adjoint (VJP)
is again one of these primitives, so autograd differentiates through them to
any order, as second-order MAML needs:

    im2col  : x (..., n, C, H, W) -> cols (..., C·3·3, n·H'·W')     adjoint col2im
    col2im  : cols -> x                                            adjoint im2col
    max_pool     : x (..., n, C, H, W) -> y (..., n, C, H//2, W//2) adjoint pool_scatter
    pool_gather  : x -> y, the entries ``choice`` names           adjoint pool_scatter
    pool_scatter : y -> x                                          adjoint pool_gather
    spread_channels : p (..., C) -> a broadcast view (..., n, C, *spatial)   adjoint sum_channels
    sum_channels    : g (..., n, C, *spatial) -> (..., C), one reduction     adjoint spread_channels

im2col uses a 3×3 window with one pixel of zero padding on every side
(PyTorch ``padding=1``) and stride s ∈ {1, 2}; ``H' = (H + 2 − 3) // s + 1``:

    cols[..., (c, i, j), (m, p, q)] = x[..., m, c, s·p + i − 1, s·q + j − 1]   (0 outside x)

Rows run over (c, i, j) in C order, so ``w.reshape(F, C·9) @ cols`` is the
convolution with an OIHW kernel; columns run over (m, p, q) so that product is a
single matrix product per leading index.  The patch array is filled by nine
strided slice copies, one per kernel offset (i, j).

max_pool takes the maximum of every 2×2 window (stride 2; rows and columns past
the last whole window, for odd H or W, are dropped).  Its adjoint sends the
gradient to one element per window, the *first* maximum in row-major order (as
PyTorch does; autograd's ``max`` would split ties): ``window_argmax`` names it
(0..3 in row-major window order) and pool_scatter / pool_gather, which are
linear in their array argument and adjoint to each other, route through it.

spread_channels / sum_channels carry a per-channel parameter (a bias, a batch-norm offset
or scale) across the example and spatial axes.  autograd's own broadcasting would sum the
gradient back one axis per reduction pass (n, then H, then W); sum_channels does it in one.

Inside the primitives only operators and methods, ``numpy.maximum``, basic slicing,
``x[...] = y`` / ``+=`` on basic slices and ``numpy.zeros(..., like=x)`` are used
(never ``numpy.add.at``), so the arrays never leave their device.
"""

import numpy as np
from autograd.extend import defvjp, primitive
from autograd.tracer import getval

__all__ = ["im2col", "col2im", "max_pool", "pool_gather", "pool_scatter", "window_argmax",
           "conv_out_size", "spread_channels", "sum_channels"]

KERNEL = 3
PAD = 1


def conv_out_size(size, stride):
    """H' = (H + 2·PAD − KERNEL) // stride + 1."""
    return (size + 2 * PAD - KERNEL) // stride + 1


def _offset_slices(kernel_offset, size, out_size, stride):
    """(output slice, input slice) of the positions where offset ``kernel_offset`` hits x.

    Output p reads input s·p + k − 1, which must lie in [0, size − 1].
    Returns None when no output position does.
    """
    first = max(0, -(-(PAD - kernel_offset) // stride))            # ceil((1 − k) / s)
    last = min(out_size - 1, (size - 1 + PAD - kernel_offset) // stride)
    if last < first:
        return None
    start = stride * first + kernel_offset - PAD
    return slice(first, last + 1), slice(start, start + stride * (last - first) + 1, stride)


def _offsets(height, width, stride):
    """Yield (i, j, out rows, out cols, in rows, in cols) for the nine kernel offsets."""
    out_h, out_w = conv_out_size(height, stride), conv_out_size(width, stride)
    for i in range(KERNEL):
        rows = _offset_slices(i, height, out_h, stride)
        for j in range(KERNEL):
            cols = _offset_slices(j, width, out_w, stride)
            if rows is not None and cols is not None:
                yield i, j, rows[0], cols[0], rows[1], cols[1]


@primitive
def im2col(x, stride):
    """x (..., n, C, H, W) -> patches (..., C·9, n·H'·W'); see the module docstring."""
    *lead, n, channels, height, width = x.shape
    out_h, out_w = conv_out_size(height, stride), conv_out_size(width, stride)
    patches = np.zeros((*lead, channels, KERNEL, KERNEL, n, out_h, out_w), dtype=x.dtype, like=x)
    x_cn = x.swapaxes(-4, -3)                                   # (..., C, n, H, W), a view
    for i, j, out_rows, out_cols, in_rows, in_cols in _offsets(height, width, stride):
        patches[..., i, j, :, out_rows, out_cols] = x_cn[..., in_rows, in_cols]
    return patches.reshape(*lead, channels * KERNEL * KERNEL, n * out_h * out_w)


@primitive
def col2im(patches, x_shape, stride):
    """The adjoint of im2col: sums every patch entry back onto the pixel it came from."""
    *lead, n, channels, height, width = x_shape
    out_h, out_w = conv_out_size(height, stride), conv_out_size(width, stride)
    patches = patches.reshape(*lead, channels, KERNEL, KERNEL, n, out_h, out_w)
    x_cn = np.zeros((*lead, channels, n, height, width), dtype=patches.dtype, like=patches)
    for i, j, out_rows, out_cols, in_rows, in_cols in _offsets(height, width, stride):
        x_cn[..., in_rows, in_cols] += patches[..., i, j, :, out_rows, out_cols]
    return x_cn.swapaxes(-4, -3)                                # (..., n, C, H, W)


defvjp(im2col, lambda ans, x, stride: lambda g: col2im(g, x.shape, stride))
defvjp(col2im, lambda ans, patches, x_shape, stride: lambda g: im2col(g, stride))


def _window_slices(shape):
    """Index tuples of the four (..., H//2, W//2) strided sub-grids, in row-major window order."""
    height, width = 2 * (shape[-2] // 2), 2 * (shape[-1] // 2)
    return [(Ellipsis, slice(i, height, 2), slice(j, width, 2)) for i in range(2) for j in range(2)]


def _window_views(x):
    return [x[index] for index in _window_slices(x.shape)]


@primitive
def max_pool(x):
    """y[..., p, q] = max of the 2×2 window (p, q) of x (..., H, W); y (..., H // 2, W // 2)."""
    views = _window_views(x)
    y = np.maximum(views[0], views[1])
    return np.maximum(y, np.maximum(views[2], views[3]))


def window_argmax(x, y):
    """Index 0..3 (row-major) of the first window element of x equal to its max y (raw arrays)."""
    views = _window_views(x)
    choice = np.zeros(y.shape, dtype=np.int8, like=y)
    for k in (3, 2, 1, 0):                                  # the last match written wins
        hit = views[k] == y
        choice = choice + hit * (k - choice)
    return choice


@primitive
def pool_gather(x, choice):
    """y[..., p, q] = x at the window position ``choice[..., p, q]`` of window (p, q)."""
    views = _window_views(x)
    y = views[0] * (choice == 0)
    for k, view in enumerate(views[1:], start=1):
        y += view * (choice == k)
    return y


@primitive
def pool_scatter(y, choice, x_shape):
    """The adjoint of pool_gather: puts y[..., p, q] at the chosen position, zeros elsewhere."""
    x = np.zeros(x_shape, dtype=y.dtype, like=y)
    for k, index in enumerate(_window_slices(x_shape)):
        x[index] = y * (choice == k)
    return x


defvjp(max_pool, lambda ans, x: lambda g: pool_scatter(
    g, window_argmax(getval(x), getval(ans)), x.shape))
defvjp(pool_gather, lambda ans, x, choice: lambda g: pool_scatter(g, choice, x.shape))
defvjp(pool_scatter, lambda ans, y, choice, x_shape: lambda g: pool_gather(g, choice))


def _channel_view_shape(p_shape, channel):
    """p (..., C) as (..., 1, C, 1, …): the example axis and -1 - channel spatial axes of size 1."""
    return tuple(p_shape[:-1]) + (1, p_shape[-1]) + (1,) * (-1 - channel)


@primitive
def spread_channels(p, shape, channel):
    """p (..., C) -> a read-only view of ``shape`` (..., n, C, *spatial); C sits at ``channel`` < 0."""
    return np.broadcast_to(p.reshape(_channel_view_shape(p.shape, channel)), shape)


@primitive
def sum_channels(g, p_shape, channel):
    """The adjoint of spread_channels: g summed, in one call, over every axis p was spread along."""
    view = _channel_view_shape(p_shape, channel)
    extra = g.ndim - len(view)
    axes = tuple(range(extra)) + tuple(extra + i for i, size in enumerate(view)
                                       if size == 1 and g.shape[extra + i] != 1)
    return g.sum(axis=axes).reshape(p_shape)


defvjp(spread_channels, lambda ans, p, shape, channel: lambda g: sum_channels(g, p.shape, channel))
defvjp(sum_channels, lambda ans, g, p_shape, channel: lambda h: spread_channels(h, g.shape, channel))
