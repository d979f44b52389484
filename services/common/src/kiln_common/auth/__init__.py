"""Who may do what: a caller's Identity (tenant and role), from a bearer token
(a static Kiln token or an OIDC JWT), checked in one gRPC server interceptor
every service installs (docs/security.md, "Identity")."""

from kiln_common.auth.identity import Identity, Role, Verb, allowed, caller

__all__ = ["Identity", "Role", "Verb", "allowed", "caller"]
