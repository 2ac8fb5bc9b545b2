"""A small private network of Linux network namespaces, like a compose network.

One namespace per service, each with a veth pair to a bridge in a hub namespace, addresses
10.77.0.2, .3, ... and an ``/etc/netns/<ns>/hosts`` so service names resolve (``ip netns exec``
bind-mounts it over ``/etc/hosts``). Needs root and ``ip``; :meth:`Network.create` returns None
where that is not available, and callers fall back to loopback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

HOSTS_ROOT = Path("/etc/netns")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Network:
    prefix: str
    namespaces: dict[str, str] = field(default_factory=dict)  # service -> namespace
    addresses: dict[str, str] = field(default_factory=dict)  # service -> address

    @classmethod
    def create(cls, services: list[str]) -> Network | None:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            return None
        net = cls(prefix=f"fh{os.getpid() % 100000}")
        try:
            net._build(services)
        except (subprocess.CalledProcessError, OSError):
            net.destroy()
            return None
        return net

    def _build(self, services: list[str]) -> None:
        hub = f"{self.prefix}h"
        self.namespaces["(hub)"] = hub
        _ip("netns", "add", hub)
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "link", "set", "br0", "up")
        for i, name in enumerate(services):
            ns, outer, inner = f"{self.prefix}s{i}", f"{self.prefix}o{i}", f"{self.prefix}i{i}"
            self.namespaces[name] = ns
            self.addresses[name] = f"10.77.0.{i + 2}"
            _ip("netns", "add", ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", outer, "netns", hub)
            _ip("link", "set", inner, "netns", ns)
            _ip("-n", hub, "link", "set", outer, "master", "br0")
            _ip("-n", hub, "link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[name]}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        hosts = "127.0.0.1 localhost\n" + "".join(
            f"{addr} {name}\n" for name, addr in self.addresses.items()
        )
        for name in services:
            folder = HOSTS_ROOT / self.namespaces[name]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text(hosts)

    def wrap(self, service: str, argv: list[str]) -> list[str]:
        """``argv`` run inside the service's namespace (exec'd: same pid, kill works)."""
        return ["ip", "netns", "exec", self.namespaces[service], *argv]

    def destroy(self) -> None:
        for ns in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
            shutil.rmtree(HOSTS_ROOT / ns, ignore_errors=True)
        if HOSTS_ROOT.exists() and not any(HOSTS_ROOT.iterdir()):
            HOSTS_ROOT.rmdir()
