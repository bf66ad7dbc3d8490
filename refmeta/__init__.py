"""refmeta: reference implementations of meta-learning, in NumPy + autograd.

Every algorithm is a small module of pure functions over parameter trees
(``dict[str, array]``); see README.md for the module-to-paper table.
"""

__version__ = "0.1.0"
