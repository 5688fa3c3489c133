"""NaN and Inf at the boundary: feeds and data sets are checked where they enter,
naming the array and the first bad index, so a NaN in the data is never reported
later as "`matmul` produced a non-finite value"."""
from __future__ import annotations

import numpy as np

from dlc.grammar.errors import DlcError


def check_finite(arr, what: str, loc=None) -> None:
    """E0402 when the float array ``arr`` holds a NaN or an Inf."""
    a = np.asarray(arr)
    if a.dtype.kind not in "fc" or a.size == 0:
        return
    ok = np.isfinite(a)
    if ok.all():
        return
    first = tuple(int(i) for i in np.argwhere(~ok)[0])
    count = int(a.size - np.count_nonzero(ok))
    raise DlcError("E0402", f"{what} holds {a[first]} at index {list(first)} "
                            f"({count} non-finite value{'s' if count > 1 else ''} of {a.size})", loc,
                   hint="clean the data, or pass --allow-nonfinite if NaN/Inf are meant")


def check_dataset_finite(ds) -> None:
    """Every float array of a data set (runtime/data.py's Dataset) is finite."""
    for name, arr in ds.arrays.items():
        check_finite(arr, f"data set array `{name}` ({ds.description})")
