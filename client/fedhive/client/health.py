"""``fedhive health``: ask a coordinator's gRPC health service; exit 0 when it is SERVING.

The coordinator's port speaks mutual TLS, so the probe presents a certificate too: inside the
coordinator's container its own bundle (``--tls-dir`` with server.crt/server.key, which carry the
client-auth usage), or any node's bundle. Used by the Docker image's HEALTHCHECK.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedhive.common.cli.helptext import plain
from fedhive.common.crypto.pki import read_bytes
from fedhive.common.errors import FedhiveError, PkiError


def _bundle(folder: Path) -> tuple[Path, Path, Path]:
    for kind in ("server", "node"):
        if (folder / f"{kind}.crt").exists():
            return folder / f"{kind}.crt", folder / f"{kind}.key", folder / "ca.crt"
    raise PkiError(f"no server.crt or node.crt in {folder}")


def probe(
    server: str,
    *,
    bundle: tuple[Path, Path, Path] | None,
    service: str = "",
    timeout_s: float = 5.0,
    server_name: str | None = None,
) -> str:
    """The health status name (SERVING, NOT_SERVING, ...); a coordinator that cannot be reached
    (or refuses the handshake) is reported as ``UNREACHABLE: <code>: <details>``, not raised."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    if bundle is None:
        channel = grpc.insecure_channel(server)
    else:
        cert, key, ca = bundle
        creds = grpc.ssl_channel_credentials(
            read_bytes(ca, "CA certificate"),
            read_bytes(key, "private key"),
            read_bytes(cert, "certificate"),
        )
        channel = grpc.secure_channel(server, creds, options=options)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.RpcError as exc:
        return f"UNREACHABLE: {exc.code().name}: {exc.details()}"
    finally:
        channel.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="fedhive health",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--server", default="127.0.0.1:8765", help="coordinator host:port (default 127.0.0.1:8765)"
    )
    p.add_argument(
        "--tls-dir",
        type=Path,
        help="a bundle folder, server or node (default none: give this or --insecure)",
    )
    p.add_argument(
        "--tls-server-name",
        help="name in the coordinator's certificate to expect (default: the host of --server)",
    )
    p.add_argument("--insecure", action="store_true", help="plain text (coordinator --insecure)")
    p.add_argument("--service", default="", help="service name (default '': the whole server)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="(default 5.0)")
    ns = p.parse_args(argv)
    if ns.insecure == (ns.tls_dir is not None):
        print("fedhive health: give exactly one of --tls-dir or --insecure", file=sys.stderr)
        return 2
    try:
        bundle = None if ns.insecure else _bundle(ns.tls_dir)
        status = probe(
            ns.server,
            bundle=bundle,
            service=ns.service,
            timeout_s=ns.timeout,
            server_name=ns.tls_server_name,
        )
    except FedhiveError as exc:
        print(f"fedhive health: {exc}", file=sys.stderr)
        return 2
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
