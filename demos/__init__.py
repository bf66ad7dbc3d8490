"""Demos: each is importable (logic in functions) and runs from `refmeta demo NAME`."""
