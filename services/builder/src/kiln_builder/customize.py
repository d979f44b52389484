"""Customisation steps on an image's root filesystem (a directory): packages,
files, scripts and sysprep. Commands run in the sandbox, never on the host."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from kiln_builder.inroot import in_root
from kiln_builder.sandbox import BASE_ENV, DEFAULT_POLICY, SandboxPolicy, run_in, services_held
from kiln_common.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)


def _epoch_env(epoch: int) -> dict[str, str]:
    # Tools that stamp times (useradd's last password change, gzip, python) honour it.
    return {"SOURCE_DATE_EPOCH": str(epoch)}


async def install_packages(
    root: Path, packages: Sequence[str], epoch: int, policy: SandboxPolicy = DEFAULT_POLICY
) -> None:
    if not packages:
        return
    env = _epoch_env(epoch)
    with services_held(root):
        await run_in(root, ["apt-get", "update", "-q"], env=env, policy=policy)
        await run_in(
            root,
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            env=env,
            policy=policy,
        )
        await run_in(root, ["apt-get", "clean"], env=env, policy=policy)


def _inside(root: Path, path: str) -> Path:
    """The host path of an absolute image path, refusing any way out of root
    (.. or a symlink in the image pointing elsewhere)."""
    relative = PurePosixPath(path).relative_to("/")
    target = root.joinpath(*relative.parts)
    parent = target.parent.resolve()
    if not parent.is_relative_to(root.resolve()):
        raise InvalidArgument(f"files: {path} leads outside the image")
    return target


def _ids(root: Path, owner: str, group: str) -> tuple[int, int]:
    """Owner and group are looked up in the IMAGE's passwd and group files."""
    users = _id_table(root / "etc/passwd")
    groups = _id_table(root / "etc/group")
    try:
        uid = int(owner) if owner.isdigit() else users[owner]
        gid = int(group) if group.isdigit() else groups[group]
    except KeyError as exc:
        raise InvalidArgument(f"files: no user or group {exc.args[0]!r} in the image") from None
    return uid, gid


def _id_table(path: Path) -> dict[str, int]:
    table: dict[str, int] = {}
    if not path.is_file():  # a bare filesystem may have none: only numbers then
        return table
    for line in path.read_text(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            table[fields[0]] = int(fields[2])
    return table


def write_file(
    root: Path, path: str, data: bytes, mode: int, owner: str = "root", group: str = "root"
) -> None:
    """Writes one file of the recipe's `files` into the image (chrooted: a
    symlink in the image cannot lead the write onto the build host)."""
    try:
        in_root(root, _write_file, path, data, mode, owner, group)
    except OSError as exc:
        raise InvalidArgument(f"files: {path} cannot be written in the image: {exc}") from None


def _write_file(
    root: Path, path: str, data: bytes, mode: int, owner: str = "root", group: str = "root"
) -> None:
    target = _inside(root, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.is_dir():
        raise InvalidArgument(f"files: {path} is a symlink or directory in the image")
    tmp = target.with_name(f".{target.name}.kiln-tmp")
    tmp.write_bytes(data)
    uid, gid = _ids(root, owner, group)
    os.chown(tmp, uid, gid)
    os.chmod(tmp, mode)
    tmp.replace(target)


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
    """Whether path, resolved inside the image (its symlinks followed as the
    image would follow them, never out of root), is an executable file."""
    found = _resolve_in(root, path)
    return found is not None and found.is_file() and os.access(found, os.X_OK)


def _resolve_in(root: Path, path: str, hops: int = 40) -> Path | None:
    parts = list(PurePosixPath(path).parts[1:])
    current = root
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops -= 1
            if hops < 0:
                return None
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                current = root
                parts = list(target.parts[1:]) + parts
            else:
                parts = list(target.parts) + parts
            continue
        if not candidate.exists():
            return None
        current = candidate
    return current


def _truncate_logs(root: Path) -> None:
    for path in (root / "var/log").rglob("*"):
        if path.is_file() and not path.is_symlink():
            if path.suffix in (".gz", ".xz") or path.name[-1:].isdigit():
                path.unlink()
            else:
                path.write_bytes(b"")


def _clear_dir(path: Path, keep: Sequence[str] = ()) -> None:
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.name in keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def sysprep(root: Path, operations: Sequence[str]) -> list[str]:
    """Removes what must not be shared by every copy of the image. Returns the
    operations done, for the build log. Chrooted: `var/log -> /etc` in the image
    empties the image's /etc, never the build host's."""
    try:
        return in_root(root, _sysprep, operations)
    except OSError as exc:
        raise FailedPrecondition(f"sysprep: {exc}") from None


def _sysprep(root: Path, operations: Sequence[str]) -> list[str]:
    for op in operations:
        if op == "ssh-host-keys":
            for key in (root / "etc/ssh").glob("ssh_host_*"):
                key.unlink()
        elif op == "machine-id":
            # Empty, not absent: systemd then treats the next boot as the first.
            if (root / "etc/machine-id").exists():
                (root / "etc/machine-id").write_text("")
            (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
        elif op == "udev-persistent-net":
            (root / "etc/udev/rules.d/70-persistent-net.rules").unlink(missing_ok=True)
        elif op == "root-password":
            _lock_root(root / "etc/shadow")
        elif op == "logs":
            _truncate_logs(root)
        elif op == "shell-history":
            for history in [root / "root", *(root / "home").glob("*")]:
                (history / ".bash_history").unlink(missing_ok=True)
        elif op == "apt-lists":
            _clear_dir(root / "var/lib/apt/lists", keep=("lock", "partial", "auxfiles"))
            _clear_dir(root / "var/cache/apt/archives", keep=("lock", "partial"))
            for cache in (root / "var/cache/apt").glob("*.bin"):
                cache.unlink()
        elif op == "resolv-conf":
            resolv = root / "etc/resolv.conf"
            if resolv.is_file() and not resolv.is_symlink():
                resolv.write_text("")
        else:
            raise InvalidArgument(f"sysprep: unknown operation {op!r}")
    return list(operations)


def _lock_root(shadow: Path) -> None:
    lines = shadow.read_text().splitlines()
    out = []
    for line in lines:
        fields = line.split(":")
        if fields[0] == "root" and len(fields) > 1:
            fields[1] = "*"
        out.append(":".join(fields))
    shadow.write_text("\n".join(out) + "\n")
