"""Customisation steps on an image's root filesystem (a directory): packages,
files, scripts and sysprep. Commands run in the sandbox, never on the host."""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from kiln_builder.imageroot import ImageRoot
from kiln_builder.isolation.sandbox import (
    BASE_ENV,
    DEFAULT_POLICY,
    SandboxPolicy,
    run_in,
    services_held,
)
from kiln_common.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)


def _epoch_env(epoch: int) -> dict[str, str]:
    # Tools that stamp times (useradd's last password change, gzip, python) honour it.
    return {"SOURCE_DATE_EPOCH": str(epoch)}


async def install_packages(
    root: Path, packages: Sequence[str], epoch: int, policy: SandboxPolicy = DEFAULT_POLICY,
    repositories: bool = False,
) -> None:  # fmt: skip
    """repositories: the recipe's are configured. The package lists are then
    read even with no package to install, and any error reading them fails
    the step: apt takes a repository whose signature does not verify as a
    warning, and the build would fail later with its package "not found"."""
    if not packages and not repositories:
        return
    env = _epoch_env(epoch)
    with services_held(root):
        strict = ["--error-on=any"] if repositories else []
        await run_in(root, ["apt-get", "update", "-q", *strict], env=env, policy=policy)
        if packages:
            await run_in(
                root,
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
                env=env,
                policy=policy,
            )
        await run_in(root, ["apt-get", "clean"], env=env, policy=policy)


def _ids(tree: ImageRoot, owner: str, group: str) -> tuple[int, int]:
    """Owner and group are looked up in the IMAGE's passwd and group files."""
    users = _id_table(tree.read_text("/etc/passwd"))
    groups = _id_table(tree.read_text("/etc/group"))
    try:
        uid = int(owner) if owner.isdigit() else users[owner]
        gid = int(group) if group.isdigit() else groups[group]
    except KeyError as exc:
        raise InvalidArgument(f"files: no user or group {exc.args[0]!r} in the image") from None
    return uid, gid


def _id_table(text: str | None) -> dict[str, int]:
    table: dict[str, int] = {}
    for line in (text or "").splitlines():  # a bare filesystem may have none: numbers then
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            table[fields[0]] = int(fields[2])
    return table


def write_file(
    root: Path, path: str, data: bytes, mode: int, owner: str = "root", group: str = "root"
) -> None:
    """Writes one file of the recipe's `files` into the image. Its path is
    resolved inside the image (imageroot): a link in the image cannot lead the
    write onto the build host."""
    if PurePosixPath(path).name in ("", ".", ".."):
        raise InvalidArgument(f"files: {path} does not name a file")
    with ImageRoot(root) as tree:
        if tree.is_link(path) or tree.is_dir(path):
            raise InvalidArgument(f"files: {path} is a symlink or directory in the image")
        uid, gid = _ids(tree, owner, group)
        try:
            tree.write(path, data, mode, uid, gid)
        except (OSError, FailedPrecondition) as exc:
            raise InvalidArgument(f"files: {path} cannot be written in the image: {exc}") from None


async def run_script(
    root: Path,
    script: Path | None,
    inline: str | None,
    workdir: Path,
    epoch: int,
    policy: SandboxPolicy = DEFAULT_POLICY,
) -> None:
    """Runs a recipe script inside the image (with network, for apt or curl),
    with the interpreter its #! line names, as the kernel would."""
    if script is None:
        script = workdir / "inline-script.sh"
        script.write_text(inline or "")
    name = script.name if inline is None else "an inline script"
    command = script_command(script.read_bytes(), name)
    require_executable(root, command[0], name)
    if command[0].endswith("/env") and len(command) > 1 and not command[1].startswith("-"):
        _require_on_path(root, command[1], name)  # #!/usr/bin/env bash
    with services_held(root):
        await run_in(
            root,
            [*command, "/tmp/kiln-script"],
            ro_binds=[(script, "/tmp/kiln-script")],
            env=_epoch_env(epoch),
            policy=policy,
        )


def script_command(data: bytes, name: str) -> list[str]:
    """The interpreter and its argument from a #! line (Linux passes what
    follows the interpreter as one argument); /bin/sh -e without one."""
    first = data.split(b"\n", 1)[0]
    if not first.startswith(b"#!"):
        return ["/bin/sh", "-e"]
    interpreter, _, argument = first[2:].decode(errors="replace").strip().partition(" ")
    argument = argument.strip()
    if not interpreter.startswith("/"):
        raise InvalidArgument(
            f"run: {name}: its #! line must name an interpreter by absolute path, "
            f"not {interpreter!r}"
        )
    return [interpreter, *([argument] if argument else [])]


def require_executable(root: Path, program: str, name: str) -> None:
    """Fails with a clear message when the image has no such program (the
    kernel would only say "No such file or directory" about the script)."""
    if image_executable(root, program):
        return
    raise FailedPrecondition(
        f"run: {name} asks for {program} (its #! line), which the image does not have: "
        "add its package to packages: or change the #! line"
    )


def _require_on_path(root: Path, program: str, name: str) -> None:
    directories = BASE_ENV["PATH"].split(":")
    if not any(image_executable(root, f"{d}/{program}") for d in directories):
        raise FailedPrecondition(
            f"run: {name} asks for {program} (its #! line runs env {program}), which is on "
            "no PATH directory of the image: add its package to packages: or change the #! line"
        )


def image_executable(root: Path, path: str) -> bool:
    """Whether path, resolved inside the image (its links followed as the image
    would follow them, never out of it), is an executable regular file."""
    with ImageRoot(root) as tree:
        found = tree.stat(path)
    return found is not None and stat.S_ISREG(found.st_mode) and bool(found.st_mode & 0o111)


def _truncate_logs(tree: ImageRoot) -> None:
    if not tree.is_dir("/var/log"):
        return
    for where, _, filenames, _ in tree.walk("/var/log"):
        for name in filenames:
            path = where / name
            if not tree.is_file(path) or tree.is_link(path):
                continue
            if path.suffix in (".gz", ".xz") or name[-1:].isdigit():
                tree.unlink(path)
            else:
                tree.truncate(path)


def _clear_dir(tree: ImageRoot, path: str, keep: Sequence[str] = ()) -> None:
    if tree.is_link(path):
        return  # what a link names is not this directory
    for name in tree.listdir(path):
        if name not in keep:
            tree.rmtree(f"{path}/{name}")


def sysprep(root: Path, operations: Sequence[str]) -> list[str]:
    """Removes what must not be shared by every copy of the image. Returns the
    operations done, for the build log. Every path is resolved inside the image:
    `var/log -> /etc` in it empties the image's /etc, never the build host's."""
    unknown = [op for op in operations if op not in _SYSPREP]
    if unknown:
        raise InvalidArgument(f"sysprep: unknown operation {unknown[0]!r}")
    try:
        with ImageRoot(root) as tree:
            for op in operations:
                _SYSPREP[op](tree)
    except OSError as exc:
        raise FailedPrecondition(f"sysprep: {exc}") from None
    return list(operations)


def _ssh_host_keys(tree: ImageRoot) -> None:
    for key in tree.glob("/etc/ssh", "ssh_host_*"):
        tree.unlink(key)


def _machine_id(tree: ImageRoot) -> None:
    # Empty, not absent: systemd then treats the next boot as the first.
    tree.truncate("/etc/machine-id")
    tree.unlink("/var/lib/dbus/machine-id")


def _udev_persistent_net(tree: ImageRoot) -> None:
    tree.unlink("/etc/udev/rules.d/70-persistent-net.rules")


def _shell_history(tree: ImageRoot) -> None:
    for home in ["/root", *tree.glob("/home", "*")]:
        tree.unlink(f"{home}/.bash_history")


def _apt_lists(tree: ImageRoot) -> None:
    _clear_dir(tree, "/var/lib/apt/lists", keep=("lock", "partial", "auxfiles"))
    _clear_dir(tree, "/var/cache/apt/archives", keep=("lock", "partial"))
    for cache in tree.glob("/var/cache/apt", "*.bin"):
        tree.unlink(cache)


def _resolv_conf(tree: ImageRoot) -> None:
    if tree.is_file("/etc/resolv.conf") and not tree.is_link("/etc/resolv.conf"):
        tree.truncate("/etc/resolv.conf")


def _lock_root(tree: ImageRoot) -> None:
    found = tree.stat("/etc/shadow")
    text = tree.read_text("/etc/shadow")
    if text is None or found is None:
        return
    out = []
    for line in text.splitlines():
        fields = line.split(":")
        if fields[0] == "root" and len(fields) > 1:
            fields[1] = "*"
        out.append(":".join(fields))
    # Rewritten with the owner and mode it had (root:shadow 0640 on Debian).
    tree.write("/etc/shadow", ("\n".join(out) + "\n").encode(),
               found.st_mode & 0o7777, found.st_uid, found.st_gid)  # fmt: skip


_SYSPREP: dict[str, Callable[[ImageRoot], None]] = {
    "ssh-host-keys": _ssh_host_keys,
    "machine-id": _machine_id,
    "udev-persistent-net": _udev_persistent_net,
    "root-password": _lock_root,
    "logs": _truncate_logs,
    "shell-history": _shell_history,
    "apt-lists": _apt_lists,
    "resolv-conf": _resolv_conf,
}
