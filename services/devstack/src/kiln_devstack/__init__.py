"""Kiln on one machine: the local stack behind `kiln up` / `kiln down` (stack)
and the real servers that development, tests and benchmarks start on loopback
(devservers: NATS, SeaweedFS, Keystone, Glance). It starts the services as
processes and imports none of them; no service imports it, only the CLI's
`kiln up`, the tests and the benchmarks."""
