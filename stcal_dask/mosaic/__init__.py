"""The mosaic side: WCS alignment utilities, the mosaic's output WCS and the drizzled mosaic.

* :mod:`~stcal_dask.mosaic.alignment` — ``stcal.alignment``'s WCS utilities;
* :mod:`~stcal_dask.mosaic.wcs` — footprints of many exposures on a cluster and the mosaic WCS;
* :mod:`~stcal_dask.mosaic.resample` — the drizzle parameters, tile index and tile task
  (stcal's ``Resample`` over output tiles);
* :mod:`~stcal_dask.mosaic.i2d` — the ``_i2d`` product built on a cluster, FITS and quicklooks.
"""
