"""The build's stages, in the order a build runs them:

  bootstrap (kiln_builder.bootstrap) | base (base: a customised build's image)
  -> packages, files, run, sysprep (edits; in vm isolation, in_appliance)
  -> checks (kiln_builder.checks) -> disk (kiln_builder.disk)
  -> outputs (kiln_builder.outputs, sbom) -> boot-test (boot_test)

model holds what they share (options, step records, the result). The engine
(kiln_builder.engine.Bake) plans them, keys and caches the layers, holds the
build's state and resources, and runs the stages in order."""
