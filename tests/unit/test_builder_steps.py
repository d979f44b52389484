"""Builder steps that need no privileges: layer keys, sysprep, files, boot
configuration, partitioning and GRUB embedding (on sparse files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kiln_builder import customize, disk, layers
from kiln_builder.imageroot import ImageRoot
from kiln_builder.isolation.sandbox import sandbox_argv
from kiln_common.errors import InvalidArgument
from kiln_common.proc import run
from kiln_recipe.schema import SYSPREP_OPERATIONS


def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("etc/ssh", "etc/udev/rules.d", "var/log/apt", "var/lib/apt/lists/partial",
              "var/lib/dbus", "root", "home/alice", "boot"):  # fmt: skip
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"
    )
    (root / "etc/group").write_text("root:x:0:\nalice:x:1000:\n")
    (root / "etc/shadow").write_text("root:$6$hash:19000:0:99999:7:::\nalice:!:19000::::::\n")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("secret")
    (root / "etc/ssh/ssh_host_ed25519_key.pub").write_text("pub")
    (root / "etc/ssh/sshd_config").write_text("PermitRootLogin no\n")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "var/lib/dbus/machine-id").write_text("x")
    (root / "etc/udev/rules.d/70-persistent-net.rules").write_text("rule")
    (root / "var/log/syslog").write_text("log line")
    (root / "var/log/syslog.1").write_text("old")
    (root / "var/log/apt/history.log.1.gz").write_text("old")
    (root / "var/lib/apt/lists/mirror.example_debian_dists").write_text("list")
    (root / "root/.bash_history").write_text("ls")
    (root / "home/alice/.bash_history").write_text("ls")
    (root / "etc/resolv.conf").write_text("nameserver 10.0.0.1\n")
    (root / "boot/vmlinuz-6.1.0-9-amd64").write_text("k")
    (root / "boot/vmlinuz-6.1.0-10-amd64").write_text("k")
    return root


def test_layer_keys_chain_so_a_change_invalidates_only_later_steps() -> None:
    base = layers.chain_key("boot", "packages", ["curl"])
    assert base == layers.chain_key("boot", "packages", ["curl"])
    assert base != layers.chain_key("boot", "packages", ["curl", "vim"])
    assert base != layers.chain_key("other-bootstrap", "packages", ["curl"])
    files = layers.chain_key(base, "files", [])
    assert layers.chain_key(files, "run", ["echo hi"]) != layers.chain_key(
        files, "run", ["echo ho"]
    )


def test_sysprep_default_removes_what_copies_must_not_share(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    customize.sysprep(root, SYSPREP_OPERATIONS)
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert (root / "etc/ssh/sshd_config").exists()
    assert (root / "etc/machine-id").read_text() == ""
    assert not (root / "var/lib/dbus/machine-id").exists()
    assert not (root / "etc/udev/rules.d/70-persistent-net.rules").exists()
    assert (root / "etc/shadow").read_text().startswith("root:*:")
    assert "alice:!:" in (root / "etc/shadow").read_text()
    assert (root / "var/log/syslog").read_text() == ""
    assert not (root / "var/log/syslog.1").exists()
    assert not (root / "var/log/apt/history.log.1.gz").exists()
    assert [p.name for p in (root / "var/lib/apt/lists").iterdir()] == ["partial"]
    assert not (root / "root/.bash_history").exists()
    assert not (root / "home/alice/.bash_history").exists()
    assert (root / "etc/resolv.conf").read_text() == ""


def test_sysprep_refuses_an_unknown_operation(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="unknown operation"):
        customize.sysprep(fake_root(tmp_path), ["format-c"])


def test_files_get_mode_and_owner_from_the_image_and_cannot_escape(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    customize.write_file(root, "/var/www/html/cloud.txt", b"Cloudy\n", 0o640, "alice", "alice")
    written = root / "var/www/html/cloud.txt"
    assert written.read_bytes() == b"Cloudy\n"
    assert oct(written.stat().st_mode & 0o777) == "0o640"
    assert (written.stat().st_uid, written.stat().st_gid) == (1000, 1000)
    host = tmp_path / "host"  # a directory of the build host's, outside the image
    host.mkdir()
    (root / "etc/evil").symlink_to(host)
    customize.write_file(root, "/etc/evil/passwd", b"x", 0o644)  # the link leads inside
    assert list(host.iterdir()) == []  # the link was followed inside the image only
    assert (root / str(host).lstrip("/") / "passwd").read_bytes() == b"x"
    with pytest.raises(InvalidArgument, match="symlink or directory"):
        customize.write_file(root, "/etc/evil", b"x", 0o644)
    with pytest.raises(InvalidArgument, match="no user or group"):
        customize.write_file(root, "/etc/x", b"x", 0o644, "mallory")


def test_boot_configuration_names_the_root_by_uuid_with_a_serial_console(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    version = disk.configure_boot(ImageRoot(root), fs_type="ext4", fs_uuid="u-u-i-d", title="t 1",
                                  partitioning="gpt")  # fmt: skip
    assert version == "6.1.0-10-amd64"  # the newest kernel, compared numerically
    (root / "boot/vmlinuz-9.9.9-planted").symlink_to("/nowhere")  # a name, no kernel
    (root / "boot/vmlinuz-9.9.10-dir").mkdir()
    assert disk._kernel(ImageRoot(root)) == "6.1.0-10-amd64"
    assert (root / "etc/fstab").read_text() == "UUID=u-u-i-d / ext4 defaults 0 1\n"
    grub = (root / "boot/grub/grub.cfg").read_text()
    assert "root=UUID=u-u-i-d" in grub and "console=ttyS0,115200n8" in grub
    assert "insmod part_gpt" in grub
    assert "Name=en* eth*" in (root / "etc/systemd/network/80-kiln-dhcp.network").read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert {p.name for p in wants.iterdir()} == {
        "systemd-networkd.service", "kiln-growroot.service", "kiln-ssh-host-keys.service"
    }  # fmt: skip


@pytest.mark.parametrize("partitioning", ["gpt", "mbr"])
async def test_partitions_are_deterministic_and_grub_is_embedded(
    tmp_path: Path, partitioning: str
) -> None:
    image = tmp_path / "disk.raw"
    layout = await disk.partition(image, 64 * disk.MiB, partitioning, "seed")
    first = image.read_bytes()[: 34 * 512]
    again = await disk.partition(tmp_path / "again.raw", 64 * disk.MiB, partitioning, "seed")
    assert layout == again and (tmp_path / "again.raw").read_bytes()[: 34 * 512] == first
    table = json.loads((await run(["sfdisk", "--json", image])).stdout)["partitiontable"]
    assert table["label"] == ("gpt" if partitioning == "gpt" else "dos")
    assert layout.root_offset == (4096 if partitioning == "gpt" else 2048) * 512

    await disk.install_grub(image, layout, "ext4", "u-u-i-d", tmp_path)
    data = image.read_bytes()
    embed = 2048 if partitioning == "gpt" else 1
    assert int.from_bytes(data[0x5C:0x64], "little") == embed
    assert data[0x1FE:0x200] == b"\x55\xaa"
    core = data[embed * 512 : (embed + 1) * 512]
    assert int.from_bytes(core[500:508], "little") == embed + 1
    # The partition table survived sector 0 being rewritten.
    after = json.loads((await run(["sfdisk", "--json", image])).stdout)["partitiontable"]
    assert after == table


def test_the_sandbox_never_runs_against_the_host_root(tmp_path: Path) -> None:
    argv = sandbox_argv(tmp_path, ["apt-get", "update"])
    assert argv[:4] == ["bwrap", "--bind", str(tmp_path), "/"]
    assert "--unshare-net" in argv and "--die-with-parent" in argv
    assert argv[-3:] == ["--", "apt-get", "update"]


def test_the_layer_cache_is_pruned_least_recently_used_first(tmp_path: Path) -> None:
    import os

    store = layers.LayerStore(tmp_path / "layers")
    for age, name in enumerate(["newest", "middle", "oldest"]):
        layer = store.path(name, "k")
        layer.write_bytes(b"x" * 1000)
        store._sidecar(name, "k").write_text("sum\n")
        os.utime(layer, (1_000_000 - age * 100, 1_000_000 - age * 100))
    removed = store.prune(2000)
    assert [p.name for p in removed] == ["oldest-k.tar.zst"]
    assert not store._sidecar("oldest", "k").exists()
    assert store.path("newest", "k").exists() and store.path("middle", "k").exists()


def test_sysprep_follows_the_images_links_inside_the_image(tmp_path: Path) -> None:
    """`var/log -> /etc` in an image must empty the image's /etc, never the host's."""
    root = fake_root(tmp_path)
    host = tmp_path / "host-etc"
    host.mkdir()
    (host / "shadow").write_text("root:$6$secret:19000::::::\n")
    shutil.rmtree(root / "var/log", ignore_errors=True)
    (root / "var/log").symlink_to(host)
    (root / "etc/ssh").mkdir(exist_ok=True)
    (root / "etc/ssh").rename(root / "etc/ssh-real")
    (root / "etc/ssh").symlink_to(host)
    customize.sysprep(root, ["logs", "ssh-host-keys", "root-password"])
    assert (host / "shadow").read_text() == "root:$6$secret:19000::::::\n"


def test_test_commands_cannot_be_skipped_with_the_boot_test(tmp_path: Path) -> None:
    import asyncio

    from kiln_builder.engine import Bake, BakeOptions
    from kiln_common.errors import FailedPrecondition
    from kiln_recipe.loader import parse_recipe

    text = 'name: a\nversion: "1"\nfrom:\n  bootstrap: {distro: debian, release: bookworm}\n'
    recipe = parse_recipe(text + 'test:\n  commands: ["true"]\n', tmp_path)
    options = BakeOptions(out_dir=tmp_path / "o", work_root=tmp_path / "w",
                          cache_dir=tmp_path / "c", build_id="b", boot_test=False)  # fmt: skip
    with pytest.raises(FailedPrecondition, match=r"test\.commands run in the boot test"):
        asyncio.run(Bake(recipe, options).run())
    assert not (tmp_path / "w").exists()  # refused before any work


def test_a_failed_step_records_the_time_it_took(tmp_path: Path) -> None:
    import asyncio

    from kiln_builder.engine import Bake, BakeOptions
    from kiln_common.errors import FailedPrecondition
    from kiln_recipe.loader import parse_recipe

    text = 'name: a\nversion: "1"\nfrom:\n  bootstrap: {distro: debian, release: bookworm}\n'
    options = BakeOptions(out_dir=tmp_path / "o", work_root=tmp_path / "w",
                          cache_dir=tmp_path / "c", build_id="b")  # fmt: skip
    bake = Bake(parse_recipe(text, tmp_path), options)

    async def boot_that_fails() -> None:
        async with bake.step("boot-test"):
            await asyncio.sleep(0.2)
            raise FailedPrecondition("no login prompt")

    with pytest.raises(FailedPrecondition):
        asyncio.run(boot_that_fails())
    (record,) = bake.steps
    assert record.name == "boot-test" and record.seconds >= 0.2
