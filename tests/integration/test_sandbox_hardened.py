"""The hardened sandbox, for real: bubblewrap, slirp4netns, nft and apt on the
cached Debian root filesystem (tests/integration/conftest.py), loop-mounted
from a copy so the cache stays pristine."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from support import REPO, await_until, wait_until

from kiln_builder import customize
from kiln_builder.bootstrap import host_mirror
from kiln_builder.engine import DEFAULT_EPOCH
from kiln_builder.isolation import cgroups
from kiln_builder.isolation.cgroups import PREFIX
from kiln_builder.isolation.sandbox import (
    CAPABILITIES,
    LAUNCH_ATTEMPTS,
    SandboxNotStarted,
    SandboxPolicy,
    run_in,
)
from kiln_common.errors import FailedPrecondition
from kiln_common.proc import ProcessError, ProcessTimeout, run_sync
from kiln_devstack.devservers import Nats

if TYPE_CHECKING:
    from conftest import StorageFactory  # the fixtures' types

pytestmark = [
    pytest.mark.integration,
    pytest.mark.build,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop mounts, bwrap as root"),
]

# Linux capability numbers of the kept set, for reading CapEff.
CAP_NUMBERS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
    "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_NET_BIND_SERVICE": 10, "CAP_SYS_CHROOT": 18,
    "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31,
}  # fmt: skip


def _own_addresses() -> list[str]:
    """Every address of this machine, loopback included."""
    out = run_sync(["ip", "-o", "address", "show"]).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def _listeners() -> list[tuple[str, int]]:
    """(address, port) of every TCP listener on the machine, a wildcard listener
    once for each of the machine's addresses of its family."""
    found = set()
    for table, version in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":  # LISTEN
                continue
            hex_address, hex_port = local.split(":")
            raw = bytes.fromhex(hex_address)
            if version == 4:
                address = ipaddress.ip_address(raw[::-1])
            else:  # four host-order 32-bit words
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                address = ipaddress.ip_address(words)
            port = int(hex_port, 16)
            if address.is_unspecified:
                for own in _own_addresses():
                    if ipaddress.ip_address(own).version == version:
                        found.add((own, port))
            else:
                found.add((str(address), port))
    return sorted(found)


class UdpListener:
    """A UDP socket that records every datagram it receives."""

    def __init__(self, address: str) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.address, self.port = address, self.sock.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                self.sock.recv(4096)
            except OSError:
                return
            self.received += 1

    def close(self) -> None:
        self.sock.close()


class Listener:
    """A plain TCP server that records every connection it accepts."""

    def __init__(self, address: str) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((address, 0))
        self.sock.listen()
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


PROBE = r"""#!/bin/bash
# Tries every door out of the sandbox; records what happened; exits 0.
out=/root/probe.txt
: > "$out"
say() { echo "$1 $2" >> "$out"; }
tx() { awk '/tap0:/ {print $11}' /proc/net/dev; }
grep -E '^(CapEff|CapPrm|CapInh|CapAmb|NoNewPrivs):' /proc/self/status | tr -d '\t' >> "$out"
mount -t tmpfs probe /mnt 2>/dev/null && say mount open || say mount closed
mknod /tmp/probe-sda b 8 0 2>/dev/null && say mknod open || say mknod closed
pattern=$(cat /proc/sys/kernel/core_pattern)
if (echo "$pattern" > /proc/sys/kernel/core_pattern) 2>/dev/null
then say proc-sys open; else say proc-sys closed; fi
ip link add kilnprobe0 type dummy 2>/dev/null && say netdev open || say netdev closed
ip address add 10.0.2.99/24 dev tap0 2>/dev/null && say address open || say address closed
ip -o link show tap0 >/dev/null 2>&1 && say tap0 present || say tap0 missing
before=$(tx)
while read -r host port; do
  if timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then
    say "connect-$host:$port" open
  else
    say "connect-$host:$port" closed
  fi
done < /root/kiln-targets
# UDP: a datagram (a DNS query for one) to each UDP listener; none may arrive.
header='\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00'
while read -r host port; do
  printf "$header\x05kilnx\x04test\x00\x00\x01\x00\x01" > "/dev/udp/$host/$port" 2>/dev/null
  say "udp-$host:$port" sent
done < /root/kiln-udp-targets
sleep 1
after=$(tx)
# DNS through slirp's own resolver still answers (the one way to names).
if getent hosts "$(cat /root/kiln-mirror-host)" >/dev/null
then say dns-resolver works; else say dns-resolver broken; fi
say tap0-tx-packets "$before->$after"
exit 0
"""


async def test_a_probing_script_finds_every_door_closed(
    image_root: Path, nats_server: Nats, storage_service: StorageFactory, tmp_path: Path
) -> None:
    """Listeners on the builder's loopback (a real nats-server, the storage
    service's gRPC and HTTP servers) and on the node's own addresses; the
    probe reaches none of them, nor the host alias, and sends nothing out."""
    node = [a for a in _own_addresses() if not ipaddress.ip_address(a).is_loopback]
    listeners = [Listener("127.0.0.1"), *(Listener(a) for a in node if ":" not in a)]
    udp = [UdpListener("127.0.0.1"), *(UdpListener(a) for a in node if ":" not in a)]
    udp_targets = [(u.address, u.port) for u in udp] + [("10.0.2.2", u.port) for u in udp]
    (image_root / "root/kiln-udp-targets").write_text(
        "".join(f"{host} {port}\n" for host, port in udp_targets)
    )
    mirror = host_mirror("debian")
    assert mirror, "the build host names no Debian mirror"
    (image_root / "root/kiln-mirror-host").write_text(str(urlsplit(mirror).hostname))
    async with storage_service():
        targets = _listeners()
        ports = {port for _, port in targets}
        # The host alias of slirp leads to the host's loopback when not disabled.
        targets += [("10.0.2.2", port) for port in sorted(ports)]
        assert any(port == int(nats_server.url.rsplit(":", 1)[1]) for _, port in targets)
        (image_root / "root/kiln-targets").write_text(
            "".join(f"{host} {port}\n" for host, port in targets)
        )
        script = tmp_path / "probe.sh"
        script.write_text(PROBE)
        # The recipe's path: run_script reads #!/bin/bash from the script.
        await customize.run_script(image_root, script, None, tmp_path, DEFAULT_EPOCH)
    for listener in [*listeners, *udp]:
        listener.close()
    results = dict(
        line.split(" ", 1) if " " in line else line.split(":", 1)
        for line in (image_root / "root/probe.txt").read_text().splitlines()
    )
    opened = [what for what, verdict in results.items() if verdict == "open"]
    assert opened == [], f"the sandbox reached: {opened}"
    for what in ("mount", "mknod", "proc-sys", "netdev", "address"):
        assert results[what] == "closed"
    assert sum(what.startswith("connect-") for what in results) == len(targets)
    assert all(listener.accepted == 0 for listener in listeners)
    assert results["tap0"] == "present"  # the counters below are tap0's, so it must exist
    assert sum(what.startswith("udp-") for what in results) == len(udp_targets)
    assert all(u.received == 0 for u in udp), [(u.address, u.received) for u in udp]
    assert results["dns-resolver"] == "works"
    kept = sum(1 << CAP_NUMBERS[c] for c in CAPABILITIES)
    assert int(results["CapEff"], 16) == kept
    assert int(results["CapPrm"], 16) == kept
    assert int(results["NoNewPrivs"]) == 1
    before, after = results["tap0-tx-packets"].split("->")
    assert before == after, "the probe's connection attempts left the sandbox"


# Syscalls the seccomp filter refuses that an unprivileged process could otherwise
# make (x86_64 numbers): keyctl(KEYCTL_GET_KEYRING_ID, session keyring),
# userfaultfd(UFFD_USER_MODE_ONLY), unshare(CLONE_NEWUSER), add_key, bpf,
# perf_event_open; then mount and init_module, refused by capabilities too.
SYSCALLS = {
    "keyctl": (250, 0, -3, 0), "userfaultfd": (323, 1), "unshare-user": (272, 0x10000000),
    "add_key": (248, 0, 0, 0, 0, 0), "bpf": (321, 0, 0, 0), "perf_event_open": (298, 0, 0, 0),
    "mount": (165, 0, 0, 0, 0, 0), "init_module": (175, 0, 0, 0),
}  # fmt: skip
SYSCALL_PROBE = "#!/bin/sh\nset -e\necho waiting > /root/uid-probe\n" + "".join(
    f"perl -e '$r = syscall({', '.join(map(str, args))}); "
    f'print "{name} $r ", $! + 0, "\\n"\' >> /root/syscalls\n'
    for name, args in SYSCALLS.items()
) + "sleep 2\n"  # fmt: skip


async def test_user_code_runs_as_an_unprivileged_host_uid_under_a_seccomp_filter(
    image_root: Path, tmp_path: Path
) -> None:
    """Seen from the host, the script's processes run as the namespace's uid
    range, never uid 0; the syscalls the filter refuses fail with EPERM."""
    (image_root / "root/syscalls").unlink(missing_ok=True)
    script = tmp_path / "probe.sh"
    script.write_text(SYSCALL_PROBE)
    seen: list[list[str]] = []

    def host_uids() -> bool:
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
                cmdline = (status.parent / "cmdline").read_bytes()
            except OSError:
                continue
            if b"sleep\x002" in cmdline:
                seen.append(next(ln for ln in text.splitlines() if ln.startswith("Uid:")).split())
        return bool(seen)

    running = asyncio.ensure_future(
        customize.run_script(image_root, script, None, tmp_path, DEFAULT_EPOCH)
    )
    await await_until("the probe's sleep on the host", lambda: host_uids(), 30)
    await running
    base = SandboxPolicy().ids.base
    assert seen and all(int(uid) == base for uid in seen[0][1:]), seen  # real, eff, saved, fs
    results = dict(
        line.split(" ", 1) for line in (image_root / "root/syscalls").read_text().splitlines()
    )
    assert set(results) == set(SYSCALLS)
    refused = {name: verdict for name, verdict in results.items() if verdict != "-1 1"}
    assert refused == {}, f"not refused with EPERM: {refused}"
    assert (
        image_root / "root/uid-probe"
    ).stat().st_uid == 0  # root's file, on disk as in the image


async def test_apt_installs_a_package_in_the_hardened_sandbox(image_root: Path) -> None:
    await customize.install_packages(image_root, ["hello"], DEFAULT_EPOCH)
    result = await run_in(image_root, ["hello"])
    assert result.stdout.strip() == "Hello, world!"


async def test_a_bash_script_runs_under_bash_and_a_plain_one_under_sh_e(
    image_root: Path, tmp_path: Path
) -> None:
    bash_only = "#!/bin/bash\nset -euo pipefail\nwords=(a b c)\n[[ ${#words[@]} == 3 ]]\n"
    await customize.run_script(
        image_root, None, bash_only + "echo ${words[1]} > /root/bash-ok\n", tmp_path, 1
    )
    assert (image_root / "root/bash-ok").read_text() == "b\n"
    # No #!: /bin/sh -e, so the first failing command stops the script.
    with pytest.raises(ProcessError, match=r"/bin/sh -e /tmp/kiln-script"):
        await customize.run_script(image_root, None, "false\ntouch /root/sh-ran\n", tmp_path, 1)
    assert not (image_root / "root/sh-ran").exists()


async def test_a_missing_interpreter_fails_with_its_name(image_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match=r"asks for /usr/bin/zsh \(its #! line\)"):
        await customize.run_script(image_root, None, "#!/usr/bin/zsh\necho hi\n", tmp_path, 1)
    with pytest.raises(FailedPrecondition, match=r"asks for ruby .* no PATH directory"):
        await customize.run_script(image_root, None, "#!/usr/bin/env ruby\n", tmp_path, 1)


def _running(*argv: str) -> list[int]:
    """Processes running exactly this command line (the tests use odd numbers)."""
    wanted = "\0".join(argv).encode() + b"\0"
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes() == wanted:
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


async def test_the_time_limit_kills_everything_the_command_started(image_root: Path) -> None:
    policy = SandboxPolicy(timeout=2.0)
    with pytest.raises(ProcessTimeout, match="time limit of 2s"):
        await run_in(image_root, ["/bin/sh", "-c", "sleep 4242 & sleep 4243; wait"], policy=policy)
    assert not _running("sleep", "4242") and not _running("sleep", "4243")


async def test_memory_and_process_limits_hold(image_root: Path) -> None:
    small = SandboxPolicy(memory_bytes=64 * 1024**2, max_pids=16)
    with pytest.raises(ProcessError) as caught:
        await run_in(image_root, ["python3", "-c", "b = bytearray(512 << 20); print('kept')"],
                     policy=small)  # fmt: skip
    assert "kept" not in caught.value.output and caught.value.returncode != 0
    forks = "for i in $(seq 40); do sleep 5 & done 2>&1; wait"
    with pytest.raises(ProcessError, match="Resource temporarily unavailable"):
        await run_in(image_root, ["/bin/bash", "-ec", forks], policy=small)


async def test_a_cancelled_command_takes_its_network_and_processes_with_it(
    image_root: Path,
) -> None:
    task = asyncio.create_task(run_in(image_root, ["sleep", "4246"]))
    slirp = await await_until(
        "slirp4netns", lambda: _children_named(os.getpid(), "slirp4netns"), 20
    )
    await await_until("the sandboxed sleep", lambda: _running("sleep", "4246"), 20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _running("sleep", "4246")
    assert (
        not _children_named(os.getpid(), "slirp4netns") and not Path(f"/proc/{slirp[0]}").exists()
    )
    assert cgroups._parents(), "no cgroup hierarchy to look in"
    assert not [g for p in cgroups._parents() for g in p.glob(f"{PREFIX}{os.getpid()}-*")]


async def test_a_sandbox_bwrap_cannot_set_up_fails_with_bwraps_own_reason(
    image_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """bwrap's set-up dies while the network is being made (here: a bind whose
    source is missing; in the wild: a mount that vanished under a recursive
    bind). Its reason is the error, not the network's failure to reach a
    sandbox already gone, and the launch is tried LAUNCH_ATTEMPTS times."""
    caplog.set_level(logging.INFO, logger="kiln_common.retry")
    missing = image_root.parent / "never-there"
    with pytest.raises(SandboxNotStarted, match=r"Can't find source path .*never-there") as caught:
        await run_in(image_root, ["true"], ro_binds=[(missing, "/x")])
    assert str(caught.value).startswith("the sandbox could not be set up: bwrap: ")
    retries = [r for r in caplog.records if "trying again" in r.getMessage()]
    assert len(retries) == LAUNCH_ATTEMPTS - 1
    assert not _children_named(os.getpid(), "slirp4netns")
    assert cgroups._parents(), "no cgroup hierarchy to look in"
    assert not [g for p in cgroups._parents() for g in p.glob(f"{PREFIX}{os.getpid()}-*")]


async def test_a_set_up_that_fails_once_is_tried_again_and_the_command_runs_once(
    image_root: Path, tmp_path: Path
) -> None:
    """The bind's source appears as the first failure is logged: the second
    launch starts the command, which runs exactly once."""
    source = tmp_path / "late"

    class Appear(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            source.write_text("here\n")

    appear = Appear(logging.INFO)
    retry_log = logging.getLogger("kiln_common.retry")
    level = retry_log.level
    retry_log.setLevel(logging.INFO)
    retry_log.addHandler(appear)
    count = image_root / "var/tmp/kiln-runs"
    try:
        done = await run_in(image_root, ["sh", "-c", "cat /x; echo ran >> /var/tmp/kiln-runs"],
                            ro_binds=[(source, "/x")])  # fmt: skip
        assert done.stdout == "here\n" and count.read_text() == "ran\n"
    finally:
        retry_log.removeHandler(appear)
        retry_log.setLevel(level)
        count.unlink(missing_ok=True)


DRIVER = """
import asyncio, sys
from pathlib import Path
from kiln_builder.isolation.sandbox import run_in
asyncio.run(run_in(Path(sys.argv[1]), ["sleep", "4244"]))
"""


def _children_named(parent: int, name: str) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            comm = fields[0].split("(", 1)[1]
        except (OSError, IndexError):
            continue
        if comm == name and int(fields[1].split()[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def test_sigkill_of_the_builder_leaves_no_sandbox_or_slirp_behind(image_root: Path) -> None:
    builder = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(image_root)], cwd=REPO, start_new_session=True
    )
    try:
        slirp = wait_until("slirp4netns", lambda: _children_named(builder.pid, "slirp4netns"), 20)
        wait_until("the sandboxed sleep", lambda: _running("sleep", "4244"), 20)
        os.kill(builder.pid, signal.SIGKILL)
        builder.wait()
        wait_until("slirp4netns's end", lambda: not Path(f"/proc/{slirp[0]}/stat").exists()
                   or "Z" in Path(f"/proc/{slirp[0]}/stat").read_text().rsplit(")", 1)[1][:3],
                   10)  # fmt: skip
        wait_until("the sandboxed sleep's end", lambda: not _running("sleep", "4244"), 10)
        # Its control group, empty now, goes at the next janitor's pass.
        groups = [g for g in cgroups.reclaim_stale() if f"{PREFIX}{builder.pid}-" in g]
        assert cgroups._parents(), "no cgroup hierarchy to look in"
        assert groups, "the dead builder's cgroup was not reclaimed"
    finally:
        if builder.poll() is None:
            builder.kill()
            builder.wait()


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("bwrap", "slirp4netns", "nft", "nsenter"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run scripts/setup.sh")
