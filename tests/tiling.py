"""Run a per-tile kernel over an arbitrary spatial tiling, with halos, in plain numpy.

This is the reference for what the dask layer does with ``map_overlap``-style tiling, and the
tool the tests use to prove tile invariance: cut every tile with ``halo`` extra pixels on each
side (clipped at the array edges), run the kernel, crop the halo off every output and stitch the
crops into whole-frame arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["check_edges", "run_tiled", "even_edges"]


def check_edges(edges: Sequence[int], n: int, name: str = "edges") -> list[int]:
    """Validate tile edges along one axis: strictly increasing ints from 0 to ``n``."""
    out = [int(e) for e in edges]
    if len(out) < 2 or out[0] != 0 or out[-1] != n:
        raise ValueError(f"{name} must start at 0 and end at {n}, got {out}")
    if any(b <= a for a, b in zip(out[:-1], out[1:], strict=True)):
        raise ValueError(f"{name} must be strictly increasing, got {out}")
    return out


def even_edges(n: int, size: int) -> list[int]:
    """Edges of tiles of ``size`` pixels along an axis of length ``n`` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"tile size must be >= 1, got {size}")
    return list(range(0, n, size)) + [n]


def run_tiled(
    func: Callable,
    arrays: Sequence[np.ndarray],
    y_edges: Sequence[int],
    x_edges: Sequence[int],
    *,
    halo: int = 0,
    **kwargs,
):
    """Run ``func(*tile_arrays, **kwargs)`` on every tile and stitch the cropped outputs.

    Parameters
    ----------
    func
        Kernel taking the tile of every array in ``arrays`` (in order) plus ``kwargs`` and
        returning a NamedTuple/tuple of arrays (or a single array) whose last two axes are the
        tile's (y, x) including its halo.
    arrays
        Arrays whose last two axes are (y, x) of the frame (all the same ny, nx).
    y_edges, x_edges
        Tile boundaries: strictly increasing, from 0 to ny (nx). Tiles may be 1 pixel wide.
    halo
        Pixels of context on each side of a tile, clipped at the frame edges.

    Returns
    -------
    The same kind of result as ``func`` (NamedTuple type preserved) with whole-frame arrays.
    """
    if not arrays:
        raise ValueError("run_tiled needs at least one array")
    ny, nx = arrays[0].shape[-2:]
    for a in arrays:
        if a.shape[-2:] != (ny, nx):
            raise ValueError(f"array spatial shape {a.shape[-2:]} != {(ny, nx)}")
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}")
    ye = check_edges(y_edges, ny, "y_edges")
    xe = check_edges(x_edges, nx, "x_edges")

    outputs = None
    kind = None
    for y0, y1 in zip(ye[:-1], ye[1:], strict=True):
        hy0, hy1 = max(0, y0 - halo), min(ny, y1 + halo)
        for x0, x1 in zip(xe[:-1], xe[1:], strict=True):
            hx0, hx1 = max(0, x0 - halo), min(nx, x1 + halo)
            tiles = [a[..., hy0:hy1, hx0:hx1] for a in arrays]
            res = func(*tiles, **kwargs)
            if isinstance(res, np.ndarray):
                parts, single = (res,), True
            else:
                parts, single = tuple(res), False
            if outputs is None:
                kind = None if single else type(res)
                outputs = [np.empty(p.shape[:-2] + (ny, nx), dtype=p.dtype) for p in parts]
            crop = (slice(y0 - hy0, y1 - hy0), slice(x0 - hx0, x1 - hx0))
            for out, p in zip(outputs, parts, strict=True):
                out[..., y0:y1, x0:x1] = p[(..., *crop)]
    if kind is None:
        return outputs[0]
    if hasattr(kind, "_fields"):
        return kind(*outputs)
    return kind(outputs)
