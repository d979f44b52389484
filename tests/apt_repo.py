"""A signed apt repository of the tests' own, on disk, for a loopback HTTP
server (support.ImageServer) to serve: packages made with dpkg-deb, indexes
with apt-ftparchive, InRelease signed with a key of its own (gpg, in a
keyring under the repository's directory, never the user's)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ARCH = "amd64"


class AptRepo:
    def __init__(self, root: Path, suite: str = "stable", component: str = "main") -> None:
        self.root = root
        self.suite = suite
        self.component = component
        self.gnupg = root.parent / f"{root.name}-gnupg"
        self.gnupg.mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / "pool").mkdir(parents=True, exist_ok=True)
        who = "Kiln test repo <repo@kiln.test>"
        self._gpg("--batch", "--passphrase", "", "--quick-gen-key", who, "ed25519", "sign", "never")
        self.key = root / "key.asc"  # what a recipe's signed-by names
        self.key.write_bytes(self._gpg("--armor", "--export"))
        self.publish()

    @property
    def dists(self) -> Path:
        return self.root / "dists" / self.suite

    def _gpg(self, *args: str) -> bytes:
        env = {**os.environ, "GNUPGHOME": str(self.gnupg)}
        done = subprocess.run(["gpg", "--quiet", *args], env=env, capture_output=True, check=True)
        return done.stdout

    def add(self, package: str, version: str, files: dict[str, str] | None = None) -> Path:
        """A package of that version holding files (path -> text), and the
        indexes published again."""
        tree = self.root.parent / f"{package}_{version}"
        (tree / "DEBIAN").mkdir(parents=True, exist_ok=True)
        (tree / "DEBIAN" / "control").write_text(
            f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
            "Maintainer: Kiln tests <repo@kiln.test>\nDescription: a Kiln test package\n"
        )
        for path, text in (files or {f"/usr/share/{package}/version": version + "\n"}).items():
            target = tree / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        deb = self.root / "pool" / f"{package}_{version}_all.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "--build", tree, deb],
                       capture_output=True, check=True)  # fmt: skip
        self.publish()
        return deb

    def publish(self) -> None:
        binary = self.dists / self.component / f"binary-{ARCH}"
        binary.mkdir(parents=True, exist_ok=True)
        packages = subprocess.run(["apt-ftparchive", "packages", "pool"], cwd=self.root,
                                  capture_output=True, check=True).stdout  # fmt: skip
        (binary / "Packages").write_bytes(packages)
        (self.dists / "Release").unlink(missing_ok=True)
        release = subprocess.run(
            ["apt-ftparchive", "-o", f"APT::FTPArchive::Release::Suite={self.suite}",
             "-o", f"APT::FTPArchive::Release::Codename={self.suite}",
             "-o", f"APT::FTPArchive::Release::Architectures={ARCH}",
             "-o", f"APT::FTPArchive::Release::Components={self.component}",
             "release", str(self.dists)],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        (self.dists / "Release").write_bytes(release)
        signed = self._gpg("--batch", "--clearsign", "--output", "-", str(self.dists / "Release"))
        (self.dists / "InRelease").write_bytes(signed)
