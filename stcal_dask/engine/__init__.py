"""The engine: dask graphs over xarray/zarr ramps, the tasks they run, the clusters running them.

* :mod:`~stcal_dask.engine.datamodel` — the ramp and product Datasets (names, dtypes, attrs, tiles);
* :mod:`~stcal_dask.engine.dataflow` — lazy jump detection and ramp fitting over spatial tiles;
* :mod:`~stcal_dask.engine.tasks` — the functions the workers run (no xarray, astropy or zarr);
* :mod:`~stcal_dask.engine.cluster` — a ``LocalCluster`` or an existing ``distributed`` cluster;
* :mod:`~stcal_dask.engine.logs` — distributed's log records to a file, not the terminal;
* :mod:`~stcal_dask.engine.startup` — how local workers start, and what is imported before;
* :mod:`~stcal_dask.engine.threads` — one native thread per worker thread.

Nothing is imported here, so a worker can load :mod:`~stcal_dask.engine.tasks` alone.
"""
