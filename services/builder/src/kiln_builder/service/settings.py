"""Builder service settings: env KILN_BUILDER_<FIELD>, or a YAML file named by
KILN_BUILDER_CONFIG_FILE (environment wins)."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from kiln_builder.egress import EgressPolicy
from kiln_builder.isolation.sandbox import SandboxPolicy
from kiln_builder.isolation.userns import IdRange
from kiln_builder.storage import DEFAULT_RETRY_SECONDS
from kiln_common.settings import IdentitySettings
from kiln_common.urls import http_target


class BuilderSettings(IdentitySettings):
    model_config = SettingsConfigDict(env_prefix="KILN_BUILDER_", use_attribute_docstrings=True)

    grpc_bind: str = "127.0.0.1:50052"
    """host:port the gRPC API listens on (port 0 picks a free one)."""
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server with JetStream: queue, records, updates and events."""
    nats_replicas: int = Field(default=1, ge=1, le=5)
    """Replicas of each JetStream stream and bucket the builder creates (3 on
    a clustered NATS, as deploy/k8s runs it)."""
    storage: str = "127.0.0.1:50051"
    """host:port of the storage service: artifacts and the shared layer cache."""
    storage_retry_seconds: float = Field(default=DEFAULT_RETRY_SECONDS, gt=0)
    """How long one call to an unreachable storage service is retried before
    the build's attempt fails for a passing reason (and is retried later)."""
    publisher: str = ""
    """host:port of the publisher: from.image.marketplace and from.image.glance bases."""
    log_level: str = "INFO"
    """Python log level name."""
    shutdown_grace: float = 10.0
    """Seconds in-flight calls get to finish after SIGTERM."""

    worker: bool = True
    """Run builds here (false: this pod only answers the API)."""
    schedules: bool = True
    """Take the schedules' ticks and settle scheduled builds' ends here (any
    number of pods may: each tick and each end goes to one of them)."""
    schedule_min_seconds: int = Field(default=60, ge=1)
    """The shortest interval a schedule may fire at (`--every`); a cron fires
    once a minute at most. Each firing reads the recipe's sources."""
    concurrency: int = Field(default=1, ge=1, le=64)
    """Builds this pod runs at the same time."""
    worker_name: str = ""
    """How this worker names itself in build records; default host:pid."""
    work_root: Path = Path("/var/tmp/kiln")
    """Workspaces of running builds (a janitor reclaims dead ones at start)."""
    outbox_dir: Path = Path("/var/lib/kiln/outbox")
    """Events that could not be sent while NATS was away, kept until they are;
    a builder adopts the outbox of one that died."""
    cache_dir: Path = Path("/var/cache/kiln")
    """Local layer cache and the KVM probe's verdict."""
    cache_max_gib: float = 16.0
    """Local layers beyond this size are pruned, least recently used first."""
    default_mirror: str = ""
    """http(s) URL of the archive to bootstrap from when a recipe names no
    mirror; empty: the build host's apt source for the recipe's distro."""
    boot_test: bool = True
    """Boot-test images whose recipe asks for it (a build may still skip it)."""
    force_vm: bool = False
    """Run every build's packages, files and run steps in the appliance VM,
    whatever its recipe's isolation says (for recipes from untrusted people)."""
    start_libvirtd: bool = True
    """Start libvirtd (and virtlogd) if none answers, for boot tests."""
    fix_kvm_device: bool = True
    """Give /dev/kvm group kvm and mode 0660 as udev would (false in a container
    that sees the node's /dev: the device and its group ids are the node's)."""

    sandbox_memory_mib: int = Field(default=4096, ge=0)
    """Memory each command in the build sandbox (package installs, recipe
    scripts) may use with everything it starts, in MiB; 0: no limit. Needs a
    writable cgroup (v2, or v1 memory and pids); without one it is logged as
    not enforced."""
    sandbox_max_pids: int = Field(default=4096, ge=0)
    """Processes and threads a sandboxed command may have at once; 0: no limit."""
    sandbox_timeout_seconds: float = Field(default=3600.0, ge=0)
    """A sandboxed command still running after this long is killed with all it
    started, and the build fails naming it; 0: no limit."""
    sandbox_user_namespace: bool = True
    """Run sandboxed commands as root of a user namespace mapped to an
    unprivileged host uid range, on an idmapped mount of the image's tree (Linux
    5.12+, ext4/xfs/btrfs/tmpfs work roots); false: as host root with dropped
    capabilities, for a kernel or filesystem that cannot (less safe)."""
    sandbox_uid_base: int = Field(default=1_000_000_000, ge=65536, le=4_294_901_759)
    """The first host uid and gid of that range (65536 ids): a range no host user
    or other tool uses."""
    sandbox_blocked_networks: list[str] = []
    """Other networks (CIDRs) neither the sandbox nor the builder's own fetches
    may reach, besides the cluster's (cluster_networks), the node's, the pod's
    own addresses, loopback and link-local ones."""
    node_ip: str = ""
    """The node's address, refused to the sandbox and to the builder's fetches
    like the pod's own (on Kubernetes: the downward API's status.hostIP, which
    deploy/k8s passes; the pod cannot see it among its own addresses)."""
    cluster_networks: list[str] | None = None
    """The cluster's pod and service networks (CIDRs), refused to the sandbox
    and to the builder's fetches. No default, on purpose: unset, the builder
    does what unconfigured_networks says; `[]` says there is no cluster (one
    machine: `kiln up` sets it)."""
    unconfigured_networks: Literal["refuse", "vm"] = "refuse"
    """With cluster_networks unset: refuse sandbox builds, or run them in vm
    (whose guest reaches only the package mirrors). Said at start-up and in
    each build record."""
    egress_allow_loopback: bool = False
    """Let the builder's own fetches (a base image URL, a bootstrap mirror, the
    appliance's relays) reach loopback addresses: one trusted user on one
    machine (`kiln up` sets it), never a cluster."""
    egress_allow_private: bool = False
    """Let the builder's own fetches reach private networks (10/8, 172.16/12,
    192.168/16, 100.64/10, fc00::/7): one machine on a LAN (`kiln up` sets it).
    On a cluster its own networks are there: allow-list an internal mirror
    instead (egress_allowed_networks)."""
    egress_allowed_networks: list[str] = []
    """Networks (CIDRs) the builder's fetches may reach whatever else is denied:
    an internal mirror inside a cluster network, say."""

    ack_wait_seconds: float = Field(default=60.0, ge=1.0)
    """A worker that has not heartbeated this long is presumed dead; its build
    is delivered to another."""
    max_deliver: int = Field(default=4, ge=1, le=100)
    """Deliveries of one build (the first run included) before it fails."""
    retry_backoff_seconds: list[float] = [10.0, 30.0, 90.0]
    """Delay before each retry of a build that failed for a passing reason
    (storage or NATS unavailable); the last value repeats."""

    @field_validator("sandbox_blocked_networks", "cluster_networks", "egress_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str] | None) -> list[str] | None:
        for network in value or []:
            ipaddress.ip_network(network, strict=False)  # ValueError names it
        return value

    @field_validator("node_ip")
    @classmethod
    def _address(cls, value: str) -> str:
        if value:
            ipaddress.ip_address(value)
        return value

    def denied_networks(self) -> tuple[str, ...]:
        """The cluster's networks, the node's address and the other blocked ones."""
        node = [str(ipaddress.ip_network(self.node_ip))] if self.node_ip else []
        return (*(self.cluster_networks or []), *node, *self.sandbox_blocked_networks)

    def sandbox_policy(self) -> SandboxPolicy:
        return SandboxPolicy(
            memory_bytes=self.sandbox_memory_mib * 1024**2 or None,
            max_pids=self.sandbox_max_pids or None,
            timeout=self.sandbox_timeout_seconds or None,
            blocked_networks=self.denied_networks(),
            user_namespace=self.sandbox_user_namespace,
            ids=IdRange(self.sandbox_uid_base),
        )

    def egress_policy(self) -> EgressPolicy:
        return EgressPolicy(
            allow_loopback=self.egress_allow_loopback,
            allow_private=self.egress_allow_private,
            denied=self.denied_networks(),
            allowed=tuple(self.egress_allowed_networks),
        )

    def unconfigured(self) -> str:
        """What this builder does with sandbox builds, when it was not told the
        cluster's networks ("" when it was)."""
        if self.cluster_networks is not None:
            return ""
        if self.unconfigured_networks == "vm":
            return (
                "the builder's cluster networks are not configured"
                " (KILN_BUILDER_CLUSTER_NETWORKS): sandbox builds run in vm"
            )
        return (
            "the builder's cluster networks are not configured"
            " (KILN_BUILDER_CLUSTER_NETWORKS): sandbox builds are refused"
        )

    def isolation_options(self) -> dict[str, Any]:
        """BakeOptions' isolation fields: vm forced by the operator, or because
        the cluster's networks are unknown (or sandbox builds refused then)."""
        unconfigured = self.unconfigured()
        if self.force_vm:
            return {"force_vm": True, "force_vm_why": "forced by the builder's setting"}
        if unconfigured and self.unconfigured_networks == "vm":
            return {"force_vm": True, "force_vm_why": unconfigured}
        return {"sandbox_refused": unconfigured}

    @field_validator("default_mirror")
    @classmethod
    def _mirror(cls, value: str) -> str:
        if value:
            try:
                http_target(value)
            except ValueError as exc:
                raise ValueError(f"expected an http:// or https:// URL: {exc}") from None
        return value

    def name(self) -> str:
        return self.worker_name or f"{socket.gethostname()}:{os.getpid()}"
