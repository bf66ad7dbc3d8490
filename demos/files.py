"""What every demo does with files: write them whole or not at all.

Each file goes through ``refmeta.disk.replace_atomically``: written beside its place, fsynced and
renamed, with SIGINT and SIGTERM held meanwhile, so an error, Ctrl-C or SIGTERM leaves the old
file or the new one, whole, and no temporary file.  The output folder and the names written
there are checked before any training (``refmeta.demos.options.check_out_folder``).
"""

import json
import os
import time

import numpy as np

from refmeta import disk


def replace_atomically(path, mode, write):
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it onto ``path``.

    An interrupted or failed write leaves no file behind, and never half of one, even on SIGTERM.
    """
    disk.replace_atomically(path, write, mode)


def write_json_atomically(path, report):
    """``report`` as indented JSON, NaN and ±inf written as null."""
    replace_atomically(path, "w", lambda f: json.dump(jsonable(report), f, indent=1, allow_nan=False))


def save_results(out_dir, report, start):
    """Record the seconds since ``start`` (a ``time.perf_counter()``) as
    report["timing"]["total_seconds"], write out_dir/results.json atomically and say so."""
    report["timing"]["total_seconds"] = time.perf_counter() - start
    path = os.path.join(out_dir, "results.json")
    write_json_atomically(path, report)
    print(f"wrote {path} ({report['timing']['total_seconds']:.0f} s in all)")


def save_figure_atomically(path, fig):
    replace_atomically(path, "wb", lambda f: fig.savefig(f, format="png", dpi=100))


def jsonable(value):
    """Plain JSON types; NaN and ±inf become None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
