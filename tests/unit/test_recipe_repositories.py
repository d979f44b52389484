"""The recipe's `repositories:`: what is accepted and refused (each refusal
naming the field), how they enter the digest and the submission, and the
apt sources file the packages step writes from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln_builder import apt_repos
from kiln_builder.fingerprint import apt_sources
from kiln_recipe import RecipeError, parse_recipe
from kiln_recipe.submission import recipe_source

HEAD = """\
name: repos
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm, mirror: "http://mirror.test/debian"}
"""
# ...and of a recipe customising a pinned URL, before a base could follow its release.
DIGEST_OF_A_PINNED_BASE = "0614abf123e93f06e385696e76383870c4db1798f8bed172b1f544ef3084ff71"
DIGEST_BEFORE_REPOSITORIES = "1e4198ddd8ef7319bfb891d640b290528627bda4794f618931b9ad9f38680de6"


def recipe_dir(tmp_path: Path, key: bytes = b"-----BEGIN PGP PUBLIC KEY BLOCK-----\nx\n") -> Path:
    (tmp_path / "keys").mkdir(exist_ok=True)
    (tmp_path / "keys/repo.asc").write_bytes(key)
    return tmp_path


def with_repos(text: str, tmp_path: Path) -> str:
    recipe = HEAD + text
    (tmp_path / "recipe.yaml").write_text(recipe)
    return recipe


def test_a_repository_with_its_key_is_accepted_and_sent_with_the_recipe(tmp_path: Path) -> None:
    where = recipe_dir(tmp_path)
    text = with_repos(
        "repositories:\n  - {uri: 'http://apt.test/tools/', suites: [bookworm, bookworm-extra],"
        " key: keys/repo.asc}\n",
        where,
    )
    recipe = parse_recipe(text, where)
    repo = recipe.repositories[0]
    assert (repo.uri, repo.suites, repo.components) == (
        "http://apt.test/tools",
        ["bookworm", "bookworm-extra"],
        ["main"],
    )
    assert [s.part for s in apt_sources(recipe)] == [
        "apt http://mirror.test/debian bookworm",
        "apt http://apt.test/tools bookworm",
        "apt http://apt.test/tools bookworm-extra",
    ]
    _, source = recipe_source(where / "recipe.yaml")
    assert source.files == {"keys/repo.asc": (where / "keys/repo.asc").read_bytes()}


def test_the_key_is_in_the_digest_and_a_recipe_without_repositories_keeps_its_digest(
    tmp_path: Path,
) -> None:
    where = recipe_dir(tmp_path)
    text = with_repos(
        "repositories:\n  - {uri: 'http://apt.test/x', suites: [s], key: keys/repo.asc}\n", where
    )
    before = parse_recipe(text, where).digest()
    recipe_dir(tmp_path, b"another key")
    assert parse_recipe(text, where).digest() != before
    # The digest this recipe had before recipes could name repositories: the
    # layer keys and result cache entries of every existing recipe stay valid.
    assert parse_recipe(HEAD, where).digest() == DIGEST_BEFORE_REPOSITORIES
    pinned = (
        'name: img\nversion: "1.0"\nfrom:\n  image: {url: "https://cloud.test/d.qcow2", '
        f'sha256: "{"a" * 64}"}}\n'
    )
    assert parse_recipe(pinned, where).digest() == DIGEST_OF_A_PINNED_BASE


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        ("{uri: 'ftp://apt.test/x', suites: [s], key: keys/repo.asc}", "uri", "http"),
        ("{uri: 'http://apt.test/x?a=b', suites: [s], key: keys/repo.asc}", "uri", "query"),
        ('{uri: "http://apt.test/x\\nURIs: http://evil.test", suites: [s], key: keys/repo.asc}',
         "uri", "control"),
        ("{uri: 'http://apt.test/x', suites: [], key: keys/repo.asc}", "suites", "1 to 8 suites"),
        ("{uri: 'http://apt.test/x', suites: [a,b,c,d,e,f,g,h,i], key: keys/repo.asc}", "suites",
         "1 to 8 suites"),
        ("{uri: 'http://apt.test/x', suites: ['a b'], key: keys/repo.asc}", "suites", "suite"),
        ("{uri: 'http://apt.test/x', suites: [../x], key: keys/repo.asc}", "suites", "suite"),
        ("{uri: 'http://apt.test/x', suites: [s], components: [Main!], key: keys/repo.asc}",
         "components", "component"),
        ("{uri: 'http://apt.test/x', suites: [s]}", "key", "required"),
        ("{uri: 'http://apt.test/x', suites: [s], key: /etc/apt/trusted.gpg}", "key", "relative"),
        ("{uri: 'http://apt.test/x', suites: [s], key: ../outside.asc}", "key", "outside"),
    ],
)  # fmt: skip
def test_a_bad_repository_is_refused_naming_its_field(
    tmp_path: Path, entry: str, field: str, words: str
) -> None:
    where = recipe_dir(tmp_path)
    with pytest.raises(RecipeError) as refused:
        parse_recipe(with_repos(f"repositories:\n  - {entry}\n", where), where)
    issue = refused.value.issues[0]
    assert issue.path.startswith(f"repositories[0].{field}"), issue
    assert words in issue.message


def test_the_sources_file_names_each_repository_with_its_own_keyring(tmp_path: Path) -> None:
    where = recipe_dir(tmp_path)
    (where / "keys/bin.gpg").write_bytes(b"\x99\x01binary key")
    text = with_repos(
        "repositories:\n"
        "  - {uri: 'https://a.test/apt', suites: [one, two], components: [main, extra],"
        " key: keys/repo.asc}\n"
        "  - {uri: 'http://b.test/apt', suites: [three], key: keys/bin.gpg}\n",
        where,
    )
    recipe = parse_recipe(text, where)
    root = tmp_path / "root"
    (root / "etc/apt").mkdir(parents=True)
    apt_repos.configure(root, recipe)
    written = (root / "etc/apt/sources.list.d/kiln-recipe.sources").read_text()
    assert written.split("\n\n", 1)[1] == (
        "Types: deb\nURIs: https://a.test/apt/\nSuites: one two\nComponents: main extra\n"
        "Signed-By: /etc/apt/keyrings/kiln-recipe-1.asc\n\n"
        "Types: deb\nURIs: http://b.test/apt/\nSuites: three\nComponents: main\n"
        "Signed-By: /etc/apt/keyrings/kiln-recipe-2.gpg\n"
    )
    assert (root / "etc/apt/keyrings/kiln-recipe-2.gpg").read_bytes() == b"\x99\x01binary key"


def test_a_recipe_with_repositories_is_refused_in_vm_isolation(tmp_path: Path) -> None:
    from kiln_builder.engine import Bake, BakeOptions
    from kiln_common.errors import FailedPrecondition

    where = recipe_dir(tmp_path)
    text = with_repos(
        "repositories:\n  - {uri: 'http://apt.test/x', suites: [s], key: keys/repo.asc}\n"
        "packages: [tool]\nisolation: vm\n",
        where,
    )
    options = BakeOptions(tmp_path / "o", tmp_path / "w", tmp_path / "c", "b")
    with pytest.raises(FailedPrecondition, match="sandbox isolation only"):
        Bake(parse_recipe(text, where), options)._refuse_early()


# ---- from.image.checksums: a base that follows its release -----------------------------------

BASE = """\
name: follows
version: "1.0"
from:
  image: IMAGE
outputs: [qcow2]
"""


@pytest.mark.parametrize(
    ("image", "words"),
    [
        ("{url: 'https://cloud.test/d.qcow2'}", "give one with url"),
        ("{url: 'https://cloud.test/d.qcow2', sha256: " + "a" * 64 + ", checksums: "
         "'https://cloud.test/SHA512SUMS'}", "give one with url"),
        ("{artifact: 01m977rgacr941tmd098h65w8t, checksums: 'https://cloud.test/S'}",
         "only for url"),
        ("{url: 'https://cloud.test/d.qcow2', checksums: 'file:///etc/shadow'}", "http"),
    ],
)  # fmt: skip
def test_a_base_url_takes_a_sha256_or_its_releases_checksum_file(
    tmp_path: Path, image: str, words: str
) -> None:
    with pytest.raises(RecipeError) as refused:
        parse_recipe(BASE.replace("IMAGE", image), tmp_path)
    assert words in str(refused.value)
    ok = "{url: 'https://cloud.test/d.qcow2', checksums: 'https://cloud.test/SHA512SUMS'}"
    assert parse_recipe(BASE.replace("IMAGE", ok), tmp_path).from_.image.checksums  # type: ignore[union-attr]


def test_a_checksum_file_lists_digests_in_gnu_binary_and_bsd_styles() -> None:
    from kiln_builder.base import checksums

    a, b, c = "a" * 64, "B" * 128, "c" * 128
    text = f"{a}  one.qcow2\n{b} *two.raw\nSHA512 (three.img) = {c}\nnot a line\n{a}  ./four\n"
    assert checksums.listed(text) == {
        "one.qcow2": f"sha256:{a}", "two.raw": f"sha512:{b.lower()}",
        "three.img": f"sha512:{c}", "four": f"sha256:{a}",
    }  # fmt: skip
    assert checksums.file_name("https://x.test/a/debian%2012.qcow2?x") == "debian 12.qcow2"
    assert (
        checksums.pin_of(f"sha512:{c}").sha512 == c and not checksums.pin_of(f"sha512:{c}").sha256
    )
    assert checksums.pin_of(f"sha256:{a}").sha256 == a
