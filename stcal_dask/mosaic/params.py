"""The mosaic drizzle's parameters: jwst ``ResampleStep``'s names and defaults, in one frozen
dataclass (:class:`ResampleParams`), and the DQ ``good_bits`` interpretation.

Light on purpose (standard library at import; astropy only inside :func:`good_bits_value`): the
CLI builds its ``--resample.X`` options from this dataclass without loading the scientific
libraries.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from stcal_dask import dqflags
from stcal_dask.errors import UserInputError

__all__ = ["KERNELS", "NON_CONSERVING_KERNELS", "ResampleParams", "good_bits_value"]

KERNELS = ("square", "point", "turbo", "gaussian", "lanczos2", "lanczos3")
"""The drizzle kernels ``ResampleStep`` accepts."""

NON_CONSERVING_KERNELS = ("gaussian", "lanczos2", "lanczos3")

# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


def good_bits_value(good_bits: int | str | None) -> int | None:
    """The integer of DQ bits that count as good, from an int or a string of mnemonics.

    Strings follow stcal/astropy's ``interpret_bit_flags``: ``"4,8"``, ``"4+8"``,
    ``"JUMP_DET, DROPOUT"`` (names from :mod:`stcal_dask.dqflags`); a leading ``~`` inverts (the
    listed flags are the *bad* ones and every other bit is good). ``None`` means "ignore DQ".
    """
    from astropy.nddata.bitmask import interpret_bit_flags

    if good_bits is None:
        return None
    if isinstance(good_bits, bool) or type(good_bits).__name__ == "bool_":
        raise UserInputError(f"good_bits must be an integer or a string, got {good_bits!r}")
    if isinstance(good_bits, str) and good_bits.strip().upper() in ("", "NONE"):
        return None
    try:
        value = interpret_bit_flags(good_bits, flag_name_map=dqflags.as_dict())
    except (ValueError, TypeError, KeyError) as exc:
        raise UserInputError(
            f"good_bits {good_bits!r} is not an integer or DQ mnemonics "
            f"(e.g. '~DO_NOT_USE+NON_SCIENCE'): {str(exc).splitlines()[0]}"
        ) from None
    return None if value is None else int(value)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise UserInputError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


@dataclass(frozen=True)
class ResampleParams:
    """Parameters of the mosaic drizzle: jwst ``ResampleStep``'s names and defaults.

    The output-WCS fields (``pixel_scale``, ``pixel_scale_ratio``, ``rotation``, ``crpix``,
    ``crval``, ``output_shape``) are used only when the output WCS is computed from the inputs
    (no ``--wcs`` file).
    """

    pixfrac: float = field(
        default=1.0,
        metadata={"help": "fraction (0, 1] of an input pixel's side its flux is confined to"},
    )
    kernel: str = field(
        default="square",
        metadata={
            "help": "drizzle kernel: square, point, turbo, gaussian, lanczos2 or lanczos3 "
            "(gaussian and lanczos do not conserve flux)"
        },
    )
    fillval: str = field(
        default="NAN",
        metadata={"help": "value of output pixels no input reaches (a number, NAN or INDEF)"},
    )
    weight_type: str = field(
        default="ivm",
        metadata={
            "help": "input weighting: ivm (inverse read-noise variance) or exptime "
            "(measurement or exposure time)"
        },
    )
    good_bits: str = field(
        default="~DO_NOT_USE+NON_SCIENCE",
        metadata={
            "help": "DQ bits that count as good: an integer or DQ mnemonics ('~' = all but "
            "the listed)"
        },
    )
    pixel_scale: float | None = field(
        default=None,
        metadata={"help": "output pixel scale in arcsec (overrides pixel_scale_ratio)"},
    )
    pixel_scale_ratio: float = field(
        default=1.0,
        metadata={"help": "output / input pixel scale (0.5 gives 4 output pixels per input)"},
    )
    output_shape: tuple[int, int] | None = field(
        default=None,
        metadata={"help": "output array shape NY NX (also lifts the output size limit)"},
    )
    crpix: tuple[float, float] | None = field(
        default=None,
        metadata={"help": "0-based output pixel X Y of crval (default: from the footprints)"},
    )
    crval: tuple[float, float] | None = field(
        default=None,
        metadata={"help": "RA DEC (deg) of the output reference pixel (default: centre)"},
    )
    rotation: float | None = field(
        default=None,
        metadata={"help": "position angle (deg) of the output +y axis East of North"},
    )
    enable_ctx: bool = field(
        default=True, metadata={"help": "write the context image (which inputs hit each pixel)"}
    )
    enable_var: bool = field(
        default=True, metadata={"help": "drizzle the variance arrays (var_rnoise, var_poisson)"}
    )
    compute_err: str | None = field(
        default="from_var",
        metadata={
            "help": "output err: from_var (sqrt of the summed drizzled variances), driz_err "
            "(drizzle the input err arrays) or none"
        },
    )

    def __post_init__(self):
        if not (isinstance(self.pixfrac, (int, float)) and 0.0 < float(self.pixfrac) <= 1.0):
            raise UserInputError(f"pixfrac must be in (0, 1], got {self.pixfrac!r}")
        _check_choice("kernel", self.kernel, KERNELS)
        _check_choice("weight_type", self.weight_type, ("ivm", "exptime"))
        fill = str(self.fillval).strip().upper()
        if fill not in ("NAN", "INDEF"):
            try:
                float(fill)
            except ValueError:
                raise UserInputError(
                    f"fillval must be a number, NAN or INDEF, got {self.fillval!r}"
                ) from None
        good_bits_value(self.good_bits)
        if self.compute_err not in ("from_var", "driz_err", None):
            raise UserInputError(
                f"compute_err must be from_var, driz_err or none, got {self.compute_err!r}"
            )
        for name in ("pixel_scale", "pixel_scale_ratio"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise UserInputError(f"{name} must be > 0, got {v!r}")
        if self.output_shape is not None:
            if len(self.output_shape) != 2 or min(int(v) for v in self.output_shape) < 1:
                raise UserInputError(
                    f"output_shape must be two positive integers NY NX, got {self.output_shape!r}"
                )

    @property
    def good_bits_int(self) -> int | None:
        """:func:`good_bits_value` of ``good_bits``."""
        return good_bits_value(self.good_bits)

    @property
    def variances_on(self) -> bool:
        """Variances are drizzled (``from_var`` needs them whatever ``enable_var`` says)."""
        return bool(self.enable_var or self.compute_err == "from_var")

    def as_dict(self) -> dict:
        """Plain dict (JSON-serialisable) of the parameters."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
