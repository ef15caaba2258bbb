"""`tuili ray serve REPO`: a model repository on a Ray cluster, behind a KServe V2 HTTP ingress."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("ray", help="run tuili on a Ray cluster (Ray Serve)",
                              description="Run tuili on a Ray cluster. Needs the ray extra: pip install 'tuili[ray]'.")
    sub = p.add_subparsers(dest="ray_verb", metavar="VERB", required=True)
    s = sub.add_parser("serve", help="deploy a model repository as a Ray Serve application (KServe V2 over HTTP)",
                       description="Deploy every model of REPO (or the --model ones) as a Ray Serve application running "
                       "tuili's serving core and speaking KServe V2 over HTTP at /v2/models/<model>, beside the server's "
                       "application (health, metadata, index, gRPC). Replicas, autoscaling "
                       "and resources come from each model's `ray` config parameter (docs/scale-out.md). Running it "
                       "again after the repository changed rolls the update out.")
    s.add_argument("repository", metavar="REPO", help="model repository (Triton layout), readable at this path on every node")
    s.add_argument("--address", default="auto", help="Ray cluster to join (default auto: the running one; "
                   "'local' starts a one-node cluster in this process)")
    s.add_argument("--model", action="append", default=None, metavar="NAME", help="deploy only this model (repeatable)")
    s.add_argument("--name", default="tuili", help="Ray Serve application name (default tuili; each model's "
                   "application is NAME-<model>)")
    s.add_argument("--route-prefix", default="/", help="HTTP route prefix of the application (default /)")
    s.add_argument("--host", default="127.0.0.1", help="address Ray Serve's HTTP proxies bind (default 127.0.0.1)")
    s.add_argument("--http-port", type=int, default=8000, help="port of Ray Serve's HTTP proxies (default 8000)")
    s.add_argument("--grpc-port", type=int, default=-1, help="also serve V2 gRPC on this port from the ingress "
                   "replica, on the node it runs on (0 = any free port; default -1: off; needs one ingress replica)")
    s.add_argument("--ingress-replicas", type=int, default=1, help="replicas of the V2 ingress (default 1)")
    s.add_argument("--request-timeout-secs", type=float, default=60.0,
                   help="longest a request may take (Ray Serve's proxies and the ingress; default 60)")
    s.add_argument("--measure-memory", action="store_true",
                   help="load each model once here first and let its replicas reserve the memory measured "
                        "(unless its ray parameter names memory): Ray then places replicas where they fit")
    s.add_argument("--detach", action="store_true", help="deploy and exit; the application keeps running on the cluster")
    s.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from tuili.deploy.ray import deploy

    deploy(args.repository, models=args.model, address=None if args.address == "local" else args.address,
           app_name=args.name, route_prefix=args.route_prefix, host=args.host, http_port=args.http_port,
           grpc_port=args.grpc_port, measure_memory=args.measure_memory,
           ingress_replicas=args.ingress_replicas, request_timeout_s=args.request_timeout_secs, wait=not args.detach)
    return 0
