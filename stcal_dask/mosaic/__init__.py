"""The mosaic side: WCS alignment utilities and the mosaic's output WCS.

* :mod:`~stcal_dask.mosaic.alignment` — ``stcal.alignment``'s WCS utilities;
* :mod:`~stcal_dask.mosaic.wcs` — footprints of many exposures on a cluster and the mosaic WCS.
"""
