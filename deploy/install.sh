#!/usr/bin/env bash
# Install stcal-dask into a virtual environment and compile its numba kernels ahead of time: the
# install and warm-up steps of deploy/Dockerfile, usable as they are on a login node, in a job's
# environment set-up or in any other image recipe.
#
#   bash deploy/install.sh VENV [SOURCE [PIP_ARGS...]]
#
# VENV      the virtual environment (created with $PYTHON, default python3, unless it exists)
# SOURCE    what to install: a path or a pip requirement (default: this repository)
# PIP_ARGS  more arguments for pip install (e.g. --no-deps for an environment that already has
#           the dependencies)
#
# The kernels are compiled into STCAL_DASK_CACHE_DIR (default: a per-user directory under
# /var/tmp, see deploy/README.md); set it to the directory the workers will use. Exit status:
# non-zero if any step fails.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: bash $0 VENV [SOURCE [PIP_ARGS...]]" >&2
    exit 2
fi
VENV=$1
SOURCE=${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
shift $(( $# < 2 ? $# : 2 ))

if [[ ! -x "$VENV/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --no-input --disable-pip-version-check "$@" "$SOURCE"
# compile every kernel variant into the cache (about a minute or two, once per machine and CPU)
"$VENV/bin/stcal-dask" warmup
