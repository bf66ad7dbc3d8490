"""How autograd differentiates a device array (CuPy's, or the strict stand-in): registering
its type, and the fixes to autograd's internals that would otherwise move it to the host.

    register_array_type(T, xp, scatter_add)   make autograd differentiate arrays of type T
    is_registered(T)                          whether T was registered
    install_autograd_patches()                the replacements below; a second call does nothing
    logsumexp(x, axis, keepdims)   log Σ exp x, stable, in autograd.numpy (no scipy, no host copy)

Registering a type (``ArrayBox.register`` and a ``VSpace`` whose zeros and ones are made by the
type's own array module) lets autograd trace it, and most forward passes then run: numpy hands
its functions to the array's own module (NEP 13, NEP 18).  Most backward passes still fail,
because a few internals of autograd 1.9 (pinned in setup.cfg) build their intermediate arrays
with plain numpy, on the host, or call numpy paths that convert their operands to the host.
``import refmeta`` calls ``install_autograd_patches``, which rebinds each of them to a version
of the same math that creates its arrays on the input's device.  They are installed once, on
every backend, so numpy and device runs go through identical code:

    1 repeat_to_match_shape, the VJP helper of sum/mean/var/std/max/min/prod/logsumexp:
      broadcast the gradient back (it added numpy.zeros(shape), a host array)
    2 the VJP and JVP of where (they built numpy.zeros(g.shape) on the host)
    3 concatenate_args (it took .view(numpy.ndarray) of every result: on CuPy, a wrong object view)
    4 dot_adjoint_0 / dot_adjoint_1 (they ended in numpy.asarray(out, dtype), a host copy)
    5 untake, the VJP of indexing (numpy.add.at, whose .at CuPy refuses for slices and tuples:
      a plain in-place add for basic indices, a scatter-add otherwise)
    6 parse_einsum_input (numpy's parser asanyarray'd the operands; only their shapes matter)
    7 the VJP of einsum (its tensor of ones for summed-out subscripts was numpy.ones, on the host)
    8 logsumexp (here, in place of autograd.scipy.special.logsumexp, which calls scipy and
      so converts its input to the host)
    9 array_from_args / _array_from_scalar_or_array, behind anp.array and anp.stack (numpy.array
      without like=, which converts each device array to the host)
   10 the VJP of broadcast_to, extended to new leading axes (trees.broadcast_tasks needs it)

Several of these rebind private names of autograd, which is why autograd is pinned.
tests/test_backend.py checks each against plain numpy on ``refmeta.device.strict.StrictArray``,
and shows that autograd's original fails there.
"""

import math
import sys

import numpy as np
import autograd.numpy as anp
from autograd.core import SparseObject, VSpace, def_linear, primitive_jvps, primitive_vjps
from autograd.extend import defjvp, defvjp, defvjp_argnum, notrace_primitive, primitive
from autograd.numpy import numpy_jvps, numpy_vjps, numpy_wrapper
from autograd.numpy.numpy_boxes import ArrayBox
from autograd.numpy.numpy_vspaces import ArrayVSpace, ComplexArrayVSpace
from autograd.tracer import getval

__all__ = ["register_array_type", "is_registered", "logsumexp", "install_autograd_patches"]

_device_types = {}  # array type -> (array module with zeros/ones/asarray, scatter_add(a, idx, v))
_originals = {}  # what install_autograd_patches replaced, by name (tests show these fail)


# ----- autograd registration of a device array type -----
class DeviceArrayVSpace(ArrayVSpace):
    """autograd's vector space of a device array type: what it creates stays on the device."""

    def __init__(self, value):
        self.shape, self.dtype = value.shape, value.dtype
        self.xp = _device_types[type(value)][0]

    def zeros(self):
        return self.xp.zeros(self.shape, dtype=self.dtype)

    def ones(self):
        ones = self.xp.ones(self.shape, dtype=self.dtype)
        return ones * (1 + 1j) if self.iscomplex else ones

    def randn(self):  # test-only helpers (check_grads, jacobian): built on the host, moved once
        return self.xp.asarray(super().randn())

    def standard_basis(self):
        return map(self.xp.asarray, super().standard_basis())


class ComplexDeviceArrayVSpace(DeviceArrayVSpace, ComplexArrayVSpace):
    pass


def register_array_type(array_type, xp, scatter_add):
    """Make autograd differentiate ``array_type`` (what numpy_boxes/numpy_vspaces do for ndarray).

    Args:
        array_type: the device array class (``cupy.ndarray``, ``StrictArray``).
        xp: its array module, providing ``zeros(shape, dtype)``, ``ones``, ``asarray(host)``.
        scatter_add: ``scatter_add(a, indices, values)``, in place, repeats accumulating.
    """
    _device_types[array_type] = (xp, scatter_add)
    ArrayBox.register(array_type)
    VSpace.register(array_type, lambda x: ComplexDeviceArrayVSpace(x) if x.dtype.kind == "c"
                    else DeviceArrayVSpace(x))


def is_registered(array_type):
    """True if ``register_array_type`` was called for ``array_type``."""
    return array_type in _device_types


def _first_device_array(values):
    return next((v for v in values if type(v) in _device_types), None)


# ----- the replacements, numbered as in the module docstring -----
def repeat_to_match_shape(g, shape, dtype, axis, keepdims):
    """``g`` broadcast back over the reduced axes of ``shape``, and how many entries each covers."""
    if shape == ():
        return g, 1
    axes = tuple(range(len(shape))) if axis is None else np.atleast_1d(axis).tolist()
    axes = [a % len(shape) for a in axes]
    new_shape = tuple(1 if i in axes else n for i, n in enumerate(shape))
    if np.dtype(dtype).kind == "c" and not anp.iscomplexobj(g):
        g = g + 0j
    # 1: was reshape(g) + numpy.zeros(shape), a host array; a Python-int count also keeps float32
    return anp.broadcast_to(anp.reshape(g, new_shape), shape), math.prod(shape[a] for a in axes)


def _where_vjp(argnum):
    def vjpmaker(ans, c, x=None, y=None):
        pick = (lambda g: anp.where(c, g, anp.zeros_like(g))) if argnum == 1 else \
               (lambda g: anp.where(c, anp.zeros_like(g), g))
        # 2: was where(c, g, numpy.zeros(g.shape)), a host array (and no unbroadcast)
        return numpy_vjps.unbroadcast_f(x if argnum == 1 else y, pick)
    return vjpmaker


def _concatenate_args(axis, *args):
    out = np.concatenate(args, axis)
    # 3: was .view(numpy.ndarray) on any result; on CuPy that is a silently wrong object view
    return out.view(np.ndarray) if isinstance(out, np.ndarray) else out


def _dot_adjoint_0(B, G, A_meta, B_meta):
    _, A_ndim, A_dtype, _ = A_meta
    _, B_ndim, _, _ = B_meta
    if B_ndim == 0 or B_ndim == 1 or A_ndim == 0:
        out = np.tensordot(G, B, max(0, B_ndim - (A_ndim != 0)))
    else:
        out = np.tensordot(G, np.swapaxes(B, -1, -2), B_ndim - 1)
    return out.astype(A_dtype, copy=False)  # 4: was numpy.asarray(out, dtype), a host copy


def _dot_adjoint_1(A, G, A_meta, B_meta):
    _, A_ndim, _, _ = A_meta
    _, B_ndim, B_dtype, _ = B_meta
    swap = (lambda x: np.swapaxes(x, -1, -2)) if B_ndim > 1 and A_ndim != 0 else (lambda x: x)
    if A_ndim == 0 or A_ndim == 1 or B_ndim == 0:
        out = swap(np.tensordot(G, A, max(0, A_ndim - (B_ndim != 0))))
    else:
        out = swap(np.tensordot(G, A, [range(-A_ndim - B_ndim + 2, -B_ndim + 1), range(A_ndim - 1)]))
    return out.astype(B_dtype, copy=False)  # 4: was numpy.asarray(out, dtype), a host copy


def _is_basic_index(idx):
    """True for ints, slices, None and Ellipsis (and tuples of them): no element repeats."""
    parts = idx if isinstance(idx, tuple) else (idx,)
    return all(p is None or p is Ellipsis or isinstance(p, slice)
               or (isinstance(p, (int, np.integer)) and not isinstance(p, (bool, np.bool_)))
               for p in parts)


def _scatter_add(a, idx, values):
    """``a[idx] += values`` in place with repeated indices accumulating, on a's device."""
    if isinstance(idx, list) and (not idx or not isinstance(idx[0], slice)):
        idx = np.asarray(idx) if idx else np.zeros(0, np.int64)
    if isinstance(a, np.ndarray):
        return np.add.at(a, idx, values)
    xp, scatter_add = _device_types[type(a)]
    parts = idx if isinstance(idx, tuple) else (idx,)
    parts = tuple(xp.asarray(p) if isinstance(p, np.ndarray) else p for p in parts)  # index to device
    scatter_add(a, parts if isinstance(idx, tuple) else parts[0], values)


def _untake(x, idx, vs):
    def mut_add(a):
        if _is_basic_index(idx):
            a[idx] += x  # 5: was numpy.add.at, whose .at CuPy refuses for slices and tuples
        else:
            _scatter_add(a, idx, x)  # 5: numpy.add.at on the host, cupyx.scatter_add on CuPy
        return a
    return SparseObject(vs, mut_add)


@notrace_primitive
def _parse_einsum_input(*args):
    """numpy's einsum parser on shape-only stand-ins: only the operands' shapes matter."""
    stand_ins = [np.broadcast_to(np.empty((), bool), np.shape(op)) for op in args[1:]]
    return numpy_wrapper._parse_einsum_input((args[0], *stand_ins))  # 6: it asanyarray'd operands


def _grad_einsum(argnum, ans, operands_, kwargs):
    """autograd's einsum VJP, with the tensor of ones for summed-out subscripts on the device."""
    if not isinstance(operands_[0], str):
        return numpy_vjps.grad_einsum(argnum, ans, operands_, kwargs)  # sublist form: no ones
    result_meta = anp.metadata(operands_[argnum])

    def vjp(g):
        in_subs, out_subs, _ = numpy_wrapper.parse_einsum_input(*operands_)
        operands = operands_[1:]
        in_subs_list = in_subs.split(",")
        op_num = argnum - 1
        subs_wrt = in_subs_list[op_num]
        rest_of_ops = operands[:op_num] + operands[op_num + 1:]
        rest_of_subs = in_subs_list[:op_num] + in_subs_list[op_num + 1:]
        # Subscripts only in subs_wrt are summed out: contract g against a tensor of ones.
        other_named_subs = set("".join([out_subs] + rest_of_subs))
        naked = [(i, sub) for i, sub in enumerate(subs_wrt) if sub not in other_named_subs]
        new_operands, new_input_subs = (g,), [out_subs]
        if naked:
            like = getval(operands[op_num])
            shape = [anp.shape(like)[i] for i, _ in naked]
            # 7: was numpy.ones(shape), a host array
            new_operands += (np.ones(shape, dtype=anp.result_type(like), like=like),)
            new_input_subs.append("".join(sub for _, sub in naked))
        subscripts = ",".join(new_input_subs + rest_of_subs) + "->" + subs_wrt
        return numpy_vjps.unbroadcast(anp.einsum(subscripts, *new_operands, *rest_of_ops),
                                      result_meta)

    return vjp


def logsumexp(x, axis=None, keepdims=False):
    """log Σ exp(x) over ``axis``, stable: shift by the (constant) max.  Differentiable to any order.

    8: autograd.scipy.special.logsumexp calls scipy, which converts its input to the host.
    """
    shift = anp.max(getval(x), axis=axis, keepdims=True)  # a constant: the result doesn't depend on it
    shift = anp.where(anp.isfinite(shift), shift, anp.zeros_like(shift))
    with np.errstate(divide="ignore"):  # every term exp(-inf): log 0 = -inf, as scipy gives
        out = anp.log(anp.sum(anp.exp(x - shift), axis=axis, keepdims=True)) + shift
    return out if keepdims else anp.squeeze(out, axis=axis)


def _array_from_scalar_or_array(array_args, array_kwargs, scalar):
    like = _first_device_array((scalar,))
    kwargs = array_kwargs if like is None else dict(array_kwargs, like=like)  # 9: was without like=
    return np.array(scalar, *array_args, **kwargs)


def _array_from_args(array_args, array_kwargs, *args):
    like = _first_device_array(args)
    if like is None:
        return np.array(args, *array_args, **array_kwargs)
    # 9: was numpy.array(args), which converts each device array to the host
    stacked = np.stack([np.asarray(a, like=like) for a in args])
    return np.array(stacked, *array_args, like=like, **array_kwargs) if array_args or array_kwargs \
        else stacked


def _grad_broadcast_to(ans, x, new_shape):
    old_shape, new_shape = anp.shape(x), anp.shape(ans)
    lead = len(new_shape) - len(old_shape)
    # 10: was an assert against new leading axes; they are summed away, as unbroadcast does
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(old_shape)
                                      if n == 1 and new_shape[lead + i] != 1)
    return lambda g: anp.reshape(anp.sum(g, axis=axes, keepdims=True), old_shape)


def _replace_primitive(modules, name, raw, copy_vjp=True, copy_jvp=True):
    """Bind ``name`` in ``modules`` to ``primitive(raw)``, keeping the old one's VJP/JVP rules."""
    old = getattr(modules[0], name)
    new = primitive(raw)
    if copy_vjp and old in primitive_vjps:
        primitive_vjps[new] = primitive_vjps[old]
    if copy_jvp and old in primitive_jvps:
        primitive_jvps[new] = primitive_jvps[old]
    for module in modules:
        if getattr(module, name, None) is old:
            setattr(module, name, new)
    _originals[name] = old
    return new


def _redefine_vjp(fun, key, *vjpmakers):
    """``defvjp(fun, *vjpmakers)``, keeping the old rule in ``_originals[key]``."""
    _originals.setdefault(key, primitive_vjps[fun])
    defvjp(fun, *vjpmakers)


def install_autograd_patches():
    """Install the replacements listed in the module docstring; a second call does nothing."""
    if getattr(numpy_vjps, "_refmeta_patched", False):
        return
    wrapper_modules = [numpy_wrapper, anp]
    _originals["repeat_to_match_shape"] = numpy_vjps.repeat_to_match_shape
    for module in [numpy_vjps, sys.modules.get("autograd.scipy.special")]:
        if module is not None:
            module.repeat_to_match_shape = repeat_to_match_shape  # 1

    where = anp._original_where  # the primitive behind autograd.numpy.where
    _redefine_vjp(where, "vjp of where", None, _where_vjp(1), _where_vjp(2))  # 2
    defjvp(where, None, lambda g, ans, c, x=None, y=None: anp.where(c, g, anp.zeros_like(g)),
           lambda g, ans, c, x=None, y=None: anp.where(c, anp.zeros_like(g), g))

    _replace_primitive(wrapper_modules, "concatenate_args", _concatenate_args)  # 3

    for name, raw in [("dot_adjoint_0", _dot_adjoint_0), ("dot_adjoint_1", _dot_adjoint_1)]:
        def_linear(_replace_primitive([numpy_vjps, numpy_jvps], name, raw, copy_jvp=False))  # 4

    untake = _replace_primitive([numpy_vjps, numpy_jvps], "untake", _untake, copy_jvp=False)  # 5
    defjvp(untake, "same")

    _originals["parse_einsum_input"] = numpy_wrapper.parse_einsum_input
    numpy_wrapper.parse_einsum_input = _parse_einsum_input  # 6
    _originals["vjp of einsum"] = primitive_vjps[anp.einsum]
    defvjp_argnum(anp.einsum, _grad_einsum)  # 7

    for name, raw in [("array_from_args", _array_from_args),
                      ("_array_from_scalar_or_array", _array_from_scalar_or_array)]:
        _replace_primitive(wrapper_modules, name, raw)  # 9

    _redefine_vjp(anp.broadcast_to, "vjp of broadcast_to", _grad_broadcast_to)  # 10
    numpy_vjps._refmeta_patched = True
