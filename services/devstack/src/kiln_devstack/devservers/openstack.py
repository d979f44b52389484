"""OpenStack Keystone and Glance from their PyPI wheels, served by gunicorn
with SQLite, on loopback."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import secrets
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kiln_common.proc import run_sync, spawn, stop_pid
from kiln_devstack.devservers.common import ServerError, find_binary, free_port, wait_http

KEYSTONE_WSGI = """\
import sys

# Keystone parses the process's command line (gunicorn's flags) as its own.
sys.argv = sys.argv[:1]

from keystone.server import wsgi  # noqa: E402

application = wsgi.initialize_public_application()
"""


@dataclass(frozen=True)
class Keystone:
    url: str  # the identity endpoint, http://127.0.0.1:PORT/v3
    admin_password: str
    pid: int
    # project name -> (user name, password): a member of that project alone
    users: dict[str, tuple[str, str]] = field(default_factory=dict)


def _gunicorn(app: str, port: int, pythonpath: Path, log: Path, env: dict[str, str]) -> int:
    """One gthread worker on loopback: enough for tests, and the set-up INFRA.md measured."""
    proc = spawn(
        [
            find_binary("gunicorn"),
            "--no-control-socket",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--worker-class",
            "gthread",
            "--threads",
            "8",
            "--timeout",
            "600",
            "--graceful-timeout",
            "3",
            "--pythonpath",
            pythonpath,
            app,
        ],
        log_file=log,
        env=env,
    )
    return proc.pid


def _ini(sections: dict[str, dict[str, str]]) -> str:
    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()) + "\n"
        for name, values in sections.items()
    )


def _api(
    method: str, url: str, token: str | None = None, body: object = None
) -> tuple[dict[str, object], dict[str, str]]:
    """One JSON call to an OpenStack API (set-up only: no retries)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("X-Auth-Token", token)
    with urllib.request.urlopen(request, timeout=30) as r:
        text = r.read()
        return (json.loads(text) if text else {}), dict(r.headers)


def _password_body(user: str, password: str, project: str) -> dict[str, object]:
    return {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": user, "domain": {"id": "default"}, "password": password}
                },
            },
            "scope": {"project": {"name": project, "domain": {"id": "default"}}},
        }
    }


def keystone_token(keystone: Keystone) -> str:
    """An admin token, for setting things up in Keystone."""
    body = _password_body("admin", keystone.admin_password, "admin")
    _, headers = _api("POST", f"{keystone.url}/auth/tokens", body=body)
    return headers["X-Subject-Token"]


def _id_of(reply: dict[str, object], kind: str) -> str:
    item = reply[kind]
    assert isinstance(item, dict)
    return str(item["id"])


def _add_member(keystone: Keystone, token: str, project: str, password: str) -> None:
    """A project, and a user of the same name with the member role in it alone."""
    url = keystone.url
    made = _api("POST", f"{url}/projects", token, {"project": {"name": project}})[0]
    project_id = _id_of(made, "project")
    user = {"user": {"name": project, "password": password, "default_project_id": project_id}}
    user_id = _id_of(_api("POST", f"{url}/users", token, user)[0], "user")
    roles = _api("GET", f"{url}/roles?name=member", token)[0]["roles"]
    assert isinstance(roles, list) and roles, "keystone bootstrap made no member role"
    role_id = roles[0]["id"]
    _api("PUT", f"{url}/projects/{project_id}/users/{user_id}/roles/{role_id}", token)


def _migrated(
    db: Path, package: str, cache: Path | None, migrate: list[str | os.PathLike[str]]
) -> None:
    """The SQLite schema at db: migrate (15-25 s) once, then a copy of the
    result kept in cache (keyed by the package's version) for later starts."""
    kept = cache / f"{package}-{importlib.metadata.version(package)}.db" if cache else None
    if kept and kept.is_file():
        shutil.copyfile(kept, db)
        return
    run_sync(migrate, timeout=300)
    if kept:
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(db, kept.with_suffix(".tmp"))
        kept.with_suffix(".tmp").rename(kept)


def _key_repository(path: Path) -> None:
    """What `keystone-manage fernet_setup`/`credential_setup` write (a staged
    key 0 and a primary key 1, each a Fernet key), without their 10-15 s of
    start-up each."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in ("0", "1"):
        (path / name).write_bytes(base64.urlsafe_b64encode(os.urandom(32)))
        (path / name).chmod(0o600)


def _bootstrapped(data: Path, manage: list[str], url: str, cache: Path | None) -> str:
    """keystone.db migrated and bootstrapped (admin, RegionOne, the identity
    endpoints at url); returns the admin password. With cache, the result of
    the first start (and its password: a test server's) is kept and copied,
    and start_keystone moves the endpoints to this start's port."""
    version = importlib.metadata.version("keystone")
    kept = cache / f"keystone-{version}-bootstrapped.db" if cache else None
    secret = kept.with_suffix(".json") if kept else None
    if kept and secret and kept.is_file() and secret.is_file():
        shutil.copyfile(kept, data / "keystone.db")
        return str(json.loads(secret.read_text())["admin_password"])
    password = secrets.token_hex(12)
    run_sync([*manage, "db_sync"], timeout=300)
    endpoints = [f"--bootstrap-{kind}-url={url}" for kind in ("admin", "public", "internal")]
    run_sync(
        [*manage, "bootstrap", "--bootstrap-region-id=RegionOne", *endpoints],
        env={"OS_BOOTSTRAP_PASSWORD": password},
        timeout=120,
    )
    if kept and secret:
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data / "keystone.db", kept.with_suffix(".tmp"))
        secret.write_text(json.dumps({"admin_password": password}))
        kept.with_suffix(".tmp").rename(kept)
    return password


def _move_identity_endpoints(keystone: Keystone, token: str) -> None:
    """A copied database names the port of the start that made it."""
    api = keystone.url
    services = _api("GET", f"{api}/services?type=identity", token)[0]["services"]
    assert isinstance(services, list) and services
    query = f"{api}/endpoints?service_id={services[0]['id']}"
    endpoints = _api("GET", query, token)[0]["endpoints"]
    assert isinstance(endpoints, list)
    for endpoint in endpoints:
        if endpoint["url"] != api:
            patch = {"endpoint": {"url": api}}
            _api("PATCH", f"{api}/endpoints/{endpoint['id']}", token, patch)


def start_keystone(
    data: Path,
    log: Path,
    projects: tuple[str, ...] = ("kiln-a", "kiln-b"),
    schema_cache: Path | None = None,
) -> Keystone:
    """Keystone on SQLite with fernet tokens, bootstrapped (admin, region
    RegionOne), with each of projects holding one member user of its name.
    schema_cache: a directory keeping the bootstrapped database between runs
    (the migrations and bootstrap take 30-60 s; a copy takes none)."""
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v3"
    conf = data / "keystone.conf"
    conf.write_text(
        _ini(
            {
                "DEFAULT": {"log_file": str(data / "keystone-app.log")},
                "database": {"connection": f"sqlite:///{data / 'keystone.db'}"},
                "token": {"provider": "fernet"},
                "fernet_tokens": {"key_repository": str(data / "fernet-keys")},
                # Auth receipts share the tokens' keys, as by default; left unset, their
                # repository is /etc/keystone/fernet-keys and Keystone will not start.
                "fernet_receipts": {"key_repository": str(data / "fernet-keys")},
                "credential": {"key_repository": str(data / "credential-keys")},
            }
        )
    )
    _key_repository(data / "fernet-keys")
    _key_repository(data / "credential-keys")
    manage = [find_binary("keystone-manage"), "--config-file", str(conf)]
    password = _bootstrapped(data, manage, url, schema_cache)
    (data / "kiln_keystone_wsgi.py").write_text(KEYSTONE_WSGI)
    env = {"OS_KEYSTONE_CONFIG_DIR": str(data)}
    pid = _gunicorn("kiln_keystone_wsgi:application", port, data, log, env)
    try:
        wait_http(url, pid, log, timeout=120)
        keystone = Keystone(url, password, pid)
        token = keystone_token(keystone)
        _move_identity_endpoints(keystone, token)
        for project in projects:
            keystone.users[project] = (project, secrets.token_hex(12))
            _add_member(keystone, token, project, keystone.users[project][1])
    except BaseException:
        stop_pid(pid)
        raise
    return keystone


@dataclass(frozen=True)
class Glance:
    url: str  # http://127.0.0.1:PORT
    region: str  # its endpoint's region in Keystone's catalogue
    import_methods: tuple[str, ...]
    data: Path  # its file store, staging and tasks directories live here
    pid: int


GLANCE_IMPORT_METHODS = ("glance-direct", "web-download")


def register_image_endpoint(keystone: Keystone, region: str, url: str) -> None:
    """The image service in Keystone's catalogue at url, in region."""
    token = keystone_token(keystone)
    api = keystone.url
    regions = _api("GET", f"{api}/regions", token)[0]["regions"]
    assert isinstance(regions, list)
    if region not in {r["id"] for r in regions}:
        _api("POST", f"{api}/regions", token, {"region": {"id": region}})
    services = _api("GET", f"{api}/services?type=image", token)[0]["services"]
    assert isinstance(services, list)
    if services:
        service_id = services[0]["id"]
    else:
        service = {"service": {"type": "image", "name": "glance"}}
        service_id = _id_of(_api("POST", f"{api}/services", token, service)[0], "service")
    for interface in ("public", "internal", "admin"):
        endpoint = {"service_id": service_id, "interface": interface, "url": url}
        _api("POST", f"{api}/endpoints", token, {"endpoint": {**endpoint, "region_id": region}})


def glance_paste_ini() -> Path:
    """The paste pipeline the glance wheel installs under the environment's etc/."""
    for prefix in (sys.prefix, sys.base_prefix, "/usr/local", "/usr"):
        found = Path(prefix) / "etc" / "glance" / "glance-api-paste.ini"
        if found.is_file():
            return found
    raise ServerError("glance-api-paste.ini not found: run the set-up command in README.md")


def _noauth_paste_ini(data: Path) -> Path:
    """The stock pipeline with Keystone's authtoken replaced by
    glance_noauth's filter: Glance without Keystone, as standalone set-ups run it."""
    stock = glance_paste_ini().read_text()
    text = stock.replace("osprofiler authtoken context", "osprofiler kiln_identity context")
    text += (
        "\n[filter:kiln_identity]\n"
        "paste.filter_factory = kiln_devstack.devservers.glance_noauth:filter_factory\n"
    )
    path = data / "glance-api-paste.ini"
    path.write_text(text)
    return path


def start_glance(
    data: Path,
    log: Path,
    keystone: Keystone | None,
    region: str = "RegionOne",
    import_methods: tuple[str, ...] = GLANCE_IMPORT_METHODS,
    schema_cache: Path | None = None,
) -> Glance:
    """Glance (WSGI under gunicorn) with Keystone auth, a file store, the staging
    and tasks stores, and import_methods enabled ("()": import disabled, only
    the legacy upload). web-download may fetch from 127.0.0.1 (only), on
    any port, so tests can serve images from loopback. Its endpoint
    is registered in Keystone under region (one Glance per region).
    keystone None: no Keystone at all (clouds.yaml `auth_type: none` and the
    endpoint), every caller the one project (glance_noauth).
    schema_cache: as for start_keystone."""
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    for sub in ("images", "staging", "tasks", "cache"):
        (data / sub).mkdir(exist_ok=True)
    (data / "glance-api.conf").write_text(
        _ini(
            {
                "DEFAULT": {
                    "enabled_backends": "fs:file",
                    "enabled_import_methods": "[" + ",".join(import_methods) + "]",
                    "worker_self_reference_url": url,
                    "image_cache_dir": str(data / "cache"),
                    "log_file": str(data / "glance-app.log"),
                },
                "database": {"connection": f"sqlite:///{data / 'glance.db'}"},
                "glance_store": {"default_backend": "fs"},
                "fs": {"filesystem_store_datadir": str(data / "images")},
                "os_glance_staging_store": {"filesystem_store_datadir": str(data / "staging")},
                "os_glance_tasks_store": {"filesystem_store_datadir": str(data / "tasks")},
                **_auth_sections(data, keystone),
                # web-download refuses loopback and ports other than 80 and
                # 443 by default; tests serve images on 127.0.0.1's free ports.
                "import_filtering_opts": {"allowed_ports": "[]", "allowed_hosts": "[127.0.0.1]"},
            }
        )
    )
    conf = data / "glance-api.conf"
    manage: list[str | os.PathLike[str]] = [
        find_binary("glance-manage"),
        "--config-file",
        conf,
        "db_sync",
    ]
    _migrated(data / "glance.db", "glance", schema_cache, manage)
    if keystone is not None:
        register_image_endpoint(keystone, region, url)
    env = {"OS_GLANCE_CONFIG_DIR": str(data)}
    pid = _gunicorn("glance.wsgi.api:application", port, data, log, env)
    try:
        # /v2/images answers once the app is loaded: 401 (unauthenticated) with
        # Keystone, 200 without.
        ready = (401,) if keystone is not None else (200,)
        wait_http(f"{url}/v2/images", pid, log, timeout=120, ok=ready)
    except BaseException:
        stop_pid(pid)
        raise
    return Glance(url, region, import_methods, data, pid)


def _auth_sections(data: Path, keystone: Keystone | None) -> dict[str, dict[str, str]]:
    """glance-api.conf's paste pipeline and, with Keystone, its authtoken settings."""
    if keystone is None:
        return {"paste_deploy": {"flavor": "keystone", "config_file": str(_noauth_paste_ini(data))}}
    auth = keystone.url.rsplit("/v3", 1)[0]
    return {
        "paste_deploy": {"flavor": "keystone", "config_file": str(glance_paste_ini())},
        "keystone_authtoken": {
            "www_authenticate_uri": auth,
            "auth_url": auth,
            "auth_type": "password",
            "username": "admin",
            "password": keystone.admin_password,
            "project_name": "admin",
            "user_domain_id": "default",
            "project_domain_id": "default",
        },
    }


def write_noauth_clouds_yaml(path: Path, cloud: str, glance: Glance) -> Path:
    """A clouds.yaml naming a Glance without Keystone (`auth_type: none`)."""
    clouds = {cloud: {"auth_type": "none", "image_endpoint_override": glance.url}}
    path.write_text(json.dumps({"clouds": clouds}, indent=2) + "\n")
    return path


def write_clouds_yaml(path: Path, keystone: Keystone, regions: tuple[str, ...]) -> Path:
    """A clouds.yaml with a cloud per Keystone project (named like it; its one
    member user) and "admin", each with regions: what a Kiln operator writes."""
    clouds: dict[str, object] = {}
    users = {"admin": ("admin", keystone.admin_password), **keystone.users}
    for project, (user, password) in users.items():
        clouds[project] = {
            "auth": {
                "auth_url": keystone.url,
                "username": user,
                "password": password,
                "project_name": project,
                "user_domain_id": "default",
                "project_domain_id": "default",
            },
            "regions": list(regions),
            "identity_api_version": 3,
            "interface": "public",
        }
    # JSON is YAML: no yaml dependency in kiln_common for a test file.
    path.write_text(json.dumps({"clouds": clouds}, indent=2) + "\n")
    return path
