"""The Ray cluster a command runs on: ``--ray local[:N] | auto | ADDRESS``, connected once.

* ``local`` / ``local:N`` starts a Ray instance on this machine for the command (N CPUs; all of
  them without N) and stops it at the end;
* ``auto`` joins the cluster ``RAY_ADDRESS`` names, else the one ``ray start`` left on this
  machine; ``HOST:PORT`` (or ``ray://HOST:PORT``) joins that cluster.

A cluster that cannot be reached is one line within a few seconds (a TCP probe first, so Ray's
own long connection retries never start); Ray not installed is one line naming the extra. When
Ray is already initialised in this process (a notebook, the tests), that connection is used and
left open.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from retrieval.errors import OptionError, RetrieveError

INSTALL_HINT = 'install retrieve[ray] (pip install "retrieve[ray]")'
PROBE_SECONDS = 3.0
DEFAULT_GCS_PORT = 6379
DEFAULT_CLIENT_PORT = 10001
CURRENT_CLUSTER_FILE = "/tmp/ray/ray_current_cluster"  # where `ray start` records the local head's address


def import_ray():
    """The ``ray`` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RetrieveError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class RaySpec:
    """A parsed ``--ray`` value."""

    text: str
    local: bool
    cpus: int | None = None  # local:N
    address: str | None = None  # auto, HOST:PORT or ray://HOST:PORT

    @property
    def label(self) -> str:
        return self.text


def parse_ray_spec(text: str) -> RaySpec:
    """``local``, ``local:N``, ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``; anything else is a usage error."""
    value = (text or "").strip()
    if value == "local" or value.startswith("local:"):
        count = value.partition(":")[2]
        if count and (not count.isdigit() or int(count) < 1):
            raise OptionError(f"expected local, local:N (N ≥ 1 CPUs), auto or HOST:PORT, got {text!r}", "--ray")
        return RaySpec(value, local=True, cpus=int(count) if count else None)
    if value == "auto":
        return RaySpec(value, local=False, address="auto")
    host, port = _host_port(value)
    if not host or port is None:
        raise OptionError(f"expected local, local:N, auto or HOST:PORT (e.g. 10.0.0.5:6379), got {text!r}", "--ray")
    return RaySpec(value, local=False, address=value)


def _host_port(address: str) -> tuple[str, int | None]:
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep:
        return rest, DEFAULT_CLIENT_PORT if address.startswith("ray://") else None
    return host, int(port) if port.isdigit() else None


def probe(address: str, timeout: float = PROBE_SECONDS) -> None:
    """Fail within ``timeout`` seconds with one line when nothing listens at the address."""
    host, port = _host_port(address)
    if port is None:
        raise RetrieveError(f"--ray {address}: not an address (expected HOST:PORT)")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, socket.timeout):
            reason = f"no answer within {timeout:g} s"
        raise RetrieveError(f"cannot reach the Ray cluster at {address}: {reason}") from None


def resolve_auto() -> str | None:
    """The address ``auto`` means: RAY_ADDRESS, else the local head ``ray start`` recorded (None: none)."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env != "auto":
        return env
    try:
        with open(CURRENT_CLUSTER_FILE) as handle:
            return handle.read().strip() or None
    except OSError:
        return None


@dataclass
class Cluster:
    """A connection to a Ray cluster for one command (a context manager: stops what it started)."""

    spec: RaySpec
    started: bool = False  # this process started a local instance (stopped on exit)
    address: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def workers(self) -> int:
        """How many tasks run at once: the cluster's CPUs."""
        return max(1, int(self.info.get("cpus", 1)))

    def describe(self) -> dict[str, Any]:
        """What the run record keeps: the cluster, its nodes and CPUs (workers)."""
        return {"ray": self.spec.text, **self.info}

    def close(self) -> None:
        if self.started:
            import_ray().shutdown()
            self.started = False

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(spec: RaySpec | str) -> Cluster:
    """Start or join the cluster ``spec`` names (see the module docstring)."""
    if isinstance(spec, str):
        spec = parse_ray_spec(spec)
    ray = import_ray()
    if ray.is_initialized():
        return _described(ray, Cluster(spec, started=False))
    quiet = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    if spec.local:
        try:
            # address="local": always a new instance, never a cluster another `ray start` left here
            ray.init(address="local", num_cpus=spec.cpus, **quiet)
        except Exception as exc:  # noqa: BLE001 - Ray's start-up failures have many types
            raise RetrieveError(f"could not start a local Ray instance: {_one_line(exc)}") from None
        return _described(ray, Cluster(spec, started=True))
    address = resolve_auto() if spec.address == "auto" else spec.address
    if address is None:
        raise RetrieveError("--ray auto: no Ray cluster found (RAY_ADDRESS is not set and no `ray start` head runs "
                            "on this machine); use --ray local:N or --ray HOST:PORT")
    probe(address)
    try:
        ray.init(address=address, **quiet)
    except Exception as exc:  # noqa: BLE001
        raise RetrieveError(f"could not join the Ray cluster at {address}: {_one_line(exc)}") from None
    return _described(ray, Cluster(spec, started=False, address=address))


def _described(ray, cluster: Cluster) -> Cluster:
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    resources = ray.cluster_resources()
    cluster.address = cluster.address or ray.get_runtime_context().gcs_address
    cluster.info = {
        "address": cluster.address,
        "started_here": cluster.started,
        "nodes": len(nodes),
        "cpus": int(resources.get("CPU", 0)),
        "gpus": int(resources.get("GPU", 0)),
        "ray_version": ray.__version__,
    }
    return cluster


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


@contextmanager
def cluster_for(spec: str | None) -> Iterator[Cluster | None]:
    """The cluster a ``--ray`` value names for the duration of a command (None: one process)."""
    if spec is None:
        yield None
        return
    cluster = connect(spec)
    try:
        yield cluster
    finally:
        cluster.close()
