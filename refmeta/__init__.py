"""refmeta: reference implementations of meta-learning, in NumPy + autograd.

The six algorithms are the front door, one module each, with one shape (docs/architecture.md):
``maml``, ``reptile``, ``protonet``, ``matching``, ``snail``, ``metanet``.  Beside them:

    refmeta.nn       layers, models, losses, optimizers, parameter trees, the algorithms' building blocks
    refmeta.fast     models that supply their own derivatives, for speed (the fused MLP)
    refmeta.data     the episode sources: sinusoid tasks, Omniglot, Lake's one-shot runs
    refmeta.device   numpy / CuPy, autograd's device patches, and the strict stand-in array the tests run on
    refmeta.cases    the reference cases and ``verify``
    refmeta.checks   the input checks every public entry point uses

Importing refmeta installs the autograd patches that let it differentiate device arrays
(``refmeta.device.autograd_patches.install_autograd_patches``), once, before any algorithm runs,
and chooses the backend (``refmeta.device.backend``, from REFMETA_BACKEND).
"""

from refmeta.device import autograd_patches as _autograd_patches
from refmeta.device import backend as _backend

_backend.use_environment()                        # REFMETA_BACKEND, or numpy
_autograd_patches.install_autograd_patches()

__version__ = "0.1.0"
