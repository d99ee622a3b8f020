"""JWST data-quality bit values, defined once for the whole package.

Values are those of the JWST DQ table (``stdatamodels.jwst.datamodels.dqflags``). Group flags
(GROUPDQ, uint8) use the low 8 bits; pixel flags (PIXELDQ / DQ, uint32) use all 32.
"""

from __future__ import annotations

from enum import IntFlag


class DQ(IntFlag):
    """JWST pixel/group data-quality bits."""

    GOOD = 0
    DO_NOT_USE = 1
    SATURATED = 2
    JUMP_DET = 4
    DROPOUT = 8
    OUTLIER = 16
    PERSISTENCE = 32
    AD_FLOOR = 64
    CHARGELOSS = 128
    RESERVED = 256
    NON_SCIENCE = 512
    DEAD = 1024
    HOT = 2048
    WARM = 4096
    LOW_QE = 8192
    RC = 16384
    TELEGRAPH = 32768
    NONLINEAR = 65536
    BAD_REF_PIXEL = 131072
    NO_FLAT_FIELD = 262144
    NO_GAIN_VALUE = 524288
    NO_LIN_CORR = 1048576
    NO_SAT_CHECK = 2097152
    UNRELIABLE_BIAS = 4194304
    UNRELIABLE_DARK = 8388608
    UNRELIABLE_SLOPE = 16777216
    UNRELIABLE_FLAT = 33554432
    OPEN = 67108864
    ADJ_OPEN = 134217728
    FLUX_ESTIMATED = 268435456
    MSA_FAILED_OPEN = 536870912
    OTHER_BAD_PIXEL = 1073741824
    REFERENCE_PIXEL = 2147483648


# Plain-int module constants for use inside numba kernels and numpy expressions.
GOOD = int(DQ.GOOD)
DO_NOT_USE = int(DQ.DO_NOT_USE)
SATURATED = int(DQ.SATURATED)
JUMP_DET = int(DQ.JUMP_DET)
DROPOUT = int(DQ.DROPOUT)
OUTLIER = int(DQ.OUTLIER)
PERSISTENCE = int(DQ.PERSISTENCE)
AD_FLOOR = int(DQ.AD_FLOOR)
CHARGELOSS = int(DQ.CHARGELOSS)
NO_GAIN_VALUE = int(DQ.NO_GAIN_VALUE)
UNRELIABLE_SLOPE = int(DQ.UNRELIABLE_SLOPE)
REFERENCE_PIXEL = int(DQ.REFERENCE_PIXEL)


def as_dict() -> dict[str, int]:
    """Return the flags as the ``{name: value}`` dict stcal's ``dqflags`` arguments expect."""
    return {name: int(member.value) for name, member in DQ.__members__.items()}
