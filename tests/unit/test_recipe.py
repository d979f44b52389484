"""The recipe schema and loader, the package map, and `kiln recipe check`."""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from support import REPO

from kiln_builder.pkgmap import PkgMapError, map_packages, parse_pkgmap, pkgmap
from kiln_cli.recipe_cmd import add_recipe_parser
from kiln_common.errors import InvalidArgument
from kiln_recipe import Recipe, RecipeError, RecipeIssue, load_recipe, parse_recipe
from kiln_recipe import schema as r
from kiln_recipe.schema import GiB, MiB, parse_seconds, parse_size

RECIPES = REPO / "tests/data/recipes"
DOCS = REPO / "docs/recipe.md"
# A valid head: tests append the fields they exercise (lines 1-4).
UUID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
HEAD = 'name: web\nversion: "1"\nfrom:\n  bootstrap: {distro: debian, release: bookworm}\n'


def issues(text: str, base_dir: Path = RECIPES) -> list[RecipeIssue]:
    with pytest.raises(RecipeError) as caught:
        parse_recipe(text, base_dir)
    return caught.value.issues


def issue(text: str, base_dir: Path = RECIPES) -> RecipeIssue:
    found = issues(text, base_dir)
    assert len(found) == 1, found
    return found[0]


def parse(text: str, base_dir: Path = RECIPES) -> Recipe:
    return parse_recipe(text, base_dir)


# --- valid recipes ------------------------------------------------------------------------


def test_minimal_recipe_loads_with_the_documented_defaults() -> None:
    recipe = load_recipe(RECIPES / "minimal.yaml")
    assert (recipe.name, recipe.version) == ("minimal", "1")
    assert recipe.from_.bootstrap is not None and recipe.from_.image is None
    assert recipe.from_.bootstrap.arch == "amd64" and recipe.from_.bootstrap.mirror is None
    assert recipe.disk.size == 2 * GiB and recipe.disk.filesystem == "ext4"
    assert (recipe.disk.partitioning, recipe.disk.boot) == ("gpt", "bios")
    assert [o.name for o in recipe.outputs] == ["qcow2"]
    assert recipe.sysprep == "default" and recipe.sysprep_operations() == r.SYSPREP_OPERATIONS
    assert recipe.test.boot is not None and recipe.test.boot.timeout == 300
    assert (recipe.packages, recipe.files, recipe.run, recipe.checks) == ([], [], [], [])
    assert not recipe.publish.targets and recipe.keep_workspace is False


def test_full_example_from_the_brief_loads() -> None:
    recipe = load_recipe(RECIPES / "full.yaml")
    assert recipe.version == "1.2.0"
    assert recipe.base_dir == RECIPES
    assert recipe.disk.size == 4 * GiB
    assert [o.name for o in recipe.outputs] == ["qcow2", "raw.xz", "ext3.bz2", "tar.zst"]
    assert recipe.files[1].source == "files/motd" and recipe.run[0].script == "setup.sh"
    assert recipe.checks == ["tycoon", "stratuslab"]
    assert recipe.test.boot is not None and recipe.test.boot.timeout == 300
    assert [t.cloud for t in recipe.publish.glance] == ["nectar"]


def _doc_recipes() -> list[str]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    return [b for b in blocks if b.startswith("name:")]


def test_the_docs_have_complete_recipe_examples() -> None:
    assert len(_doc_recipes()) >= 4


@pytest.mark.parametrize("text", _doc_recipes())
def test_every_complete_recipe_in_the_docs_is_valid(text: str) -> None:
    parse(text)


def _fields(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def test_the_docs_name_every_field() -> None:
    text = DOCS.read_text()
    models: list[type[BaseModel]] = [
        r.Recipe,
        r.Bootstrap,
        r.ImageRef,
        r.GlanceRef,
        r.FileSpec,
        r.RunStep,
        r.Disk,
    ]
    models += [r.OutputSpec, r.BootTest, r.TestSpec]
    models += [r.Publish, r.GlancePublish, r.MarketplacePublish]
    missing = [f for m in models for f in _fields(m) if f"`{f}`" not in text]
    values = [*r.SYSPREP_OPERATIONS, *r.FORMATS, *r.COMPRESSIONS, "tycoon", "stratuslab", "cloud"]
    missing += [v for v in values if f"`{v}`" not in text]
    assert not missing, f"docs/recipe.md does not mention: {missing}"


def test_a_recipe_round_trips_through_its_dump() -> None:
    recipe = load_recipe(RECIPES / "full.yaml")
    data = recipe.model_dump(by_alias=True)
    again = Recipe.model_validate(data, context={"base_dir": RECIPES})
    assert again == recipe and again.digest() == recipe.digest()


def test_a_recipe_can_be_built_in_python() -> None:
    recipe = Recipe(
        name="py",
        version="1",
        from_=r.From(bootstrap=r.Bootstrap(distro="debian", release="trixie")),
        disk=r.Disk(size="1GiB"),  # parsed, as in YAML
    )
    assert recipe.disk.size == GiB and recipe.base_dir == Path.cwd()


def test_recipes_are_frozen() -> None:
    recipe = load_recipe(RECIPES / "minimal.yaml")
    with pytest.raises(ValidationError):
        recipe.name = "other"  # type: ignore[misc]


def test_anchors_and_merge_keys_work() -> None:
    recipe = parse(
        HEAD + "files:\n  - &f {path: /a, content: x, mode: '0600'}\n  - {<<: *f, path: /b}\n"
    )
    assert [(f.path, f.mode) for f in recipe.files] == [("/a", "0600"), ("/b", "0600")]


# --- where errors point -------------------------------------------------------------------


def test_an_unknown_field_is_named_with_a_suggestion() -> None:
    found = issue(HEAD + "pakages: [curl]\n")
    assert found == RecipeIssue("pakages", 5, "unknown field 'pakages' (did you mean 'packages'?)")


def test_an_unknown_nested_field_lists_the_known_ones() -> None:
    found = issue(HEAD + "disk:\n  size: 4GiB\n  color: red\n")
    assert (found.path, found.line) == ("disk.color", 7)
    assert "unknown field 'color'" in found.message and "filesystem" in found.message


def test_the_python_name_from_underscore_is_not_a_yaml_key() -> None:
    text = 'name: a\nversion: "1"\nfrom_: {bootstrap: {distro: debian, release: bookworm}}\n'
    assert ("from_", 3) in [(i.path, i.line) for i in issues(text)]


def test_a_missing_field_points_at_its_parent_mapping() -> None:
    text = 'name: a\nversion: "1"\nfrom:\n  bootstrap:\n    distro: debian\n'
    assert issue(text) == RecipeIssue("from.bootstrap.release", 4, "required, but missing")


def test_a_missing_top_level_field_points_at_the_document() -> None:
    text = '# a comment\nname: a\nversion: "1"\n'
    assert issue(text) == RecipeIssue("from", 2, "required, but missing")


def test_a_wrong_type_names_the_path_and_line() -> None:
    found = issue(HEAD + "files:\n  - {path: /a, content: x}\n  - {path: /b, content: [1]}\n")
    assert (found.path, found.line) == ("files[1].content", 7)
    assert found.message == "expected a string, got a list"


def test_a_number_where_a_string_belongs_says_to_quote_it() -> None:
    found = issue(HEAD + "packages: [curl, 7]\n")
    assert (found.path, found.line) == ("packages[1]", 5)
    assert "got the number 7 (put it in quotes)" in found.message


def test_a_choice_error_lists_the_choices() -> None:
    found = issue(HEAD + "disk: {size: 4GiB, filesystem: btrfs}\n")
    assert found == RecipeIssue(
        "disk.filesystem", 5, "must be 'ext4', 'ext3' or 'xfs', not 'btrfs'"
    )


def test_a_block_value_error_points_at_its_own_line() -> None:
    text = HEAD + "test:\n  boot:\n    timeout: 1s\n"
    assert (issue(text).path, issue(text).line) == ("test.boot.timeout", 7)


def test_every_problem_is_reported_at_once() -> None:
    text = 'name: Web\nversion: "1"\nfrom: {bootstrap: {distro: arch, release: x}}\n'
    text += "disk: {size: 1}\noutputs: [png]\nchecks: [nope]\n"
    found = [(i.line, i.path) for i in issues(text)]
    assert found == [
        (1, "name"),
        (3, "from.bootstrap.distro"),
        (4, "disk.size"),
        (5, "outputs[0]"),
        (6, "checks[0]"),
    ]


def test_the_error_lists_line_path_and_message_one_per_line() -> None:
    with pytest.raises(RecipeError) as caught:
        parse_recipe(HEAD + "disk: {size: 1}\nkeep_workspace: maybe\n", RECIPES)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("5: disk.size: ")
    assert lines[1] == "6: keep_workspace: expected true or false, got 'maybe'"


def test_a_recipe_error_is_an_invalid_argument() -> None:
    assert issubclass(RecipeError, InvalidArgument)


# --- the YAML document --------------------------------------------------------------------


def test_a_duplicate_key_is_named_with_both_lines() -> None:
    text = HEAD + "packages: [curl]\npackages: [vim]\n"
    assert issue(text) == RecipeIssue("packages", 6, "duplicate key 'packages' (first on line 5)")


def test_a_nested_duplicate_key_is_found() -> None:
    text = HEAD + "disk:\n  size: 4GiB\n  size: 8GiB\n"
    assert (issue(text).path, issue(text).line) == ("disk.size", 7)


def test_a_yaml_syntax_error_has_its_line() -> None:
    found = issue('name: a\nversion: "1"\npackages: [curl\nfrom: x\n')
    assert found.line == 4 and found.message.startswith("invalid YAML: ")


def test_a_bad_indent_is_a_syntax_error() -> None:
    found = issue("name: a\n  version: 1\n")
    assert found.line == 2 and "mapping values are not allowed" in found.message


@pytest.mark.parametrize(
    ("text", "found"),
    [("- a\n- b\n", "a list"), ("hello\n", "'hello'"), ("", "an empty document")],
)
def test_the_top_level_must_be_a_mapping(text: str, found: str) -> None:
    assert issue(text).message.endswith(f"found {found}")


def test_several_documents_are_refused() -> None:
    found = issue(HEAD + "---\nname: b\n")
    assert found.line == 5 and "single document" in found.message


def test_python_tags_are_refused() -> None:
    found = issue("name: !!python/object/apply:os.system [true]\n")
    assert found.line == 1 and "constructor" in found.message


def test_an_alias_bomb_is_refused() -> None:
    text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for name, prev in zip("bcdefg", "abcdef", strict=True):
        text += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]\n"
    assert issue(text).message == "aliases expand to too many nodes"


def test_a_recursive_alias_is_refused() -> None:
    assert issue("a: &a [*a]\n").message.startswith("nested too deeply")


def test_a_file_over_1_mib_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(HEAD + "#" * MiB + "\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert caught.value.issues == [RecipeIssue("", None, "larger than 1 MiB")]


def test_a_missing_file_is_a_recipe_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as caught:
        load_recipe(tmp_path / "nope.yaml")
    assert caught.value.issues[0].message.startswith("cannot read:")


def test_a_directory_is_not_a_recipe(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as caught:
        load_recipe(tmp_path)
    assert caught.value.issues == [RecipeIssue("", None, "not a regular file")]


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(RecipeError, match="not a regular file"):
        load_recipe(tmp_path / "fifo.yaml")


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert caught.value.issues[0].message == "not UTF-8 text (byte 9)"


# --- fields -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Web", "1web", "web_1", "", "a" * 64])
def test_a_bad_name_is_refused(name: str) -> None:
    text = HEAD.replace("name: web", f"name: '{name}'")
    assert issue(text).path == "name"


def test_the_longest_name_is_accepted() -> None:
    assert parse(HEAD.replace("name: web", "name: " + "a" * 63)).name == "a" * 63


def test_an_unquoted_numeric_version_says_to_quote_it() -> None:
    found = issue(HEAD.replace('version: "1"', "version: 1.10"))
    assert found.path == "version" and "in quotes" in found.message and "1.1" in found.message


@pytest.mark.parametrize("version", ["1.2.0", "2024.06.1", "1.0+git.5", "1_rc-2"])
def test_good_versions_are_accepted(version: str) -> None:
    assert parse(HEAD.replace('"1"', f'"{version}"')).version == version


def test_a_version_with_spaces_is_refused() -> None:
    assert issue(HEAD.replace('"1"', '"1 2"')).path == "version"


def test_each_bad_package_name_is_refused_at_its_index() -> None:
    found = issues(HEAD + "packages: [curl, Vim, x]\n")
    assert [(i.path, i.line) for i in found] == [("packages[1]", 5), ("packages[2]", 5)]


def test_ubuntu_needs_a_mirror() -> None:
    text = 'name: a\nversion: "1"\nfrom:\n  bootstrap:\n    distro: ubuntu\n    release: noble\n'
    found = issue(text)
    assert (found.path, found.line) == ("from.bootstrap.mirror", 4)
    ok = text + "    mirror: http://mirror.example/ubuntu\n"
    assert parse(ok).from_.bootstrap is not None


@pytest.mark.parametrize("mirror", ["ftp://mirror.example/debian", "mirror.example", "http://"])
def test_a_mirror_must_be_an_http_url(mirror: str) -> None:
    text = HEAD.replace("release: bookworm", f"release: bookworm, mirror: '{mirror}'")
    assert issue(text).path == "from.bootstrap.mirror"


def test_only_amd64_is_built() -> None:
    text = HEAD.replace("release: bookworm", "release: bookworm, arch: arm64")
    assert issue(text).path == "from.bootstrap.arch"


def test_a_file_path_must_be_absolute() -> None:
    found = issue(HEAD + "files: [{path: etc/motd, content: x}]\n")
    assert found.path == "files[0].path" and "absolute" in found.message


@pytest.mark.parametrize("path", ["/etc//motd", "/etc/./motd", "/etc/motd/", "//etc/motd"])
def test_a_file_path_must_be_normalised(path: str) -> None:
    found = issue(HEAD + f"files: [{{path: '{path}', content: x}}]\n")
    assert found.path == "files[0].path" and "/etc/motd" in found.message


def test_a_file_path_must_not_climb() -> None:
    found = issue(HEAD + "files: [{path: /etc/../root/x, content: x}]\n")
    assert "'..'" in found.message


def test_two_files_may_not_write_the_same_path() -> None:
    text = HEAD + "files:\n  - {path: /a, content: x}\n  - {path: /b, content: y}\n"
    text += "  - {path: /a, content: z}\n"
    assert issue(text) == RecipeIssue("files[2].path", 8, "/a is written by files[0] too")


def test_an_unquoted_mode_says_to_quote_it() -> None:
    found = issue(HEAD + "files: [{path: /a, content: x, mode: 0644}]\n")
    assert found.path == "files[0].mode" and "quotes" in found.message


@pytest.mark.parametrize("mode", ["644x", "0800", "12", "00644"])
def test_a_mode_must_be_3_or_4_octal_digits(mode: str) -> None:
    assert issue(HEAD + f"files: [{{path: /a, content: x, mode: '{mode}'}}]\n").path == (
        "files[0].mode"
    )


def test_owner_and_group_take_names_or_numbers() -> None:
    recipe = parse(HEAD + "files: [{path: /a, content: x, owner: www-data, group: '33'}]\n")
    assert (recipe.files[0].owner, recipe.files[0].group) == ("www-data", "33")
    assert issue(HEAD + "files: [{path: /a, content: x, owner: 'a b'}]\n").path == (
        "files[0].owner"
    )


def test_empty_content_is_an_empty_file() -> None:
    assert parse(HEAD + "files: [{path: /a, content: ''}]\n").files[0].content == ""


def test_a_blank_inline_step_is_refused() -> None:
    assert issue(HEAD + "run: [{inline: '  '}]\n").path == "run[0].inline"


def test_sysprep_takes_a_preset_or_a_list() -> None:
    assert parse(HEAD + "sysprep: none\n").sysprep_operations() == ()
    recipe = parse(HEAD + "sysprep: [logs, machine-id]\n")
    assert recipe.sysprep_operations() == ("machine-id", "logs")


def test_an_unknown_sysprep_preset_gets_one_message() -> None:
    found = issue(HEAD + "sysprep: all\n")
    assert found == RecipeIssue("sysprep", 5, "must be 'default' or 'none', not 'all'")


def test_an_unknown_sysprep_operation_is_named_at_its_index() -> None:
    found = issue(HEAD + "sysprep: [logs, kernel]\n")
    assert found.path == "sysprep[1]" and "'kernel'" in found.message


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("sysprep", "[logs, logs]", "sysprep[1]"),
        ("checks", "[cloud, tycoon, cloud]", "checks[2]"),
        ("outputs", "[qcow2, raw.xz, qcow2]", "outputs[2]"),
    ],
)
def test_list_entries_may_not_repeat(field: str, value: str, path: str) -> None:
    found = issue(HEAD + f"{field}: {value}\n")
    assert found.path == path and "listed twice" in found.message


def test_an_unknown_check_profile_is_refused() -> None:
    assert issue(HEAD + "checks: [centos]\n").path == "checks[0]"


def test_a_check_is_a_profile_name_or_a_mapping_with_advisory() -> None:
    recipe = parse(HEAD + "checks:\n  - tycoon\n  - {profile: cloud, advisory: true}\n")
    assert recipe.check_profiles() == (("tycoon", False), ("cloud", True))
    assert recipe.check_profiles()[1].advisory is True
    assert parse(HEAD + "checks: [{profile: stratuslab}]\n").check_profiles() == (
        ("stratuslab", False),
    )


def test_a_profile_may_not_repeat_in_either_form() -> None:
    found = issue(HEAD + "checks:\n  - tycoon\n  - {profile: tycoon, advisory: true}\n")
    assert (found.path, found.line) == ("checks[1]", 7)
    assert found.message == "profile 'tycoon' is listed twice"


@pytest.mark.parametrize(
    ("entry", "path", "words"),
    [
        ("{profile: centos}", "checks[0].profile", "'tycoon', 'stratuslab' or 'cloud'"),
        ("{profile: cloud, advisory: maybe}", "checks[0].advisory", "true or false"),
        ("{profile: cloud, advsory: true}", "checks[0].advsory", "did you mean 'advisory'?"),
        ("{advisory: true}", "checks[0].profile", "required"),
        ("[tycoon]", "checks[0]", "tycoon"),
    ],
)
def test_a_bad_check_mapping_names_its_field_and_line(entry: str, path: str, words: str) -> None:
    found = issue(HEAD + f"checks:\n  - {entry}\n")
    assert (found.path, found.line) == (path, 6)
    assert words in found.message, found


def test_boot_false_turns_the_boot_test_off() -> None:
    assert parse(HEAD + "test: {boot: false}\n").test.boot is None
    assert parse(HEAD + "test: {boot: null}\n").test.boot is None
    boot = parse(HEAD + "test: {boot: true}\n").test.boot
    assert boot is not None and boot.timeout == 300


def test_test_commands_need_the_boot_test() -> None:
    found = issue(HEAD + "test:\n  boot: false\n  commands: [uptime]\n")
    assert (found.path, found.line) == ("test.commands", 7)


def test_publish_takes_a_cloud_name_a_target_or_a_list() -> None:
    one = parse(HEAD + "publish: {glance: nectar}\n").publish
    assert [(t.cloud, t.visibility, t.retire) for t in one.glance] == [
        ("nectar", "private", "hide")
    ]
    mapping = parse(HEAD + "publish: {glance: {cloud: nectar, keep: 3}}\n").publish
    assert mapping.glance[0].keep == 3 and mapping.marketplace is None
    text = HEAD + (
        "publish:\n  glance:\n    - {cloud: a, region: r1, tags: [x], properties: {k: v}}\n"
        "    - {cloud: b, visibility: public, min_disk: 4, min_ram: 512, retire: delete}\n"
        "  marketplace: {endorser: ops@example.org, valid_for: 26w, title: T}\n"
    )
    many = parse(text).publish
    assert [t.cloud for t in many.glance] == ["a", "b"] and many.glance[1].retire == "delete"
    assert many.marketplace is not None and many.marketplace.valid_for == 26 * 7 * 86400
    assert parse(HEAD + "publish: {marketplace: true}\n").publish.targets


def test_publish_errors_name_the_field_and_line() -> None:
    found = issue(HEAD + "publish:\n  glance:\n    - {cloud: a}\n    - {cloud: b, keep: -1}\n")
    assert (found.path, found.line) == ("publish.glance[1].keep", 8)
    assert issue(HEAD + "publish: {anything: 1}\n").path == "publish.anything"
    assert issue(HEAD + "publish: {glance: {cloud: 'a b'}}\n").path == "publish.glance.cloud"
    found = issue(HEAD + "publish:\n  marketplace: {endorser: nobody}\n")
    assert found.path == "publish.marketplace.endorser"
    assert issue(HEAD + "publish: {marketplace: {valid_for: 5m}}\n").path == (
        "publish.marketplace.valid_for"
    )
    assert issue(HEAD + "publish: {glance: {cloud: a, retire: burn}}\n").path == (
        "publish.glance.retire"
    )


def test_publish_must_be_a_mapping() -> None:
    assert issue(HEAD + "publish: [glance]\n").path == "publish"


# --- sizes and durations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4GiB", 4 * GiB),
        ("512MiB", 512 * MiB),
        ("2G", 2 * GiB),
        ("2048M", 2 * GiB),
        ("1T", 1 << 40),
        ("1024 KiB", MiB),
        ("100B", 100),
        ("1234", 1234),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["4GB", "4 gb", "4Gb", "4X", "four", "1.5G", "-1G", "", True])
def test_parse_size_refuses(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_decimal_units_are_refused_as_ambiguous() -> None:
    found = issue(HEAD + "disk: {size: 4GB}\n")
    assert found == RecipeIssue("disk.size", 5, "'4GB' is ambiguous: write 4GiB")


@pytest.mark.parametrize("size", ["511MiB", "3TiB", "0", "1000000001"])
def test_a_disk_size_out_of_range_or_unaligned_is_refused(size: str) -> None:
    assert issue(HEAD + f"disk: {{size: {size}}}\n").path == "disk.size"


@pytest.mark.parametrize("size", ["512MiB", "2TiB", "536870912"])
def test_disk_size_limits_are_inclusive(size: str) -> None:
    parse(HEAD + f"disk: {{size: {size}}}\n")


@pytest.mark.parametrize(("text", "seconds"), [("300s", 300), ("5m", 300), ("1h", 3600), (90, 90)])
def test_parse_seconds(text: str | int, seconds: int) -> None:
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("timeout", ["5s", "2h", "soon", "true"])
def test_a_bad_boot_timeout_is_refused(timeout: str) -> None:
    assert issue(HEAD + f"test: {{boot: {{timeout: {timeout}}}}}\n").path == "test.boot.timeout"


# --- outputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fmt", "compression"),
    [
        ("qcow2", "qcow2", None),
        ("qcow2c", "qcow2c", None),
        ("raw", "raw", None),
        ("raw.xz", "raw", "xz"),
        ("raw.zst", "raw", "zst"),
        ("vmdk", "vmdk", None),
        ("ext3.bz2", "ext3", "bz2"),
        ("ext4.gz", "ext4", "gz"),
        ("tar.zst", "tar", "zst"),
    ],
)
def test_output_names_parse(text: str, fmt: str, compression: str | None) -> None:
    output = r.OutputSpec.model_validate(text)
    assert (output.format, output.compression, output.name) == (fmt, compression, text)


def test_the_long_output_form_is_accepted() -> None:
    recipe = parse(HEAD + "outputs: [{format: raw, compression: xz}]\n")
    assert recipe.outputs[0].name == "raw.xz"


@pytest.mark.parametrize(("text", "word"), [("png", "format"), ("raw.lz4", "compression")])
def test_an_unknown_output_part_is_named(text: str, word: str) -> None:
    found = issue(HEAD + f"outputs: [qcow2, {text}]\n")
    assert found.path == "outputs[1]" and found.message.startswith(f"unknown {word}")


@pytest.mark.parametrize("text", ["qcow2.gz", "qcow2c.xz", "vmdk.zst"])
def test_internally_compressed_formats_take_no_outer_compression(text: str) -> None:
    found = issue(HEAD + f"outputs: [{text}]\n")
    assert found.path == "outputs[0]" and "no outer compression" in found.message


def test_there_must_be_an_output() -> None:
    assert issue(HEAD + "outputs: []\n") == RecipeIssue("outputs", 5, "name at least one output")


# --- exactly one of -----------------------------------------------------------------------


def test_from_needs_exactly_one_source() -> None:
    assert issue('name: a\nversion: "1"\nfrom: {}\n') == RecipeIssue(
        "from", 3, "give exactly one of: bootstrap, image"
    )
    both = HEAD + "  image: {artifact: 01j0abcdefghjkmnpqrstvwxyz}\n"
    found = issue(both)
    assert (found.path, found.line) == (
        "from.image",
        5,
    ) and "got bootstrap and image" in found.message


@pytest.mark.parametrize(
    ("image", "path"),
    [
        ("{}", "from.image"),
        (
            "{artifact: 01j0abcdefghjkmnpqrstvwxyz, glance: {cloud: c, id: " + UUID + "}}",
            "from.image.glance",
        ),
        ("{url: 'https://example.org/a.qcow2'}", "from.image.sha256"),
        ("{artifact: 01j0abcdefghjkmnpqrstvwxyz, sha256: " + "a" * 64 + "}", "from.image.sha256"),
    ],
)
def test_an_image_needs_exactly_one_source_and_a_pinned_url(image: str, path: str) -> None:
    assert issue(f'name: a\nversion: "1"\nfrom:\n  image: {image}\n').path == path


@pytest.mark.parametrize(
    "image",
    [
        "{url: 'https://example.org/a.qcow2', sha256: " + "A" * 64 + "}",
        "{artifact: 01j0abcdefghjkmnpqrstvwxyz}",
        "{marketplace: HZTKYZgX7XzSokCHMB60lS0wsiv}",
        "{glance: {cloud: nectar, id: 3F2504E0-4F89-11D3-9A0C-0305E82C3301}}",
    ],
)
def test_each_image_source_is_accepted(image: str) -> None:
    recipe = parse(f'name: a\nversion: "1"\nfrom:\n  image: {image}\n')
    assert recipe.from_.image is not None


def test_image_ids_are_checked_and_normalised() -> None:
    text = 'name: a\nversion: "1"\nfrom:\n  image: {glance: {cloud: c, id: not-a-uuid}}\n'
    assert issue(text).path == "from.image.glance.id"
    assert issue(text.replace("{glance: {cloud: c, id: not-a-uuid}}", "{artifact: x}")).path == (
        "from.image.artifact"
    )
    ok = text.replace("not-a-uuid", "3F2504E0-4F89-11D3-9A0C-0305E82C3301")
    image = parse(ok).from_.image
    assert image is not None and image.glance is not None
    assert image.glance.id == "3f2504e0-4f89-11d3-9a0c-0305e82c3301"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{path: /a}", "give exactly one of: content, source"),
        ("{path: /a, content: x, source: setup.sh}", "got content and source"),
    ],
)
def test_a_file_needs_exactly_one_of_content_and_source(entry: str, message: str) -> None:
    assert message in issue(HEAD + f"files: [{entry}]\n").message


@pytest.mark.parametrize("entry", ["{}", "{script: setup.sh, inline: 'true'}"])
def test_a_run_step_needs_exactly_one_of_script_and_inline(entry: str) -> None:
    assert "give exactly one of: script, inline" in issue(HEAD + f"run: [{entry}]\n").message


# --- files beside the recipe --------------------------------------------------------------


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    """A recipe directory with a script, a file, and a secret next to it (outside)."""
    base = tmp_path / "recipe"
    (base / "files").mkdir(parents=True)
    (base / "setup.sh").write_text("echo one\n")
    (base / "files/motd").write_text("hello\n")
    (tmp_path / "secret").write_text("host secret\n")
    return base


def test_a_source_beside_the_recipe_is_accepted(recipe_dir: Path) -> None:
    recipe = parse(HEAD + "files: [{path: /etc/motd, source: files/motd}]\n", recipe_dir)
    assert (recipe.base_dir / str(recipe.files[0].source)).read_text() == "hello\n"


def test_a_missing_source_is_refused(recipe_dir: Path) -> None:
    found = issue(HEAD + "files: [{path: /a, source: files/nope}]\n", recipe_dir)
    assert found.path == "files[0].source" and "does not exist" in found.message


def test_a_source_climbing_out_with_dotdot_is_refused(recipe_dir: Path) -> None:
    found = issue(HEAD + "files: [{path: /a, source: ../secret}]\n", recipe_dir)
    assert found.path == "files[0].source" and "outside the recipe's directory" in found.message


def test_a_source_symlink_leading_out_is_refused(recipe_dir: Path) -> None:
    (recipe_dir / "files/link").symlink_to(recipe_dir.parent / "secret")
    found = issue(HEAD + "files: [{path: /a, source: files/link}]\n", recipe_dir)
    assert "through a symlink" in found.message


def test_a_symlinked_directory_leading_out_is_refused(recipe_dir: Path) -> None:
    (recipe_dir / "up").symlink_to(recipe_dir.parent)
    found = issue(HEAD + "files: [{path: /a, source: up/secret}]\n", recipe_dir)
    assert "through a symlink" in found.message


def test_a_symlink_inside_the_recipe_directory_is_fine(recipe_dir: Path) -> None:
    (recipe_dir / "motd-link").symlink_to("files/motd")
    parse(HEAD + "files: [{path: /a, source: motd-link}]\n", recipe_dir)


def test_a_dotdot_that_stays_inside_is_fine(recipe_dir: Path) -> None:
    parse(HEAD + "files: [{path: /a, source: files/../setup.sh}]\n", recipe_dir)


def test_an_absolute_source_is_refused(recipe_dir: Path) -> None:
    found = issue(HEAD + f"files: [{{path: /a, source: {recipe_dir}/setup.sh}}]\n", recipe_dir)
    assert "relative to the recipe's directory" in found.message


def test_a_directory_is_not_a_source(recipe_dir: Path) -> None:
    found = issue(HEAD + "files: [{path: /a, source: files}]\n", recipe_dir)
    assert "not a regular file" in found.message


def test_a_script_climbing_out_is_refused(recipe_dir: Path) -> None:
    found = issue(HEAD + "run: [{script: ../secret}]\n", recipe_dir)
    assert found.path == "run[0].script" and "outside" in found.message


def test_a_missing_script_is_refused(recipe_dir: Path) -> None:
    assert issue(HEAD + "run: [{script: nope.sh}]\n", recipe_dir).path == "run[0].script"


def test_load_recipe_resolves_sources_beside_the_file(recipe_dir: Path) -> None:
    path = recipe_dir / "r.yaml"
    path.write_text(HEAD + "run: [{script: setup.sh}]\n")
    assert load_recipe(path).base_dir == recipe_dir


# --- digest -------------------------------------------------------------------------------

WITH_INPUTS = HEAD + "files: [{path: /etc/motd, source: files/motd}]\nrun: [{script: setup.sh}]\n"


def test_the_digest_is_a_sha256(recipe_dir: Path) -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", parse(WITH_INPUTS, recipe_dir).digest())


def test_the_digest_changes_when_a_script_changes(recipe_dir: Path) -> None:
    before = parse(WITH_INPUTS, recipe_dir).digest()
    (recipe_dir / "setup.sh").write_text("echo two\n")
    assert parse(WITH_INPUTS, recipe_dir).digest() != before


def test_the_digest_changes_when_a_source_file_changes(recipe_dir: Path) -> None:
    before = parse(WITH_INPUTS, recipe_dir).digest()
    (recipe_dir / "files/motd").write_text("goodbye\n")
    assert parse(WITH_INPUTS, recipe_dir).digest() != before


def test_the_digest_ignores_where_the_recipe_lives(recipe_dir: Path, tmp_path: Path) -> None:
    elsewhere = shutil.copytree(recipe_dir, tmp_path / "moved" / "deeper")
    assert parse(WITH_INPUTS, recipe_dir).digest() == parse(WITH_INPUTS, elsewhere).digest()


def test_the_digest_changes_with_any_field(recipe_dir: Path) -> None:
    base = parse(WITH_INPUTS, recipe_dir).digest()
    assert parse(WITH_INPUTS + "packages: [curl]\n", recipe_dir).digest() != base
    assert parse(WITH_INPUTS.replace('"1"', '"2"'), recipe_dir).digest() != base


def test_the_digest_ignores_keep_workspace(recipe_dir: Path) -> None:
    base = parse(WITH_INPUTS, recipe_dir).digest()
    assert parse(WITH_INPUTS + "keep_workspace: true\n", recipe_dir).digest() == base


def test_the_digest_ignores_spelling_that_means_the_same(recipe_dir: Path) -> None:
    a = parse(HEAD + "disk: {size: 4GiB}\noutputs: [raw.xz]\n", recipe_dir)
    b = parse(HEAD + "disk: {size: 4096M}\noutputs: [{format: raw, compression: xz}]\n", recipe_dir)
    assert a.digest() == b.digest()


# --- package map --------------------------------------------------------------------------


def test_neutral_names_map_per_distro() -> None:
    assert map_packages(["firewall", "ssh-server"], "debian") == ["nftables", "openssh-server"]
    assert map_packages(["firewall", "ssh-server"], "ubuntu") == ["openssh-server", "ufw"]
    assert map_packages(["mysql-server"], "debian") == ["default-mysql-server"]
    assert map_packages(["growpart", "httpd"], "debian") == ["apache2", "cloud-guest-utils"]


def test_names_not_in_the_table_pass_through() -> None:
    assert map_packages(["openssh-server", "apache2", "cloud-init"], "debian") == [
        "apache2",
        "cloud-init",
        "openssh-server",
    ]


def test_mapped_names_are_sorted_without_repeats() -> None:
    names = ["ssh-server", "openssh-server", "httpd", "apache2", "curl", "curl"]
    assert map_packages(names, "debian") == ["apache2", "curl", "openssh-server"]


def test_an_unknown_distro_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="fedora"):
        map_packages(["curl"], "fedora")


def test_the_shipped_table_covers_every_distro() -> None:
    table = pkgmap()
    assert "firewall" in table
    for name, entry in table.items():
        assert set(entry) == set(r.DISTROS), name
        assert all(entry.values()), name


def test_every_neutral_name_is_a_valid_recipe_package() -> None:
    names = list(pkgmap())
    parse(HEAD + f"packages: [{', '.join(names)}]\n")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("x11: {debian: [a1]}\n", "no packages for ubuntu"),
        ("x11: {default: [a1], fedora: [b1]}\n", "unknown distro 'fedora'"),
        ("x11: {default: []}\n", "non-empty list"),
        ("x11: {default: [Bad]}\n", "non-empty list"),
        ("Bad: {default: [a1]}\n", "'Bad' is not a package name"),
        ("x11: [a1]\n", "expected a mapping"),
        ("x11: {default: [a1]}\nx11: {default: [b1]}\n", "duplicate key 'x11'"),
        ("[x11]\n", "expected a mapping"),
    ],
)
def test_a_bad_table_is_refused_on_load(text: str, problem: str) -> None:
    with pytest.raises(PkgMapError, match=re.escape(problem)):
        parse_pkgmap(text)


def test_default_applies_to_distros_without_their_own_list() -> None:
    table = parse_pkgmap("x11: {default: [a1], ubuntu: [b1]}\n")
    assert map_packages(["x11"], "debian", table) == ["a1"]
    assert map_packages(["x11"], "ubuntu", table) == ["b1"]


# --- kiln recipe check --------------------------------------------------------------------


def kiln(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="kiln")
    add_recipe_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.fn(args))


def test_check_prints_ok_for_a_valid_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(RECIPES / "full.yaml")
    assert kiln("recipe", "check", path) == 0
    assert capsys.readouterr().out == f"{path}: OK (web-debian 1.2.0)\n"


def test_check_prints_each_problem_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(HEAD + "disk: {size: 4GB}\npakages: [curl]\n")
    assert kiln("recipe", "check", str(path)) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}:5: disk.size: '4GB' is ambiguous: write 4GiB",
        f"{path}:6: pakages: unknown field 'pakages' (did you mean 'packages'?)",
    ]


def test_check_reports_an_unreadable_file_without_a_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nope.yaml"
    assert kiln("recipe", "check", str(path)) == 1
    assert capsys.readouterr().out.startswith(f"{path}: cannot read: ")


def test_check_fails_if_any_of_several_recipes_is_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- not a recipe\n")
    good = str(RECIPES / "minimal.yaml")
    assert kiln("recipe", "check", good, str(bad)) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{good}: OK (minimal 1)" and out[1].startswith(f"{bad}:1: expected a mapping")


def test_check_needs_a_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        kiln("recipe", "check")
    assert caught.value.code == 2 and "recipe" in capsys.readouterr().err
