"""A recipe's extra apt repositories, configured in the image's tree for its
packages step: one deb822 sources file naming each repository's URIs, suites
and components, and each repository's key as its own keyring file, named by
`Signed-By`, so a key vouches for its repository only (not, as a key in
trusted.gpg.d would, for every repository the image has). Written through
ImageRoot: a link planted in the image cannot lead the writes onto the host.
The image keeps them: its own apt updates come from the same repositories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln_builder.imageroot import ImageRoot
from kiln_common.digests import file_sha256
from kiln_recipe.schema import Recipe, Repository

SOURCES = "/etc/apt/sources.list.d/kiln-recipe.sources"
KEYRINGS = "/etc/apt/keyrings"
ARMOURED = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"


def keyring_path(index: int, key: bytes) -> str:
    """apt reads an ASCII-armoured keyring only by the .asc name, a binary one as .gpg."""
    armoured = key.lstrip().startswith(ARMOURED)
    return f"{KEYRINGS}/kiln-recipe-{index}.{'asc' if armoured else 'gpg'}"


def sources(repos: list[Repository], keyrings: list[str]) -> str:
    stanzas = [
        f"Types: deb\nURIs: {repo.uri}/\nSuites: {' '.join(repo.suites)}\n"
        f"Components: {' '.join(repo.components)}\nSigned-By: {keyring}\n"
        for repo, keyring in zip(repos, keyrings, strict=True)
    ]
    return "# The recipe's repositories (Kiln)\n\n" + "\n".join(stanzas)


def described(recipe: Recipe) -> list[dict[str, Any]]:
    """The repositories as a layer key takes them: each with its key's SHA-256."""
    return [
        {**repo.model_dump(mode="json"), "key": file_sha256(recipe.base_dir / repo.key)}
        for repo in recipe.repositories
    ]


def configure(root: Path, recipe: Recipe) -> None:
    """Writes the recipe's repositories and keys into the tree (nothing if none)."""
    if not recipe.repositories:
        return
    keys = [(recipe.base_dir / repo.key).read_bytes() for repo in recipe.repositories]
    keyrings = [keyring_path(index, key) for index, key in enumerate(keys, 1)]
    with ImageRoot(root) as tree:
        tree.makedirs(KEYRINGS)
        tree.makedirs("/etc/apt/sources.list.d")
        for keyring, key in zip(keyrings, keys, strict=True):
            tree.write(keyring, key, 0o644)
        tree.write(SOURCES, sources(recipe.repositories, keyrings).encode(), 0o644)
