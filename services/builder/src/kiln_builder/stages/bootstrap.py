"""The bootstrap stage of a from-scratch build: mmdebstrap (kiln_builder.bootstrap)
through the build's egress proxy writes the first layer, keyed by everything
that decides its content; the tree is that layer, extracted."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from kiln_builder import layers
from kiln_builder.bootstrap import BootstrapSpec, bootstrap, layer_key, spec_for
from kiln_builder.fingerprint import AptSource
from kiln_builder.stages.model import Stage, StepRecord

if TYPE_CHECKING:
    from kiln_builder.engine import Bake


class Bootstrap(Stage):
    name = layer = "bootstrap"
    reads = ("from.bootstrap",)

    def __init__(self, bake: Bake) -> None:
        boot = bake.recipe.from_.bootstrap
        assert boot is not None
        self.spec: BootstrapSpec = spec_for(
            boot.distro, boot.release, boot.arch, boot.mirror,
            bake.opts.epoch, bake.opts.default_mirror,
        )  # fmt: skip
        # The first layer: chained from no other, but from its mirror's state.
        mine = AptSource(self.spec.mirror.rstrip("/"), self.spec.release).part
        self.key = layer_key(self.spec, tuple(p for p in bake.opts.apt_state if p[0] == mine))

    async def run(self, bake: Bake, record: StepRecord, held: AsyncExitStack) -> None:
        assert bake.route is not None, "the egress proxy runs while the build does"
        proxy = bake.route.proxy  # apt's proxy variables: the build's egress proxy
        env = {"http_proxy": proxy, "https_proxy": proxy, "no_proxy": ""}
        await bootstrap(self.spec, bake.layers.path(self.layer, self.key), env)

    async def keep(self, bake: Bake) -> None:
        """mmdebstrap wrote the layer itself: adopted, then extracted as the tree."""
        await bake.layers.adopt(self.layer, self.key)
        await layers.extract(bake.layers.path(self.layer, self.key), bake.rootdir)
