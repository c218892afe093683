"""The kernel sums of CLIS-L's densities: compiled with numba where it is installed (the
``fast`` extra), else numpy, with bit-identical results either way.

The kernel is the multivariate Student-t with 4 degrees of freedom in 4 dimensions,
``K(z) = (1 + |z|^2 / 4)^-4``: Gaussian-like near a reference, with polynomial tails, so that
one rare real configuration costs a layout a few log units rather than hundreds (a Gaussian
kernel's log-density falls with the squared distance). It needs no ``exp``: a sum of products,
a reciprocal and squarings, each an IEEE-754 correctly rounded operation that numba (no
``fastmath``, so no fused multiply-adds and no reordering) and numpy compute alike. Both paths
sum the references of a query in the same order, one after another, so a query's sum is the
same bits on either path; logarithms are taken afterwards by shared numpy code.

``kernel_sums(z, group, offsets, refs, query_image, ref_image)``: for each query row ``z[q]``
(features already divided by twice the bandwidth, as ``refs`` are), the sum of ``K`` over the
references ``refs[offsets[g]:offsets[g + 1]]`` of its group ``g = group[q]`` (0 for ``g < 0``),
and how many references were summed. With images given (bank build time only) references of
the query's own image are left out.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)
Float64Array = NDArray[np.float64]
Int64Array = NDArray[np.int64]
_BLOCK = 256  # queries per block of the numpy path: its (references, queries) temporaries stay small
# A 4-D Student-t with 4 degrees of freedom integrates (1 + |z|^2/4)^-4 to 16 pi^2 / 6 over R^4.
LOG_NORMALISER = float(np.log(16 * np.pi**2 / 6))


def _numpy_sums(
    z: Float64Array, group: Int64Array, offsets: Int64Array, refs: Float64Array,
    query_image: Int64Array | None, ref_image: Int64Array | None,
) -> tuple[Float64Array, Int64Array]:
    sums = np.zeros(group.size)
    counts = np.zeros(group.size, dtype=np.int64)
    if group.size == 0:
        return sums, counts
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    bounds = np.flatnonzero(np.diff(sorted_group)) + 1
    for first, last in zip([0, *bounds.tolist()], [*bounds.tolist(), group.size], strict=True):
        g = int(sorted_group[first])
        if g < 0:
            continue
        start, stop = int(offsets[g]), int(offsets[g + 1])
        if stop == start:
            continue
        r = refs[start:stop]
        for block in range(first, last, _BLOCK):
            rows = order[block:min(block + _BLOCK, last)]
            q = z[rows]
            # (references, queries): the running sum below goes down the references in order.
            diff = r[:, 0, None] - q[None, :, 0]
            u = diff * diff
            for d in range(1, 4):
                np.subtract(r[:, d, None], q[None, :, d], out=diff)
                np.multiply(diff, diff, out=diff)
                u += diff
            u += 1.0
            np.multiply(u, u, out=u)
            np.multiply(u, u, out=u)
            np.divide(1.0, u, out=u)
            kept = np.full(rows.size, stop - start, dtype=np.int64)
            if query_image is not None and ref_image is not None:
                same = ref_image[start:stop, None] == query_image[None, rows]
                u[same] = 0.0
                kept -= same.sum(axis=0)
            # A running sum, element after element: the compiled loop's order exactly.
            np.add.accumulate(u, axis=0, out=u)
            sums[rows] = u[-1]
            counts[rows] = kept
    return sums, counts


def _compiled() -> Any:
    """The numba kernel, or None where numba is not installed (or ``ACP_NO_NUMBA`` is set)."""
    if os.environ.get("ACP_NO_NUMBA"):
        return None
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True)
    def sums_of(z: Any, group: Any, offsets: Any, refs: Any, query_image: Any, ref_image: Any,
                masked: bool) -> Any:  # pragma: no cover - compiled
        n = group.size
        sums = np.zeros(n)
        counts = np.zeros(n, dtype=np.int64)
        for q in range(n):
            g = group[q]
            if g < 0:
                continue
            z0, z1, z2, z3 = z[q, 0], z[q, 1], z[q, 2], z[q, 3]
            total = 0.0
            kept = 0
            for r in range(offsets[g], offsets[g + 1]):
                if masked and ref_image[r] == query_image[q]:
                    continue
                d = refs[r, 0] - z0
                u = d * d
                d = refs[r, 1] - z1
                u += d * d
                d = refs[r, 2] - z2
                u += d * d
                d = refs[r, 3] - z3
                u += d * d
                u += 1.0
                u = u * u
                u = u * u
                total += 1.0 / u
                kept += 1
            sums[q] = total
            counts[q] = kept
        return sums, counts

    @numba.njit(cache=True, nogil=True)
    def sorted_sums_of(  # pragma: no cover - compiled
        zt: Any, group: Any, first: Any, last: Any, offsets: Any, refs: Any,
    ) -> Any:
        # Queries sorted by group, features in rows (zt[d, q]); each run of one group's queries
        # goes down its references once, summing into every query of the run: the inner loop
        # over queries has no dependence between iterations, so it runs in SIMD lanes, while
        # each query still adds its references one after another, in order.
        n = group.size
        sums = np.zeros(n)
        counts = np.zeros(n, dtype=np.int64)
        for run in range(first.size):
            a, b = first[run], last[run]
            g = group[a]
            if g < 0:
                continue
            start, stop = offsets[g], offsets[g + 1]
            for r in range(start, stop):
                r0, r1, r2, r3 = refs[r, 0], refs[r, 1], refs[r, 2], refs[r, 3]
                for q in range(a, b):
                    d = r0 - zt[0, q]
                    u = d * d
                    d = r1 - zt[1, q]
                    u += d * d
                    d = r2 - zt[2, q]
                    u += d * d
                    d = r3 - zt[3, q]
                    u += d * d
                    u += 1.0
                    u = u * u
                    u = u * u
                    sums[q] += 1.0 / u
            for q in range(a, b):
                counts[q] = stop - start
        return sums, counts

    try:  # compiled (or loaded from numba's cache) now: a numba that cannot, the numpy path stands
        z, g, o, r = np.zeros((1, 4)), np.zeros(1, dtype=np.int64), np.array([0, 1]), np.zeros((1, 4))
        sums_of(z, g, o, r, g, g, True)
        sorted_sums_of(np.zeros((4, 1)), g, g, np.ones(1, dtype=np.int64), o, r)
    except Exception:  # numba's own errors have no common base
        log.debug("numba could not compile CLIS-L's kernel; using numpy", exc_info=True)
        return None
    return sums_of, sorted_sums_of


_KERNEL: Any = None
_LOADED = False


def compiled_kernel() -> Any:
    """The compiled kernel (built once per process), None without numba."""
    global _KERNEL, _LOADED
    if not _LOADED:
        _KERNEL = _compiled()
        _LOADED = True
    return _KERNEL


def kernel_sums(
    z: Float64Array, group: Int64Array, offsets: Int64Array, refs: Float64Array,
    query_image: Int64Array | None = None, ref_image: Int64Array | None = None,
    *, compiled: bool | None = None,
) -> tuple[Float64Array, Int64Array]:
    """See the module docstring; ``compiled`` forces a path (None: numba when installed)."""
    z = np.ascontiguousarray(z, dtype=np.float64)
    group = np.ascontiguousarray(group, dtype=np.int64)
    kernel = compiled_kernel() if compiled is not False else None
    if compiled and kernel is None:
        raise RuntimeError("the compiled kernel needs numba (pip install 'acp[fast]')")
    if kernel is None or group.size == 0:
        return _numpy_sums(z, group, offsets, refs, query_image, ref_image)
    masked_sums, sorted_sums = kernel
    if query_image is not None and ref_image is not None:  # bank build time
        return masked_sums(z, group, offsets, refs, query_image, ref_image, True)
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    bounds = np.flatnonzero(np.diff(sorted_group)) + 1
    first = np.concatenate([[0], bounds]).astype(np.int64)
    last = np.concatenate([bounds, [group.size]]).astype(np.int64)
    sums, counts = sorted_sums(np.ascontiguousarray(z[order].T), sorted_group, first, last, offsets, refs)
    out_sums, out_counts = np.empty_like(sums), np.empty_like(counts)
    out_sums[order], out_counts[order] = sums, counts
    return out_sums, out_counts
