"""A paste filter for a Glance without Keystone, as standalone Glance and
Ironic set-ups run it: in front of Glance's own `context` filter, it sets the
identity headers Keystone's middleware would (one fixed project, admin), and
drops any a client sent. Glance's stock unauthenticated pipeline gives a
context with no project, which its default policy refuses (../INFRA.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
PROJECT = "0c1e5e2f8c3a4b5d9e7f6a5b4c3d2e1f"  # the one project of a Glance without Keystone


def filter_factory(global_conf: dict[str, str], **local: str) -> Callable[[WsgiApp], WsgiApp]:
    project = local.get("project_id", PROJECT)

    def wrap(app: WsgiApp) -> WsgiApp:
        def identified(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
            for key in [k for k in environ if k.startswith(("HTTP_X_", "HTTP_X-"))]:
                del environ[key]  # nothing a client says about who it is counts
            environ.update({
                "HTTP_X_IDENTITY_STATUS": "Confirmed", "HTTP_X_PROJECT_ID": project,
                "HTTP_X_TENANT_ID": project, "HTTP_X_USER_ID": "standalone",
                "HTTP_X_ROLES": "admin,member,reader",
            })  # fmt: skip
            return app(environ, start)

        return identified

    return wrap
