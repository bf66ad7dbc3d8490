"""StrictArray: a CPU stand-in for a CuPy array, so a silent host copy fails on the CPU.

A ``StrictArray`` wraps a numpy ndarray and follows CuPy's interop rules:

- ``numpy.asarray(x)`` / ``__array__`` raise TypeError: no implicit copy to the host;
- a numpy ndarray as an operand (operators, ufuncs, array functions; 0-d too) raises
  TypeError; Python scalars and numpy scalars (``np.float64(2.0)``) are fine;
- an operand of unknown type (an autograd ArrayBox, say) gives NotImplemented, so the
  other operand's reflected method runs;
- ``ufunc.at`` refuses slice and tuple indices (use :func:`scatter_add`, like
  ``cupyx.scatter_add``);
- explicit host reads are allowed: ``x.get()``, ``x.item()``, ``float(x)``, ``bool(x)``.

numpy functions reach it through ``__array_function__`` / ``__array_ufunc__`` (NEP 18,
NEP 13), so ``numpy.zeros(shape, like=x)`` and ``numpy.asarray(host, like=x)`` create
StrictArrays: ``like=`` is how a host array is handed over explicitly (with a copy).
Integer and boolean numpy arrays are accepted where CuPy accepts them: as indices, and as
the axes of ``transpose`` / ``tensordot`` (autograd's tensordot adjoints pass
``numpy.arange`` axes).  Reductions return 0-d StrictArrays, not numpy scalars, as CuPy does.

Importing this module registers StrictArray with autograd (ArrayBox and a VSpace)
through :func:`refmeta.device.autograd_patches.register_array_type`.
"""

import numbers
import operator
import sys

import numpy as np

from refmeta.device import autograd_patches, backend

__all__ = ["StrictArray", "to_strict", "from_strict", "asarray", "zeros", "ones",
           "scatter_add"]

_NOT_ALLOWED = "implicit conversion to a NumPy array is not allowed; use .get()"
# numpy functions whose non-operand arguments (axes) may be host integer arrays, as on CuPy.
_INT_AXES_FUNCS = {np.transpose, np.tensordot, np.moveaxis}


class _Refused(Exception):
    """An operand StrictArray cannot handle: answer NotImplemented."""


def _unwrap(obj, allow_host=False, allow_index=False):
    """Replace StrictArrays by their data inside args; refuse host arrays, defer on unknowns."""
    if isinstance(obj, StrictArray):
        return obj._data
    if isinstance(obj, np.ndarray):
        if allow_host or (allow_index and obj.dtype.kind in "iub"):
            return obj
        raise TypeError(f"a numpy.ndarray (shape {obj.shape}, dtype {obj.dtype}) cannot be "
                        "an operand of a StrictArray operation; move it with "
                        "numpy.asarray(host, like=x)")
    if isinstance(obj, (list, tuple)):
        items = [_unwrap(o, allow_host, allow_index) for o in obj]
        return type(obj)(items) if not hasattr(obj, "_fields") else type(obj)(*items)
    if isinstance(obj, dict):
        return {k: _unwrap(v, allow_host, allow_index) for k, v in obj.items()}
    if hasattr(obj, "__array_ufunc__") or hasattr(obj, "__array_function__"):
        if not isinstance(obj, (np.generic, type)):
            raise _Refused  # another array type (an ArrayBox, say): let it try
    return obj


def _wrap(out):
    """Wrap numpy results as StrictArrays; numpy scalars become 0-d arrays, as on CuPy."""
    if isinstance(out, np.ndarray):
        return StrictArray(out)
    if isinstance(out, (np.number, np.bool_)):
        return StrictArray(np.asarray(out))
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # EighResult and friends
        return type(out)(*map(_wrap, out))
    if isinstance(out, (list, tuple)):
        return type(out)(map(_wrap, out))
    return out


def _contains_strict(obj):
    if isinstance(obj, StrictArray):
        return True
    if isinstance(obj, (list, tuple)):
        return any(_contains_strict(o) for o in obj)
    if isinstance(obj, dict):
        return any(_contains_strict(o) for o in obj.values())
    return False


def _is_operand(other):
    """True for StrictArrays and scalars; a numpy ndarray raises; anything else is not ours."""
    if isinstance(other, np.ndarray):
        _unwrap(other)  # raises the TypeError
    return isinstance(other, (StrictArray, numbers.Number, np.generic))


def _binary(op):
    def method(self, other):
        if not _is_operand(other):
            return NotImplemented
        return _wrap(op(self._data, _unwrap(other)))
    return method


def _reflected(op):
    return _binary(lambda a, b: op(b, a))


def _inplace(op):
    def method(self, other):
        if not _is_operand(other):
            return NotImplemented
        op(self._data, _unwrap(other))  # e.g. operator.iadd mutates self._data
        return self
    return method


def _via_numpy(func):
    """A method that calls ``func(self, ...)`` through numpy's dispatch."""
    return lambda self, *args, **kwargs: func(self, *args, **kwargs)


class StrictArray:
    """A numpy ndarray behind CuPy's interop rules.  ``StrictArray(host_ndarray)``."""

    __slots__ = ["_data"]

    def __init__(self, data):
        if not isinstance(data, np.ndarray):
            raise TypeError(f"StrictArray wraps a numpy.ndarray; got {type(data).__name__}")
        self._data = data

    # ----- the interop rules -----
    def __array__(self, *args, **kwargs):
        raise TypeError(_NOT_ALLOWED)

    def __array_function__(self, func, types, args, kwargs):
        # No StrictArray among the arguments means numpy came here through like=x:
        # an explicit transfer, so host arrays are allowed.
        via_like = not (_contains_strict(args) or _contains_strict(kwargs))
        try:
            args, kwargs = (_unwrap(a, via_like, func in _INT_AXES_FUNCS)
                            for a in (args, kwargs))
        except _Refused:
            return NotImplemented
        result = func(*args, **kwargs)
        if via_like and isinstance(result, np.ndarray):
            result = result.copy()  # a transfer copies: the host array may change later
        return _wrap(result)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method == "at" and isinstance(inputs[1], (slice, tuple)):
            raise TypeError(f"{ufunc.__name__}.at does not support slice or tuple indices "
                            "on device arrays (as on CuPy); use refmeta.device.strict.scatter_add")
        out = kwargs.get("out")
        try:
            inputs = _unwrap(inputs, allow_index=method == "at")
            kwargs = _unwrap(kwargs)
        except _Refused:
            return NotImplemented
        result = getattr(ufunc, method)(*inputs, **kwargs)
        if out is not None:  # numpy wrote into the StrictArrays' data
            return out[0] if len(out) == 1 else out
        return None if method == "at" else _wrap(result)

    # ----- attributes -----
    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)
    nbytes = property(lambda self: self._data.nbytes)
    T = property(lambda self: StrictArray(self._data.T))
    real = property(lambda self: StrictArray(self._data.real))
    imag = property(lambda self: StrictArray(self._data.imag))

    # ----- explicit host reads, allowed as on CuPy -----
    def get(self):
        """A host copy: the only way out to numpy."""
        return self._data.copy()

    def item(self):
        return self._data.item()

    def _scalar(self, kind):
        if self.size != 1:
            raise TypeError(f"only size-1 arrays convert to {kind.__name__}; got shape {self.shape}")
        return kind(self._data.reshape(()))

    __float__ = lambda self: self._scalar(float)
    __int__ = lambda self: self._scalar(int)
    __complex__ = lambda self: self._scalar(complex)
    __bool__ = lambda self: self._scalar(bool)

    # ----- indexing -----
    def __getitem__(self, key):
        return _wrap(self._data[_unwrap(key, allow_index=True)])

    def __setitem__(self, key, value):
        if not _is_operand(value):
            raise TypeError("a StrictArray can only be set from a StrictArray or a scalar; "
                            f"got {type(value).__name__}")
        self._data[_unwrap(key, allow_index=True)] = _unwrap(value)

    def __len__(self):
        return len(self._data)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self):
        return "StrictArray" + repr(self._data)[len("array"):]

    # ----- operators -----
    __add__, __radd__, __iadd__ = _binary(operator.add), _reflected(operator.add), _inplace(operator.iadd)
    __sub__, __rsub__, __isub__ = _binary(operator.sub), _reflected(operator.sub), _inplace(operator.isub)
    __mul__, __rmul__, __imul__ = _binary(operator.mul), _reflected(operator.mul), _inplace(operator.imul)
    __truediv__, __rtruediv__, __itruediv__ = (_binary(operator.truediv), _reflected(operator.truediv),
                                               _inplace(operator.itruediv))
    __floordiv__, __rfloordiv__ = _binary(operator.floordiv), _reflected(operator.floordiv)
    __mod__, __rmod__ = _binary(operator.mod), _reflected(operator.mod)
    __pow__, __rpow__, __ipow__ = _binary(operator.pow), _reflected(operator.pow), _inplace(operator.ipow)
    __matmul__, __rmatmul__ = _binary(operator.matmul), _reflected(operator.matmul)
    __and__, __or__, __xor__ = _binary(operator.and_), _binary(operator.or_), _binary(operator.xor)
    __eq__, __ne__ = _binary(operator.eq), _binary(operator.ne)
    __lt__, __le__ = _binary(operator.lt), _binary(operator.le)
    __gt__, __ge__ = _binary(operator.gt), _binary(operator.ge)
    __hash__ = None
    __neg__ = lambda self: _wrap(-self._data)
    __pos__ = lambda self: _wrap(+self._data)
    __abs__ = lambda self: _wrap(abs(self._data))
    __invert__ = lambda self: _wrap(~self._data)

    # ----- methods -----
    def reshape(self, *shape, order="C"):
        shape = shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape
        return StrictArray(self._data.reshape(shape, order=order))

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else (axes or None)
        return StrictArray(self._data.transpose(axes))

    def astype(self, dtype, copy=True):
        return StrictArray(self._data.astype(dtype, copy=copy))

    def copy(self):
        return StrictArray(self._data.copy())

    def ravel(self):
        return StrictArray(self._data.ravel())

    def flatten(self):
        return StrictArray(self._data.flatten())

    def scatter_add(self, indices, values):
        """``numpy.add.at(self, indices, values)`` in place, any index: cupyx.scatter_add."""
        np.add.at(self._data, _unwrap(indices, allow_index=True), _unwrap(values))


for _name in ("sum", "mean", "var", "std", "max", "min", "prod", "argmax", "argmin", "any", "all",
              "cumsum", "clip", "squeeze", "swapaxes", "conj", "conjugate", "dot", "round",
              "nonzero", "argsort", "take", "diagonal", "trace", "repeat"):
    setattr(StrictArray, _name, _via_numpy(getattr(np, _name)))


def asarray(host, dtype=None):
    """A StrictArray holding a copy of ``host`` (array-like on the host)."""
    if isinstance(host, StrictArray):
        return host.astype(dtype) if dtype is not None else host
    return StrictArray(np.array(host, dtype=dtype))


def zeros(shape, dtype=np.float64):
    return StrictArray(np.zeros(shape, dtype=dtype))


def ones(shape, dtype=np.float64):
    return StrictArray(np.ones(shape, dtype=dtype))


def scatter_add(a, indices, values):
    """``cupyx.scatter_add`` for StrictArrays: ``a[indices] += values``, repeats accumulating."""
    a.scatter_add(indices, values)


def to_strict(x, dtype=None):
    """numpy array (or a dict / list / (named)tuple tree of them) -> StrictArray(s); scalars stay."""
    if isinstance(x, dict):
        return {k: to_strict(v, dtype) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        values = [to_strict(v, dtype) for v in x]
        return type(x)(*values) if hasattr(x, "_fields") else type(x)(values)
    return asarray(x, dtype) if isinstance(x, (np.ndarray, StrictArray)) else x


def from_strict(x):
    """StrictArray (or a tree of them) -> numpy ndarray(s), explicitly: ``backend.to_host``."""
    return backend.to_host(x)


autograd_patches.register_array_type(StrictArray, sys.modules[__name__], scatter_add)
