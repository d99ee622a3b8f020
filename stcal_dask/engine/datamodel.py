"""The xarray data model of the engine: ramps in, rate / rateints / fitopt products out.

Ramp Dataset (what :func:`make_ramp_dataset` builds, :func:`validate_ramp` checks and
:func:`stcal_dask.io.open_ramp` / :func:`stcal_dask.io.open_ramp_fits` return):

================== ============================== ======= =============
variable           dims                           dtype   units
================== ============================== ======= =============
sci                (integration, group, y, x)     float32 DN
groupdq            (integration, group, y, x)     uint8
pixeldq            (y, x)                         uint32
gain               (y, x)                         float32 electron/DN
readnoise          (y, x)                         float32 DN (CDS)
zeroframe          (integration, y, x), optional  float32 DN
average_dark_current (y, x), optional             float32 DN/s
================== ============================== ======= =============

Dataset attrs: the JWST timing keywords ``NINTS, NGROUPS, NFRAMES, GROUPGAP, TFRAME, TGROUP,
DRPFRMS1`` (TFRAME/TGROUP in seconds), optionally the subarray keywords ``SUBSTRT1, SUBSTRT2,
SUBSIZE1, SUBSIZE2`` (1-based, axis 1 = x = columns), and ``source`` (where the ramp came from).

Products (built with :func:`rate_dataset`, :func:`rateints_dataset`, :func:`fitopt_dataset`):

* rate ``(y, x)`` / rateints ``(integration, y, x)``: ``sci`` and ``err`` (DN/s, float32), ``dq``
  (uint32), ``var_poisson`` and ``var_rnoise`` ((DN/s)^2, float32);
* fitopt: ``slope`` (DN/s), ``sigslope`` (DN/s), ``yint`` (DN), ``sigyint`` (DN), ``weights``
  (1/(DN/s)^2), ``var_poisson``, ``var_rnoise`` ((DN/s)^2), all (integration, segment, y, x);
  ``pedestal`` (integration, y, x) DN; ``crmag`` (integration, cr, y, x) DN; all float32.

Optional ``wcs_asdf`` / ``wcsinfo`` attrs (:data:`WCS_ATTR`, :data:`WCSINFO_ATTR`) carry the
exposure's gwcs (ASDF text) and JWST ``meta.wcsinfo``; ramp fitting keeps them on its products
(:mod:`stcal_dask.io.wcs_asdf` reads and writes them).

An optional ``INSTRUME`` attr (the JWST primary keyword, e.g. "MIRI") records the instrument:
ramp fitting treats MIRI's first and last groups as stcal does
(:mod:`stcal_dask.kernels.miri_groups`).

Every variable carries ``attrs["units"]``; product Datasets carry ``product`` (rate, rateints,
fitopt), ``parameters`` (a JSON string of the step parameters), ``stcal_dask_version`` and
whatever extra ``attrs`` the caller passes (typically the ramp's JWST keywords).

Arrays may be numpy or dask arrays; nothing here computes a dask array.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:  # xarray (and pandas) load on first use: a worker reading a WCS needs neither
    import xarray as xr

from stcal_dask.errors import UserInputError

WCS_ATTR = "wcs_asdf"
"""Dataset / zarr store attribute holding the exposure's gwcs as ASDF text."""
WCSINFO_ATTR = "wcsinfo"
"""Dataset / zarr store attribute holding the exposure's JWST wcsinfo (dict: ra_ref, dec_ref,
roll_ref, v3yangle, vparity, v2_ref, v3_ref)."""

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "FITOPT_VARIABLES",
    "RAMP_VARIABLES",
    "RATE_VARIABLES",
    "SUBARRAY_KEYWORDS",
    "TIMING_KEYWORDS",
    "WORKING_MEMORY_FACTOR",
    "WCSINFO_ATTR",
    "WCS_ATTR",
    "VarSpec",
    "choose_tile_size",
    "fitopt_dataset",
    "make_ramp_dataset",
    "ramp_bytes_per_pixel",
    "ramp_chunks",
    "ramp_from_exposure",
    "rate_dataset",
    "rateints_dataset",
    "timing_from_attrs",
    "validate_ramp",
]


class VarSpec(NamedTuple):
    """Schema entry of one Dataset variable."""

    dims: tuple[str, ...]
    dtype: np.dtype
    units: str
    required: bool
    kind: str
    """``"float"``: any real float or integer dtype is accepted and cast;
    ``"dq"``: integer dtypes that cast safely to ``dtype`` are accepted."""


_F32 = np.dtype(np.float32)
RAMP_VARIABLES: dict[str, VarSpec] = {
    "sci": VarSpec(("integration", "group", "y", "x"), _F32, "DN", True, "float"),
    "groupdq": VarSpec(("integration", "group", "y", "x"), np.dtype(np.uint8), "", True, "dq"),
    "pixeldq": VarSpec(("y", "x"), np.dtype(np.uint32), "", True, "dq"),
    "gain": VarSpec(("y", "x"), _F32, "electron/DN", True, "float"),
    "readnoise": VarSpec(("y", "x"), _F32, "DN", True, "float"),
    "zeroframe": VarSpec(("integration", "y", "x"), _F32, "DN", False, "float"),
    "average_dark_current": VarSpec(("y", "x"), _F32, "DN/s", False, "float"),
}
"""The ramp schema, in canonical order."""

RATE_VARIABLES: dict[str, tuple[np.dtype, str]] = {
    "sci": (_F32, "DN/s"),
    "err": (_F32, "DN/s"),
    "dq": (np.dtype(np.uint32), ""),
    "var_poisson": (_F32, "(DN/s)^2"),
    "var_rnoise": (_F32, "(DN/s)^2"),
}
"""Rate / rateints variables: dtype and units (dims (y, x) or (integration, y, x))."""

FITOPT_VARIABLES: dict[str, tuple[tuple[str, ...], np.dtype, str]] = {
    "slope": (("integration", "segment", "y", "x"), _F32, "DN/s"),
    "sigslope": (("integration", "segment", "y", "x"), _F32, "DN/s"),
    "var_poisson": (("integration", "segment", "y", "x"), _F32, "(DN/s)^2"),
    "var_rnoise": (("integration", "segment", "y", "x"), _F32, "(DN/s)^2"),
    "yint": (("integration", "segment", "y", "x"), _F32, "DN"),
    "sigyint": (("integration", "segment", "y", "x"), _F32, "DN"),
    "pedestal": (("integration", "y", "x"), _F32, "DN"),
    "weights": (("integration", "segment", "y", "x"), _F32, "1/(DN/s)^2"),
    "crmag": (("integration", "cr", "y", "x"), _F32, "DN"),
}
"""Fitopt variables (the RampFitOutputModel order): dims, dtype, units."""

TIMING_KEYWORDS: tuple[str, ...] = (
    "NINTS", "NGROUPS", "NFRAMES", "GROUPGAP", "TFRAME", "TGROUP", "DRPFRMS1"
)
"""JWST timing keywords every ramp carries (TFRAME, TGROUP in seconds)."""

_INT_KEYWORDS = {"NINTS": 1, "NGROUPS": 1, "NFRAMES": 1, "GROUPGAP": 0, "DRPFRMS1": 0}
"""Integer timing keywords and their minimum value."""
_TIME_KEYWORDS = ("TFRAME", "TGROUP")

SUBARRAY_KEYWORDS: tuple[str, ...] = ("SUBSTRT1", "SUBSTRT2", "SUBSIZE1", "SUBSIZE2")
"""Optional JWST subarray keywords (1-based start, size; axis 1 = x)."""

DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Default working-memory budget of one tile (bytes), used by :func:`choose_tile_size`."""

WORKING_MEMORY_FACTOR = 3.0
"""The kernels need about this many times a tile's input bytes as working memory."""

_TILE_ALIGN = 16


def package_version() -> str:
    from stcal_dask import __version__

    return __version__


# ---------------------------------------------------------------------------------------------
# Ramp
# ---------------------------------------------------------------------------------------------


def check_timing(timing: Mapping[str, Any], source: str) -> dict[str, int | float]:
    """Validate the JWST timing keywords; return them as plain ints / floats."""
    if not isinstance(timing, Mapping):
        raise UserInputError(f"{source}: timing must be a dict of JWST keywords, got {timing!r}")
    out: dict[str, int | float] = {}
    for key in TIMING_KEYWORDS:
        if key not in timing or timing[key] is None:
            if key == "DRPFRMS1":  # only used by the fitopt pedestal; JWST treats absent as 0
                out[key] = 0
                continue
            raise UserInputError(
                f"{source}: missing keyword {key} (the JWST timing keywords "
                f"{', '.join(TIMING_KEYWORDS)} are required)"
            )
        value = timing[key]
        if key in _INT_KEYWORDS:
            ok = isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)
            if not ok and isinstance(value, float | np.floating) and float(value).is_integer():
                ok, value = True, int(value)
            if not ok or int(value) < _INT_KEYWORDS[key]:
                raise UserInputError(
                    f"{source}: keyword {key} must be an integer >= {_INT_KEYWORDS[key]}, "
                    f"got {value!r}"
                )
            out[key] = int(value)
        else:
            try:
                fval = float(value)
            except (TypeError, ValueError):
                fval = float("nan")
            if isinstance(value, bool | np.bool_) or not math.isfinite(fval) or fval <= 0:
                raise UserInputError(
                    f"{source}: keyword {key} must be a time in seconds > 0, got {value!r}"
                )
            out[key] = fval
    return out


def check_subarray(attrs: Mapping[str, Any], source: str) -> dict[str, int]:
    out = {}
    for key in SUBARRAY_KEYWORDS:
        if key in attrs and attrs[key] is not None:
            value = attrs[key]
            if isinstance(value, float | np.floating) and float(value).is_integer():
                value = int(value)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise UserInputError(
                    f"{source}: keyword {key} must be an integer >= 1, got {value!r}"
                )
            out[key] = int(value)
    return out


def _accepted_dtypes(spec: VarSpec) -> str:
    if spec.kind == "float":
        return "a real floating-point or integer dtype (stored as float32)"
    ok = [
        np.dtype(t).name
        for t in (np.bool_, np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int32)
        if np.can_cast(t, spec.dtype, "safe")
    ]
    return f"{spec.dtype.name} (or a dtype that casts safely to it: {', '.join(ok)})"


def _cast(name: str, spec: VarSpec, arr, source: str):
    dt = np.dtype(arr.dtype)
    if dt == spec.dtype:
        return arr
    if spec.kind == "float":
        ok = dt.kind in "fiu"
    else:
        ok = dt.kind in "biu" and np.can_cast(dt, spec.dtype, "safe")
    if not ok:
        raise UserInputError(
            f"{source}: array {name} has dtype {dt.name}; expected {_accepted_dtypes(spec)}"
        )
    return arr.astype(spec.dtype)


def validate_ramp(ds: xr.Dataset, source: str = "ramp") -> xr.Dataset:
    """Check a ramp Dataset against the schema; return it with safe dtype casts applied.

    Parameters
    ----------
    ds:
        The ramp (see the module docstring).
    source:
        What to call it in error messages (a path, "ramp", ...).

    Returns
    -------
    xr.Dataset
        ``ds`` with every variable in its schema dtype (float variables from any real float or
        integer dtype, DQ variables from integer dtypes that cast safely) and the timing attrs as
        plain ints / floats (``DRPFRMS1`` defaults to 0). Dask arrays stay lazy.

    Raises
    ------
    UserInputError
        One line naming the array / keyword: missing variable, wrong dims or shape, unsupported
        dtype, missing or invalid keyword, NINTS/NGROUPS not matching ``sci``.
    """
    import xarray as xr

    if not isinstance(ds, xr.Dataset):
        raise UserInputError(f"{source}: expected an xarray Dataset, got {type(ds).__name__}")
    for name, spec in RAMP_VARIABLES.items():
        if spec.required and name not in ds.data_vars:
            raise UserInputError(
                f"{source}: missing array {name} (a ramp needs {', '.join(_required_names())})"
            )
    variables = {}
    for name, spec in RAMP_VARIABLES.items():
        if name not in ds.data_vars:
            continue
        var = ds[name]
        if tuple(var.dims) != spec.dims:
            raise UserInputError(
                f"{source}: array {name} has dims {tuple(var.dims)}; expected {spec.dims}"
            )
        variables[name] = var
    sci_shape = tuple(variables["sci"].shape)
    nints, ngroups, ny, nx = sci_shape
    sizes = {"integration": nints, "group": ngroups, "y": ny, "x": nx}
    for name, var in variables.items():
        expected = tuple(sizes[d] for d in RAMP_VARIABLES[name].dims)
        if tuple(var.shape) != expected:
            raise UserInputError(
                f"{source}: array {name} has shape {tuple(var.shape)}; expected {expected} "
                f"to match sci {sci_shape}"
            )
    if min(sci_shape) < 1:
        raise UserInputError(f"{source}: array sci is empty (shape {sci_shape})")
    timing = check_timing(ds.attrs, source)
    if timing["NINTS"] != nints or timing["NGROUPS"] != ngroups:
        raise UserInputError(
            f"{source}: keywords NINTS={timing['NINTS']}, NGROUPS={timing['NGROUPS']} do not "
            f"match array sci of shape {sci_shape} (nints, ngroups, ny, nx)"
        )
    subarray = check_subarray(ds.attrs, source)
    out = ds.copy(deep=False)
    for name, var in variables.items():
        spec = RAMP_VARIABLES[name]
        data = _cast(name, spec, var.data, source)
        attrs = dict(var.attrs)
        attrs.setdefault("units", spec.units)
        out[name] = xr.Variable(spec.dims, data, attrs)
    out.attrs.update(timing)
    out.attrs.update(subarray)
    out.attrs.setdefault("source", str(source))
    return out


def _required_names() -> list[str]:
    return [n for n, s in RAMP_VARIABLES.items() if s.required]


def ramp_bytes_per_pixel(nints: int, ngroups: int, *, zeroframe: bool = True,
                         dark: bool = True) -> int:
    """Input bytes one pixel of a ramp occupies in memory (all integrations and groups).

    ``sci`` float32 + ``groupdq`` uint8 per sample, ``pixeldq``, ``gain``, ``readnoise`` (and
    optionally ``average_dark_current``) 4 bytes each, ``zeroframe`` 4 bytes per integration.
    """
    n = int(nints) * int(ngroups) * (4 + 1) + 3 * 4
    if zeroframe:
        n += int(nints) * 4
    if dark:
        n += 4
    return n


def choose_tile_size(
    nints: int,
    ngroups: int,
    ny: int,
    nx: int,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    *,
    working_factor: float = WORKING_MEMORY_FACTOR,
) -> tuple[int, int]:
    """Spatial tile ``(tile_y, tile_x)`` whose processing fits a memory budget.

    Memory model: a tile of ``tile_y * tile_x`` pixels holds
    ``ramp_bytes_per_pixel(nints, ngroups)`` input bytes per pixel (float32 sci + uint8 groupdq
    per sample, the 2-D reference arrays, the zero frame), and the kernels need about
    ``working_factor`` (default 3) times the input bytes while they run (inputs, float64
    differences / sums and outputs). The largest tile with
    ``working_factor * input_bytes <= memory_budget_bytes`` is chosen:

    * the whole frame if it fits;
    * else full-width strips (``tile_x = nx``, contiguous in FITS and zarr row order) when at least
      32 rows fit, ``tile_y`` rounded down to a multiple of 16;
    * else square-ish tiles (side rounded down to a multiple of 16 where possible).

    Override by passing a tile explicitly to the writers (``tile=(ty, tx)``).

    Raises
    ------
    UserInputError
        When the shape is not positive or the budget cannot hold even one pixel.
    """
    for name, v in (("nints", nints), ("ngroups", ngroups), ("ny", ny), ("nx", nx)):
        if int(v) < 1:
            raise UserInputError(f"choose_tile_size: {name} must be >= 1, got {v}")
    per_pixel = working_factor * ramp_bytes_per_pixel(nints, ngroups)
    max_pixels = int(memory_budget_bytes // per_pixel)
    if max_pixels < 1:
        raise UserInputError(
            f"memory budget of {memory_budget_bytes} bytes is too small for one pixel of a "
            f"{nints}x{ngroups} ramp (needs about {int(math.ceil(per_pixel))} bytes)"
        )
    if max_pixels >= ny * nx:
        return int(ny), int(nx)
    rows = max_pixels // nx
    if rows >= 32:
        return int(rows - rows % _TILE_ALIGN), int(nx)
    side = math.isqrt(max_pixels)
    if side >= _TILE_ALIGN:
        side -= side % _TILE_ALIGN
    tile_x = min(side, nx)
    tile_y = min(max_pixels // tile_x, ny)
    if tile_y >= _TILE_ALIGN and tile_y < ny:
        tile_y -= tile_y % _TILE_ALIGN
    return int(tile_y), int(tile_x)


def normalize_tile(tile, ny: int, nx: int) -> tuple[int, int]:
    try:
        ty, tx = (int(t) for t in tile)
    except (TypeError, ValueError):
        raise UserInputError(
            f"tile must be two positive integers (tile_y, tile_x), got {tile!r}"
        ) from None
    if ty < 1 or tx < 1:
        raise UserInputError(f"tile must be two positive integers (tile_y, tile_x), got {tile!r}")
    return min(ty, ny), min(tx, nx)


def ramp_chunks(ds: xr.Dataset, tile=None, memory_budget_bytes: int | None = None) -> dict:
    """The canonical chunking of a ramp: ``{integration: all, group: all, y: ty, x: tx}``.

    ``tile`` (tile_y, tile_x) overrides the automatic choice from ``memory_budget_bytes``
    (default :data:`DEFAULT_MEMORY_BUDGET`).
    """
    nints, ngroups, ny, nx = ds["sci"].shape
    if tile is None:
        tile = choose_tile_size(
            nints, ngroups, ny, nx, memory_budget_bytes or DEFAULT_MEMORY_BUDGET
        )
    ty, tx = normalize_tile(tile, ny, nx)
    return {"integration": nints, "group": ngroups, "y": ty, "x": tx}


def apply_chunks(ds: xr.Dataset, chunks) -> xr.Dataset:
    if chunks is None:
        return ds
    if isinstance(chunks, str):
        if chunks != "auto":
            raise UserInputError(f"chunks must be None, 'auto', (tile_y, tile_x) or a dict, "
                                 f"got {chunks!r}")
        return ds.chunk(ramp_chunks(ds))
    if isinstance(chunks, Mapping):
        full = {"integration": -1, "group": -1}
        full.update(chunks)
        return ds.chunk({k: v for k, v in full.items() if k in ds.dims})
    return ds.chunk(ramp_chunks(ds, tile=chunks))


def make_ramp_dataset(
    sci,
    groupdq,
    pixeldq,
    gain,
    readnoise,
    *,
    timing: Mapping[str, Any],
    zeroframe=None,
    average_dark_current=None,
    chunks=None,
    subarray: Mapping[str, int] | None = None,
    source: str = "ramp",
) -> xr.Dataset:
    """Build (and validate) a ramp Dataset from numpy or dask arrays.

    Parameters
    ----------
    sci:
        (nints, ngroups, ny, nx) DN, float32 (other real dtypes are cast).
    groupdq:
        (nints, ngroups, ny, nx) uint8 group DQ.
    pixeldq:
        (ny, nx) uint32 pixel DQ.
    gain:
        (ny, nx) electron/DN.
    readnoise:
        (ny, nx) CDS read noise, DN.
    timing:
        ``{"NINTS", "NGROUPS", "NFRAMES", "GROUPGAP", "TFRAME", "TGROUP", "DRPFRMS1"}`` (JWST
        names; seconds; ``DRPFRMS1`` defaults to 0).
    zeroframe:
        Optional (nints, ny, nx) DN.
    average_dark_current:
        Optional (ny, nx) DN/s.
    chunks:
        None (keep arrays as they are), ``"auto"`` (tile from the default memory budget),
        ``(tile_y, tile_x)``, or a dict of dim -> chunk size (integration/group default to all).
    subarray:
        Optional ``SUBSTRT1, SUBSTRT2, SUBSIZE1, SUBSIZE2`` keywords.
    source:
        Recorded in ``attrs["source"]`` and used in error messages.

    Raises
    ------
    UserInputError
        Wrong shapes, dtypes or keywords (see :func:`validate_ramp`).
    """
    import xarray as xr

    arrays = {
        "sci": sci,
        "groupdq": groupdq,
        "pixeldq": pixeldq,
        "gain": gain,
        "readnoise": readnoise,
        "zeroframe": zeroframe,
        "average_dark_current": average_dark_current,
    }
    data_vars = {}
    for name, arr in arrays.items():
        spec = RAMP_VARIABLES[name]
        if arr is None:
            if spec.required:
                raise UserInputError(f"{source}: missing array {name}")
            continue
        if not hasattr(arr, "ndim") or not hasattr(arr, "dtype"):
            arr = np.asarray(arr)
        if arr.ndim != len(spec.dims):
            raise UserInputError(
                f"{source}: array {name} has {arr.ndim} dimensions (shape {tuple(arr.shape)}); "
                f"expected {len(spec.dims)}: {spec.dims}"
            )
        data_vars[name] = xr.Variable(spec.dims, arr, {"units": spec.units})
    nints, ngroups, ny, nx = data_vars["sci"].shape
    sizes = {"integration": nints, "group": ngroups, "y": ny, "x": nx}
    for name, var in data_vars.items():
        expected = tuple(sizes[d] for d in var.dims)
        if tuple(var.shape) != expected:
            raise UserInputError(
                f"{source}: array {name} has shape {tuple(var.shape)}; expected {expected} "
                f"to match sci {tuple(data_vars['sci'].shape)}"
            )
    attrs = dict(timing) if isinstance(timing, Mapping) else {}
    if not isinstance(timing, Mapping):
        check_timing(timing, source)
    attrs.update(dict(subarray or {}))
    attrs["source"] = str(source)
    ds = xr.Dataset(data_vars, attrs=attrs)
    ds = validate_ramp(ds, source=source)
    return apply_chunks(ds, chunks)


def timing_from_attrs(attrs: Mapping[str, Any]) -> dict[str, int | float]:
    """The validated JWST timing keywords of a ramp's attrs (``DRPFRMS1`` defaults to 0)."""
    return check_timing(attrs, str(attrs.get("source", "ramp")))


def ramp_from_exposure(exposure, chunks=None) -> xr.Dataset:
    """A ramp Dataset from a :class:`stcal_dask.sim.ramp.SyntheticExposure`.

    ``chunks`` as in :func:`make_ramp_dataset`. The ground truth (``flux``, ``cr_mask``) is not
    part of the ramp.
    """
    cfg = exposure.config
    return make_ramp_dataset(
        exposure.data,
        exposure.groupdq,
        exposure.pixeldq,
        exposure.gain,
        exposure.readnoise,
        timing=exposure.timing,
        zeroframe=exposure.zeroframe,
        chunks=chunks,
        source=f"simulate(seed={cfg.seed}, shape={'x'.join(map(str, cfg.shape))})",
    )


# ---------------------------------------------------------------------------------------------
# Products
# ---------------------------------------------------------------------------------------------


def _parameters_json(parameters) -> str:
    if parameters is None:
        return "{}"
    if isinstance(parameters, str):
        json.loads(parameters)  # must be valid JSON
        return parameters
    if dataclasses.is_dataclass(parameters) and not isinstance(parameters, type):
        parameters = dataclasses.asdict(parameters)
    return json.dumps(parameters, sort_keys=True, default=_json_default)


def _json_default(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _product(product: str, variables: dict[str, tuple], parameters, attrs) -> xr.Dataset:
    import xarray as xr

    data_vars = {}
    shapes = {}
    for name, (dims, dtype, units, arr) in variables.items():
        if arr is None:
            raise ValueError(f"{product}: array {name} is required")
        if not hasattr(arr, "ndim") or not hasattr(arr, "dtype"):
            arr = np.asarray(arr)
        if arr.ndim != len(dims):
            raise ValueError(
                f"{product}: array {name} has shape {tuple(arr.shape)}; expected dims {dims}"
            )
        for d, n in zip(dims, arr.shape, strict=True):
            if shapes.setdefault(d, n) != n:
                raise ValueError(
                    f"{product}: array {name} has {d} size {n}, other arrays {shapes[d]}"
                )
        if np.dtype(arr.dtype) != dtype:
            arr = arr.astype(dtype)
        data_vars[name] = xr.Variable(dims, arr, {"units": units} if units else {})
    out_attrs = {k: plain(v) for k, v in dict(attrs or {}).items()}
    out_attrs.update(
        product=product,
        parameters=_parameters_json(parameters),
        stcal_dask_version=package_version(),
        units=json.dumps({n: v[2] for n, v in variables.items()}),
    )
    return xr.Dataset(data_vars, attrs=out_attrs)


def plain(v):
    """A JSON-serialisable version of an attribute value (numpy scalars/arrays, dataclasses,
    nested containers; anything else becomes its string)."""
    if isinstance(v, str | bool | int | float) or v is None:
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Mapping):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [plain(x) for x in v]
    return json.loads(json.dumps(v, default=_json_default))


def rate_dataset(sci, err, dq, var_poisson, var_rnoise, *, parameters=None,
                 attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """The rate product: 2-D (y, x) arrays.

    Parameters
    ----------
    sci, err:
        Slope and its total error, DN/s (stored float32).
    dq:
        uint32 pixel DQ.
    var_poisson, var_rnoise:
        Poisson and read-noise variances of the slope, (DN/s)^2.
    parameters:
        Step parameters: a dict (nested allowed, e.g. ``{"jump": {...}, "rampfit": {...}}``), a
        dataclass, a JSON string or None; stored as JSON in ``attrs["parameters"]``.
    attrs:
        Extra Dataset attrs (typically the ramp's JWST keywords and ``source``).
    """
    dims = ("y", "x")
    return _product(
        "rate",
        {n: (dims, RATE_VARIABLES[n][0], RATE_VARIABLES[n][1], a) for n, a in
         zip(RATE_VARIABLES, (sci, err, dq, var_poisson, var_rnoise), strict=True)},
        parameters, attrs,
    )


def rateints_dataset(sci, err, dq, var_poisson, var_rnoise, *, parameters=None,
                     attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """The rateints product: per-integration (integration, y, x) arrays; see :func:`rate_dataset`.
    """
    dims = ("integration", "y", "x")
    return _product(
        "rateints",
        {n: (dims, RATE_VARIABLES[n][0], RATE_VARIABLES[n][1], a) for n, a in
         zip(RATE_VARIABLES, (sci, err, dq, var_poisson, var_rnoise), strict=True)},
        parameters, attrs,
    )


def fitopt_dataset(slope, sigslope, yint, sigyint, weights, var_poisson, var_rnoise, pedestal,
                   crmag, *, parameters=None,
                   attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """The optional per-segment ramp-fit product (JWST RampFitOutputModel).

    ``slope, sigslope`` (DN/s), ``yint, sigyint`` (DN), ``weights`` (1/(DN/s)^2),
    ``var_poisson, var_rnoise`` ((DN/s)^2): (integration, segment, y, x); ``pedestal`` (DN):
    (integration, y, x); ``crmag`` (DN): (integration, cr, y, x). All stored float32.
    ``parameters`` and ``attrs`` as in :func:`rate_dataset`.
    """
    given = {
        "slope": slope, "sigslope": sigslope, "var_poisson": var_poisson,
        "var_rnoise": var_rnoise, "yint": yint, "sigyint": sigyint, "pedestal": pedestal,
        "weights": weights, "crmag": crmag,
    }
    return _product(
        "fitopt",
        {n: (*FITOPT_VARIABLES[n], given[n]) for n in FITOPT_VARIABLES},
        parameters, attrs,
    )
