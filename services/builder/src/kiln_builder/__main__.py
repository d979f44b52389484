"""kiln-builder: the Builder service, and its build engine without the other services.

kiln-builder serve                  the gRPC Builder service and a worker (settings: KILN_BUILDER_*)
kiln-builder bake RECIPE --out DIR [--no-cache] [--keep-workspace] [--no-boot-test]
                    [--default-mirror URL] [--vm] [--egress-deny CIDR] [--egress-strict]
kiln-builder janitor                release what dead builds left
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

from kiln_builder import fingerprint
from kiln_builder.checks import CheckReport
from kiln_builder.cleanup import reclaim_all
from kiln_builder.egress import EgressPolicy
from kiln_builder.engine import Bake, BakeOptions, StepRecord, summary
from kiln_builder.storage import StorageAccess
from kiln_common.errors import InvalidArgument, KilnError
from kiln_common.ids import new_id
from kiln_common.logs import setup_logging
from kiln_common.proc import ProcessError
from kiln_common.settings import default_cache_dir
from kiln_recipe import RecipeError, load_recipe

WORK_ROOT = Path("/var/tmp/kiln")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln-builder", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bake = sub.add_parser(
        "bake",
        help="build a recipe into image files",
        description="Builds a recipe into image files without the services. Layers are"
        " shared with the storage service of a `kiln up` stack running under $KILN_HOME"
        " (default ~/.kiln) unless --storage names another.",
    )
    bake.add_argument("recipe", type=Path)
    bake.add_argument("--out", type=Path, required=True, help="directory for the outputs")
    bake.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    bake.add_argument("--keep-workspace", action="store_true", help="keep a failed build's files")
    bake.add_argument("--no-boot-test", action="store_true", help="skip booting the image")
    bake.add_argument(
        "--vm", action="store_true", help="run packages, files and run in the appliance VM"
    )
    bake.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    bake.add_argument("--work-root", type=Path, default=WORK_ROOT)
    bake.add_argument(
        "--cache-max-gib",
        type=float,
        default=16.0,
        help="prune local layers beyond this size, least recently used first",
    )
    bake.add_argument(
        "--storage",
        default=os.environ.get("KILN_STORAGE"),
        help="storage service (host:port) sharing layers; default: the `kiln up` stack if running",
    )
    bake.add_argument(
        "--default-mirror",
        default=os.environ.get("KILN_BUILDER_DEFAULT_MIRROR", ""),
        help="mirror for a recipe that names none; default: the build host's apt source",
    )
    bake.add_argument(
        "--egress-deny",
        action="append",
        default=[],
        metavar="CIDR",
        help="a network the build's own fetches (base URL, mirror) may not reach (repeatable)",
    )
    bake.add_argument(
        "--egress-strict",
        action="store_true",
        help="refuse loopback and private networks to the build's own fetches, as a cluster's"
        " builder does (allowed by default here: one machine)",
    )
    sub.add_parser("serve", help="run the Builder service (settings from KILN_BUILDER_*)")
    clean = sub.add_parser("janitor", help="release what dead builds left (mounts, loops, files)")
    clean.add_argument("--work-root", type=Path, default=WORK_ROOT)
    return parser


def _egress(args: argparse.Namespace) -> EgressPolicy:
    """bake runs for one person on one machine: loopback and private mirrors and
    servers are allowed unless --egress-strict; --egress-deny adds networks."""
    try:
        return EgressPolicy(allow_loopback=not args.egress_strict,
                            allow_private=not args.egress_strict,
                            denied=tuple(args.egress_deny))  # fmt: skip
    except ValueError as exc:
        raise InvalidArgument(f"--egress-deny: {exc}") from None


def _progress(step: StepRecord, what: str) -> None:
    if what == "start":
        print(f"==> {step.name}", file=sys.stderr, flush=True)
    else:
        note = " (cached layer)" if step.cached else ""
        print(f"    {step.name} done in {step.seconds:.1f}s{note}", file=sys.stderr, flush=True)


async def _bake(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    await reclaim_all(args.work_root)  # what a killed build left behind
    # SIGTERM cancels like Ctrl-C does, so every resource is released.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    storage = args.storage or _running_storage()
    if storage is None:
        print("kiln-builder: no storage service: layers are cached on this machine only",
              file=sys.stderr)  # fmt: skip
    else:
        _as_a_builder()
    options = BakeOptions(
        storage=StorageAccess(storage) if storage else None,
        out_dir=args.out,
        work_root=args.work_root,
        cache_dir=args.cache_dir,
        build_id=new_id(),
        no_cache=args.no_cache,
        cache_max_bytes=int(args.cache_max_gib * 1024**3),
        keep_workspace=args.keep_workspace,
        boot_test=not args.no_boot_test,
        default_mirror=args.default_mirror,
        force_vm=args.vm,
        force_vm_why="asked for with --vm",
        egress=_egress(args),
    )
    # The bake's inputs: the mirror's state enters its layer keys, as a builder service's does.
    found = await fingerprint.read(
        recipe, recipe.digest(), options.egress, default_mirror=options.default_mirror,
        storage=options.storage, vm=options.force_vm or recipe.isolation == "vm",
    )  # fmt: skip
    print(f"fingerprint {found.digest}", file=sys.stderr)
    options = dataclasses.replace(
        options, apt_state=fingerprint.apt_state(found), base_digest=fingerprint.base_part(found)
    )
    bake = Bake(recipe, options, _progress)
    try:
        result = await bake.run()
    except KilnError:
        _print_checks(bake.check_report)  # which rules failed, and all the others
        raise
    print(f"steps: {summary(result.steps)}", file=sys.stderr)
    _print_checks(result.checks)
    accel = result.appliance_accel
    where = f" (the appliance under {accel.kind}: {accel.reason})" if accel else ""
    print(f"isolation: {result.isolation}{where}", file=sys.stderr)
    for output in result.outputs:
        print(f"{output.path}  {output.size}  sha256:{output.sha256}")
    print(f"{result.sbom}  (SPDX SBOM)")
    if result.console_log and result.boot is not None:
        boot = result.boot
        print(f"{result.console_log}  (boot test: login prompt after {boot.seconds:.0f}s "
              f"under {boot.accel.kind}: {boot.accel.reason})")  # fmt: skip
    if result.tests is not None:
        print(f"{result.tests}  (boot test commands)")
    _print_tests(result.tests)
    return 0


def _print_checks(report: CheckReport | None) -> None:
    if report is None:
        return
    for result in report.results:
        print(f"check {result.line()}", file=sys.stderr)
    if report.path is not None:
        print(f"{report.path}  (requirement checks)")


def _print_tests(tests: Path | None) -> None:
    """Each test command's outcome, from the results file the bake wrote."""
    if tests is None or not tests.is_file():
        return
    for entry in json.loads(tests.read_text())["commands"]:
        how = "passed" if entry["passed"] else f"exit {entry['exit_status']}"
        how = "timed-out" if entry["timed_out"] else how
        print(f"    test {how:<9} {entry['seconds']:6.1f}s  {entry['command']}")


def _as_a_builder() -> None:
    """Layers are the builder's to write (kiln-* labels): a bake sends a
    builder's service token, KILN_BUILDER_TOKEN or the local stack's (its
    service-token file, the owner's only); else the caller's own token. With
    a service token it acts for a tenant, whose layers it shares as that
    tenant's builds do: KILN_TENANT, else the local stack's admin tenant."""
    from kiln_client.credentials import use_tenant, use_token
    from kiln_client.discovery import kiln_home
    from kiln_common.home import LOCAL_TENANT, SERVICE_TOKEN_FILE

    kept = kiln_home() / SERVICE_TOKEN_FILE
    token = os.environ.get("KILN_BUILDER_TOKEN") or (
        kept.read_text().strip() if kept.is_file() else ""
    )
    if token:
        use_token(token)
        use_tenant(os.environ.get("KILN_TENANT") or LOCAL_TENANT)


def _running_storage() -> str | None:
    """KILN_STORAGE, else the storage of a running `kiln up` stack."""
    from kiln_client.discovery import Stack, kiln_home

    if os.environ.get("KILN_STORAGE"):
        return os.environ["KILN_STORAGE"]
    stack = Stack.load(kiln_home())
    return stack.storage if stack is not None and stack.alive() else None


async def _janitor(args: argparse.Namespace) -> int:
    for item in await reclaim_all(args.work_root):
        print(f"released {item}")
    return 0


def _serve() -> int:
    from kiln_builder.service.app import build
    from kiln_builder.service.settings import BuilderSettings
    from kiln_common.grpc_server import service_main

    return service_main("kiln-builder", BuilderSettings, build)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(os.environ.get("KILN_LOG_LEVEL", "WARNING"), "kiln-builder")
    if args.command == "serve":
        return _serve()
    commands = {"bake": lambda: _bake(args), "janitor": lambda: _janitor(args)}
    try:
        return asyncio.run(commands[args.command]())
    except RecipeError as exc:
        print(f"kiln-builder: {args.recipe}: invalid recipe:\n{exc}", file=sys.stderr)
        return 2
    except (KilnError, ProcessError, OSError) as exc:
        print(f"kiln-builder: build failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("kiln-builder: interrupted; resources released", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
