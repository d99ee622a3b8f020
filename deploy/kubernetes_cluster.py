"""Run ``stcal-dask`` on Kubernetes with dask-kubernetes' ``KubeCluster`` (the Dask operator).

Needs ``pip install dask-kubernetes`` and the Dask operator installed in the Kubernetes cluster
(see deploy/README.md). The image must contain stcal_dask; the data must be on a volume that the
workers and this process see at the same path.

The worker pods compile the numba kernels into the pod's cache before ``dask worker`` starts
(``stcal-dask warmup``: a no-op when the image was built with a warm cache for this CPU, see
deploy/Dockerfile). The scheduler is started with ``dask scheduler`` (``distributed`` no longer
ships the ``dask-scheduler`` command that the operator's default spec uses); it listens on all of
its pod's interfaces, reached through the cluster-internal (``ClusterIP``) service only.

Example::

    python deploy/kubernetes_cluster.py --image ghcr.io/you/stcal-dask:latest --workers 8 \\
        --memory 3Gi -- run /data/exposure.zarr --output-dir /data/out
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--name", default="stcal-dask", help="DaskCluster name")
    p.add_argument("--image", required=True, help="container image with stcal_dask installed")
    p.add_argument("--workers", type=int, default=4, help="worker pods (1 thread each)")
    p.add_argument("--memory", default="3Gi", help="memory request/limit per worker pod")
    p.add_argument("--namespace", default=None, help="Kubernetes namespace")
    p.add_argument("--pvc", default="stcal-data", help="PersistentVolumeClaim mounted at /data")
    p.add_argument(
        "stcal_dask_args", nargs=argparse.REMAINDER, help="stcal-dask arguments after --"
    )
    return p


WARMUP = "stcal-dask warmup && exec \"$@\""
"""Shell line run before a worker's own command (its arguments follow as ``$@``)."""


def make_spec(args):
    """The KubeCluster custom spec: single-threaded workers that warm the kernel cache first,
    ``dask scheduler``, the data volume mounted at /data in both."""
    from dask_kubernetes.operator import make_cluster_spec

    spec = make_cluster_spec(
        name=args.name,
        image=args.image,
        n_workers=args.workers,
        resources={
            "requests": {"cpu": "1", "memory": args.memory},
            "limits": {"cpu": "1", "memory": args.memory},
        },
        env={"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"},
        worker_command="dask worker --nthreads 1",
    )
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    args_ = list(scheduler["args"])
    if args_ and args_[0] == "dask-scheduler":  # the operator's default, gone from distributed
        args_[:1] = ["dask", "scheduler"]
    scheduler["args"] = args_
    for container in spec["spec"]["worker"]["spec"]["containers"]:
        container["command"] = ["sh", "-c", WARMUP, "--"]  # then args: the dask worker line
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": args.pvc}}
    mount = {"name": "data", "mountPath": "/data"}
    for role in ("worker", "scheduler"):
        pod = spec["spec"][role]["spec"]
        pod.setdefault("volumes", []).append(volume)
        for container in pod["containers"]:
            container.setdefault("volumeMounts", []).append(mount)
    return spec


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError:
        print(
            "kubernetes_cluster.py: error: needs dask-kubernetes (pip install dask-kubernetes)",
            file=sys.stderr,
        )
        return 2
    kwargs = {"namespace": args.namespace} if args.namespace else {}
    cluster = KubeCluster(custom_cluster_spec=make_spec(args), **kwargs)
    try:
        from distributed import Client

        client = Client(cluster)
        client.wait_for_workers(1)
        address = cluster.scheduler_address
        rest = [a for a in args.stcal_dask_args if a != "--"]
        if not rest:
            print(f"scheduler at {address}; Ctrl-C deletes the cluster")
            import time

            while True:
                time.sleep(60)
        from stcal_dask.cli import main as stcal_dask_main

        return stcal_dask_main([*rest, "--scheduler", address])
    except KeyboardInterrupt:
        return 130
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
