#!/usr/bin/env python
"""Compare stcal_dask.mosaic.alignment with stcal 1.20.0 on a real JWST gwcs (e.g. stcal's
``tests/data/nrcb5-wcs.asdf``, a NIRCam B5 distortion WCS with its wcsinfo).

The second exposure is the same WCS dithered by (+150, -80) detector pixels. Prints the output
shape and CRPIX of both implementations for a few options, the pixel scale and the fiducial.

Usage: ``python workflows/mosaic/check_real_wcs.py PATH/nrcb5-wcs.asdf``
"""

from __future__ import annotations

import copy
import sys
import warnings

import asdf
import numpy as np
from astropy.modeling import models as m


def main(argv=None) -> int:
    from stcal.alignment import util as stcal_util

    from stcal_dask.mosaic import alignment as al

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        return 2
    warnings.simplefilter("ignore")
    with asdf.open(argv[0], lazy_load=False) as af:
        w, info = af.tree["wcs"], dict(af.tree["wcsinfo"])
        w = copy.deepcopy(w)
    if w.bounding_box is None:
        w.bounding_box = al.wcs_bbox_from_shape(w.array_shape)
    w2 = copy.deepcopy(w)
    w2.insert_transform("detector", m.Shift(150) & m.Shift(-80), after=True)
    w2.bounding_box = w.bounding_box.bounding_box(order="F")
    fps = [w.footprint(), w2.footprint()]
    ref = (info["ra_ref"], info["dec_ref"])
    print(
        f'pixel scale at ref: ours {al.compute_scale(w, ref) * 3600:.10f}" '
        f'stcal {stcal_util.compute_scale(w, ref) * 3600:.10f}"'
    )
    fid_ours, fid_stcal = al.compute_fiducial([w, w2]), stcal_util.compute_fiducial([w, w2])
    print(f"fiducial: ours {fid_ours} stcal {fid_stcal}")
    for options in ({}, {"rotation": 0.0}, {"pscale_ratio": 0.5}):
        a = al.wcs_from_sregions(fps, w, info, **options)
        b = stcal_util.wcs_from_sregions(fps, w, info, **options)
        da = np.abs(a.forward_transform.crpix.value - b.forward_transform.crpix.value).max()
        print(
            f"{options or 'defaults'}: shape ours {a.array_shape} stcal {b.array_shape}; "
            f"crpix ours {a.forward_transform.crpix.value} stcal "
            f"{b.forward_transform.crpix.value} (max diff {da:.2e} px)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
