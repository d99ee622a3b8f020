"""``python -m stcal_dask.cli``: the ``stcal-dask`` command."""

import os

from stcal_dask.cli import run

os.environ.setdefault("OMP_NUM_THREADS", "1")
run()
