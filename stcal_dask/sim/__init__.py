"""Seeded synthetic exposures with their truth.

* :mod:`~stcal_dask.sim.ramp` — the ramp generator (cosmic rays, saturation, bad pixels);
* :mod:`~stcal_dask.sim.lazy` — the same generator as a lazy dask graph, tile by tile;
* :mod:`~stcal_dask.sim.wcs` — imaging gwcs objects for simulated pointings and dithers.
"""
