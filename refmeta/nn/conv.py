"""The 3×3 convolution under ``layers.conv2d`` as three primitives closed under adjoints, and the
per-channel spread and sum under every bias, batch-norm scale and offset.

    conv3x3(x, w, b, s)                 y = w ⋆ x + b          (..., n, C, H, W) -> (..., n, F, H', W')
    conv3x3_transpose(g, w, s, x_shape) x̄ = (w ⋆)ᵀ g           (..., n, F, H', W') -> x_shape
    conv3x3_weight_grad(x, g, s, w_shape)  w̄ = Σ_{m,p,q} g ⊗ the patches of x    -> w_shape (..., F, C, 3, 3)
    spread_channels(p, shape, channel)  p (..., C) -> a broadcast view (..., n, C, *spatial)
    sum_channels(g, p_shape, channel)   g (..., n, C, *spatial) -> (..., C), one reduction

The convolution is PyTorch's (cross-correlation, zero padding 1 on every side, stride s ∈ {1, 2},
H' = (H + 2 − 3) // s + 1):

    y[m, f, p, q] = Σ_{c,i,j} w[f, c, i, j] · x[m, c, s·p + i − 1, s·q + j − 1] + b[f]   (0 outside x)

It is linear in x and in w, so its VJPs are the two adjoints, x̄ = (w ⋆)ᵀ ḡ and w̄, and those are
bilinear in the same pairs.  The VJP of each of the three primitives is again one of them:

    conv3x3:              x̄ = conv3x3_transpose(ḡ, w)        w̄ = conv3x3_weight_grad(x, ḡ)
    conv3x3_transpose:    ḡ̄ = conv3x3(h̄, w)                  w̄ = conv3x3_weight_grad(h̄, g)
    conv3x3_weight_grad:  x̄ = conv3x3_transpose(g, V̄)        ḡ̄ = conv3x3(x, V̄)

(from ⟨V, w̄(x, g)⟩ = ⟨w ⋆ x, g⟩|_{w=V} = ⟨x, (V ⋆)ᵀ g⟩), so autograd differentiates through them
to any order, as second-order MAML needs; b̄ = sum_channels(ḡ).  Leading (task) axes broadcast as
in a matrix product, and each result is summed back to the shape of the argument it belongs to.

Each is computed as matrix products over the patch array of im2col, rows (c, i, j) in C order,
columns (m, p, q), so that ``w.reshape(F, C·9) @ patches`` is the convolution:

    patches[..., (c, i, j), (m, p, q)] = x[..., m, c, s·p + i − 1, s·q + j − 1]      (..., C·9, n·H'·W')

    y  = w_mat @ patches                      (..., F, C·9) @ (..., C·9, n·H'·W')
    w̄  = ḡ_mat @ patchesᵀ                     (..., F, n·H'·W') @ (..., n·H'·W', C·9)
    x̄  = w̃ ⋆ ḡ  at stride 1,  w̃[c, f, i, j] = w[f, c, 2 − i, 2 − j]  (flipped, C ↔ F)
    x̄  = col2im(w_matᵀ @ ḡ_mat)  at stride 2  (the strided windows do not tile the image)

The patch array is filled by nine strided slice copies, one per kernel offset (i, j); col2im is
its adjoint (nine strided slice additions).  At stride 1 the adjoint in x is itself a
convolution, one product with F·9 inner terms, where w_matᵀ @ ḡ_mat would have F and leave
nine times the image to scatter back.  The patches are made a chunk of images at a time
(about ``CHUNK_BYTES``) and multiplied while they are still in the cache; none is kept:
``conv3x3_weight_grad`` makes the patches of x again, which costs less than keeping a patch
array nine times the size of x from the forward pass to the backward pass.

Layout.  Each product writes (..., F, n, H', W') and is returned as its view (..., n, F, H', W'):
the data stays channel-major, which is the layout im2col reads and the products write, so
consecutive layers pass their arrays on without a copy (``refmeta.nn.pool`` and
``refmeta.nn.norm`` keep the layout of their inputs).

spread_channels / sum_channels carry a per-channel parameter across the example and spatial
axes.  autograd's own broadcasting would sum the gradient back one axis per reduction pass
(n, then H, then W); sum_channels does it in one.

Inside the primitives only operators and methods, ``numpy.matmul`` (with ``out=`` a slice of a
new array), basic slicing, ``x[...] = y`` / ``+=`` on basic slices and ``numpy.empty/zeros(...,
like=x)`` are used (never ``numpy.add.at``), so the arrays never leave their device.
"""

import autograd.numpy as anp
import numpy as np
from autograd.extend import defvjp, defvjp_argnums, primitive

__all__ = ["conv3x3", "conv3x3_transpose", "conv3x3_weight_grad", "conv3x3_grads", "im2col", "col2im",
           "conv_out_size", "spread_channels", "sum_channels", "sum_to", "in_place"]

KERNEL = 3
PAD = 1
CHUNK_BYTES = 4 << 20      # a patch array of about this size is made and used at once


def conv_out_size(size, stride):
    """H' = (H + 2·PAD − KERNEL) // stride + 1."""
    return (size + 2 * PAD - KERNEL) // stride + 1


def in_place(ufunc, y, term):
    """ufunc(y, term) written into y, a raw array the caller made, where the result has y's shape;
    a new array where term broadcasts y to more axes."""
    if np.broadcast_shapes(y.shape, term.shape) == y.shape:
        return ufunc(y, term, out=y)
    return ufunc(y, term)


def sum_to(g, shape):
    """g summed over the axes it was broadcast along (extra leading ones, size-1 ones), in anp:
    raw arrays and autograd boxes alike."""
    if anp.shape(g) == tuple(shape):
        return g
    extra = anp.ndim(g) - len(shape)
    axes = tuple(range(extra)) + tuple(extra + i for i, size in enumerate(shape)
                                       if size == 1 and anp.shape(g)[extra + i] != 1)
    return anp.reshape(anp.sum(g, axis=axes), shape)


# ----- im2col and col2im: raw arrays -----
def _offset_slices(kernel_offset, size, out_size, stride):
    """(output slice, input slice) of the positions where offset ``kernel_offset`` hits x.

    Output p reads input s·p + k − 1, which must lie in [0, size − 1].  None when none does.
    """
    first = max(0, -(-(PAD - kernel_offset) // stride))            # ceil((1 − k) / s)
    last = min(out_size - 1, (size - 1 + PAD - kernel_offset) // stride)
    if last < first:
        return None
    start = stride * first + kernel_offset - PAD
    return slice(first, last + 1), slice(start, start + stride * (last - first) + 1, stride)


def _offsets(height, width, stride):
    """Yield (i, j, out rows, out cols, in rows, in cols) for the nine kernel offsets; the slices
    are None where the offset reads only padding."""
    out_h, out_w = conv_out_size(height, stride), conv_out_size(width, stride)
    for i in range(KERNEL):
        rows = _offset_slices(i, height, out_h, stride) or (None, None)
        for j in range(KERNEL):
            cols = _offset_slices(j, width, out_w, stride) or (None, None)
            yield i, j, rows[0], cols[0], rows[1], cols[1]


def im2col(x, stride):
    """x (..., n, C, H, W) -> patches (..., C·9, n·H'·W'); see the module docstring."""
    *lead, n, channels, height, width = x.shape
    out_h, out_w = conv_out_size(height, stride), conv_out_size(width, stride)
    patches = np.empty((*lead, channels, KERNEL, KERNEL, n, out_h, out_w), dtype=x.dtype, like=x)
    x_cn = x.swapaxes(-4, -3)                                   # (..., C, n, H, W), a view
    for i, j, out_rows, out_cols, in_rows, in_cols in _offsets(height, width, stride):
        block = patches[..., i, j, :, :, :]                     # (..., C, n, H', W'), a view
        if out_rows is None or out_cols is None:
            block[...] = 0                                      # this offset reads padding only
            continue
        block[..., out_rows, out_cols] = x_cn[..., in_rows, in_cols]
        for edge in (slice(0, out_rows.start), slice(out_rows.stop, out_h)):
            block[..., edge, :] = 0                             # the padding rows and columns
        for edge in (slice(0, out_cols.start), slice(out_cols.stop, out_w)):
            block[..., out_rows, edge] = 0
    return patches.reshape(*lead, channels * KERNEL * KERNEL, n * out_h * out_w)


def col2im(patches, x_shape, stride):
    """The adjoint of im2col: sums every patch entry back onto the pixel it came from."""
    *lead, n, channels, height, width = x_shape
    out_h, out_w = conv_out_size(height, stride), conv_out_size(width, stride)
    patches = patches.reshape(*lead, channels, KERNEL, KERNEL, n, out_h, out_w)
    x_cn = np.zeros((*lead, channels, n, height, width), dtype=patches.dtype, like=patches)
    for i, j, out_rows, out_cols, in_rows, in_cols in _offsets(height, width, stride):
        if out_rows is not None and out_cols is not None:
            x_cn[..., in_rows, in_cols] += patches[..., i, j, :, out_rows, out_cols]
    return x_cn.swapaxes(-4, -3)                                # (..., n, C, H, W)


def _channels_first(y):
    """(..., n, F, H', W') -> (..., F, n·H'·W'): a view when y is channel-major, else a copy."""
    *lead, n, filters, height, width = y.shape
    return y.swapaxes(-4, -3).reshape(*lead, filters, n * height * width)


def _image_chunks(x_shape, stride, itemsize):
    """Ranges of images whose patch array takes about CHUNK_BYTES: each is made and multiplied
    while it is still in the cache."""
    *_, n, channels, height, width = x_shape
    per_image = channels * KERNEL * KERNEL * conv_out_size(height, stride) * conv_out_size(width, stride)
    size = max(1, CHUNK_BYTES // max(per_image * itemsize, 1))
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _correlate(x, w, stride):
    """w ⋆ x, raw: x (..., n, C, H, W), w (..., F, C, 3, 3) -> (..., n, F, H', W'), channel-major;
    one product of the kernel (..., F, C·9) with each chunk's patches (..., C·9, n_chunk·H'·W')."""
    *_, n, _, height, width = x.shape
    out_h, out_w = conv_out_size(height, stride), conv_out_size(width, stride)
    kernel = w.reshape(*w.shape[:-3], -1)                       # (..., F, C·9)
    lead = np.broadcast_shapes(x.shape[:-4], w.shape[:-4])
    out = np.empty(lead + (w.shape[-4], n, out_h, out_w), dtype=np.result_type(x, w), like=x)
    columns = out.reshape(*lead, w.shape[-4], n * out_h * out_w)    # (..., F, n·H'·W'), a view
    for start, stop in _image_chunks(x.shape, stride, out.dtype.itemsize):
        np.matmul(kernel, im2col(x[..., start:stop, :, :, :], stride),
                  out=columns[..., start * out_h * out_w:stop * out_h * out_w])
    return out.swapaxes(-4, -3)                                 # (..., n, F, H', W')


# ----- the three convolution primitives -----
@primitive
def conv3x3(x, w, b, stride):
    """y = w ⋆ x + b (..., n, F, H', W'); b (..., F) or None."""
    y = _correlate(x, w, stride)
    return y if b is None else in_place(np.add, y, b[..., None, :, None, None])


@primitive
def conv3x3_transpose(g, w, stride, x_shape):
    """x̄ = (w ⋆)ᵀ g: g (..., n, F, H', W') -> x_shape (..., n, C, H, W)."""
    if stride == 1:                                             # w̃ ⋆ g, w̃ = w flipped, C ↔ F
        return sum_to(_correlate(g, w[..., ::-1, ::-1].swapaxes(-4, -3), 1), x_shape)
    kernel_t = w.reshape(*w.shape[:-3], -1).swapaxes(-1, -2)    # (..., C·9, F)
    lead = np.broadcast_shapes(g.shape[:-4], w.shape[:-4])
    n, channels, height, width = x_shape[-4:]
    x_bar = np.empty(lead + (channels, n, height, width), dtype=np.result_type(g, w),
                     like=g).swapaxes(-4, -3)                   # (..., n, C, H, W), channel-major
    for start, stop in _image_chunks(x_shape, stride, x_bar.dtype.itemsize):   # col2im(w_matᵀ g)
        columns = np.matmul(kernel_t, _channels_first(g[..., start:stop, :, :, :]))
        chunk_shape = lead + (stop - start,) + tuple(x_shape[-3:])
        x_bar[..., start:stop, :, :, :] = col2im(columns, chunk_shape, stride)
    return sum_to(x_bar, x_shape)


@primitive
def conv3x3_weight_grad(x, g, stride, w_shape):
    """w̄[f, c, i, j] = Σ_{m,p,q} g[m, f, p, q] · x[m, c, s·p + i − 1, s·q + j − 1]: x (..., n, C,
    H, W), g (..., n, F, H', W') -> w_shape (..., F, C, 3, 3).  The patches of x are made again
    here, chunk by chunk, rather than kept from the forward pass."""
    total = 0
    for start, stop in _image_chunks(x.shape, stride, x.dtype.itemsize):
        patches = im2col(x[..., start:stop, :, :, :], stride)    # (..., C·9, n_chunk·H'·W')
        total = total + np.matmul(_channels_first(g[..., start:stop, :, :, :]),
                                  patches.swapaxes(-1, -2))      # (..., F, C·9)
    return sum_to(total, tuple(w_shape[:-4]) + total.shape[-2:]).reshape(w_shape)


@primitive
def conv3x3_grads(g, x, w, stride):
    """(x̄, w̄) = (conv3x3_transpose(g, w), conv3x3_weight_grad(x, g)), the VJP of y = w ⋆ x in
    both arguments at once.  At stride 1 the two share the patches of g: x̄ = w̃_mat @ patches(g),
    and w̄[f, c, i, j] = (x_mat @ patches(g)ᵀ)[c, (f, 2 − i, 2 − j)] (w̄'s sum, with p + i − 1
    renamed p)."""
    if stride != 1:
        return (conv3x3_transpose.fun(g, w, stride, x.shape),
                conv3x3_weight_grad.fun(x, g, stride, w.shape))
    *_, n, filters, height, width = g.shape
    channels = x.shape[-3]
    flipped = w[..., ::-1, ::-1].swapaxes(-4, -3)               # w̃ (..., C, F, 3, 3)
    kernel = flipped.reshape(*flipped.shape[:-3], -1)           # (..., C, F·9)
    lead = np.broadcast_shapes(g.shape[:-4], w.shape[:-4])
    x_bar = np.empty(lead + (channels, n, height, width), dtype=np.result_type(g, w), like=g)
    columns = x_bar.reshape(*lead, channels, n * height * width)
    total = 0
    for start, stop in _image_chunks(g.shape, 1, x_bar.dtype.itemsize):
        patches = im2col(g[..., start:stop, :, :, :], 1)        # (..., F·9, n_chunk·H·W)
        np.matmul(kernel, patches, out=columns[..., start * height * width:stop * height * width])
        total = total + np.matmul(_channels_first(x[..., start:stop, :, :, :]),
                                  patches.swapaxes(-1, -2))      # (..., C, F·9)
    w_bar = total.reshape(*total.shape[:-1], filters, KERNEL, KERNEL)[..., ::-1, ::-1].swapaxes(-4, -3)
    return sum_to(x_bar.swapaxes(-4, -3), x.shape), sum_to(w_bar, w.shape)


def _conv3x3_vjp(argnums, ans, args, kwargs):
    x, w, b, stride = args

    def vjp(g):
        grads = {2: lambda: sum_channels(g, anp.shape(b), -3)}
        if 0 in argnums and 1 in argnums:                       # both from one pass over ḡ
            both = conv3x3_grads(g, x, w, stride)
            grads[0], grads[1] = (lambda: both[0]), (lambda: both[1])
        else:
            grads[0] = lambda: conv3x3_transpose(g, w, stride, anp.shape(x))
            grads[1] = lambda: conv3x3_weight_grad(x, g, stride, anp.shape(w))
        return tuple(grads[argnum]() for argnum in argnums)
    return vjp


def _conv3x3_grads_vjp(argnums, ans, args, kwargs):
    g, x, w, stride = args

    def vjp(h):                                                 # h: (h̄ for x̄, V̄ for w̄)
        h_x, h_w = h[0], h[1]
        grads = {0: lambda: sum_to(conv3x3(h_x, w, None, stride) + conv3x3(x, h_w, None, stride),
                                   anp.shape(g)),
                 1: lambda: conv3x3_transpose(g, h_w, stride, anp.shape(x)),
                 2: lambda: conv3x3_weight_grad(h_x, g, stride, anp.shape(w))}
        return tuple(grads[argnum]() for argnum in argnums)
    return vjp


defvjp_argnums(conv3x3, _conv3x3_vjp)
defvjp_argnums(conv3x3_grads, _conv3x3_grads_vjp)
defvjp(conv3x3_transpose,
       lambda ans, g, w, stride, x_shape: lambda h: sum_to(conv3x3(h, w, None, stride), anp.shape(g)),
       lambda ans, g, w, stride, x_shape: lambda h: conv3x3_weight_grad(h, g, stride, anp.shape(w)))
defvjp(conv3x3_weight_grad,
       lambda ans, x, g, stride, w_shape: lambda v: conv3x3_transpose(g, v, stride, anp.shape(x)),
       lambda ans, x, g, stride, w_shape: lambda v: sum_to(conv3x3(x, v, None, stride), anp.shape(g)))


# ----- per-channel parameters -----
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
