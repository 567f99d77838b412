"""``mmagent models serve``: start the model tier (Ray Serve deployments) and keep it running.

    mmagent models serve --config mmagent.yaml           # a local Ray cluster on this machine
    mmagent models serve --address ray://head:10001      # an existing cluster (or RAY_ADDRESS)

Front ends with ``serving.engine: ray`` (and the same ``serving.address``) then use it.
Ctrl-C or SIGTERM deletes the applications and stops a cluster it started itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import time
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("models", help="the model tier (Ray Serve)")
    sp = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    s = sp.add_parser("serve", help="start one Ray Serve deployment per model and keep them running",
                      description="Start the encoders as Ray Serve deployments (replicas, autoscaling and "
                      "batching from the serving.* settings) for front ends with serving.engine: ray.")
    s.add_argument("--config", help="YAML or JSON configuration file (the front ends' own)")
    s.add_argument("--address", help="Ray cluster to deploy to (default: serving.address; 'local' starts "
                   "a cluster in this process)")
    s.add_argument("--num-cpus", type=float, help="CPUs of a cluster this command starts")
    s.add_argument("--ready-file", help="write the application names here (JSON) once they are ready")
    s.set_defaults(func=_serve_models)


def _serve_models(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from server.config import load_config
    from server.serving.deployments import build_apps

    config = load_config(args.config)
    serving = config.serving
    address = args.address or serving.address
    t0 = time.perf_counter()
    started_here = address == "local"
    if not started_here:
        try:
            ray.init(address=address, namespace=serving.namespace, include_dashboard=False, log_to_driver=False)
        except ConnectionError:
            if address != "auto":
                raise
            started_here = True
    if started_here:   # no cluster running: start one here (its head lives as long as this command)
        import os

        # Ray's CPUs are scheduling units, not a limit: enough for every replica to be placed
        # (their threads share the machine's real cores; see docs/deploy.md for sizing).
        wanted = sum(getattr(serving, n).num_cpus * max(getattr(serving, n).num_replicas,
                                                        getattr(serving, n).max_replicas)
                     for n in ("text", "speech", "vision", "llm"))
        num_cpus = args.num_cpus if args.num_cpus is not None else max(float(os.cpu_count() or 1), wanted)
        ray.init(namespace=serving.namespace, include_dashboard=False, num_cpus=num_cpus, log_to_driver=False)
    serve.start(http_options={"location": "NoServer"})   # handles only: the front ends own the sockets
    apps = build_apps(config)
    for name, app in apps.items():
        log.info("deploying %s", name)
        serve.run(app, name=name, route_prefix=None, blocking=False)
    for name in apps:
        serve.get_app_handle(name).ping.remote().result(timeout_s=600)
    log.info("model tier ready in %.0f s: %s (Ray %s, cluster %s)", time.perf_counter() - t0, ", ".join(apps),
             ray.__version__, "started here" if started_here else address)
    if args.ready_file:
        with open(args.ready_file, "w", encoding="utf-8") as f:
            json.dump({"apps": list(apps), "gcs_address": ray.get_runtime_context().gcs_address}, f)
    asyncio.run(_wait_for_signal())
    log.info("stopping the model tier…")
    if started_here:
        serve.shutdown()   # the whole cluster goes with this process
    else:
        for name in apps:
            serve.delete(name)
    ray.shutdown()
    return 0


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
