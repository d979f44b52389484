"""The build's stages, one module each, in the order a build runs them:

  bootstrap | base (a customised build's image)
  -> packages, files, run, sysprep (in vm isolation: in_appliance)
  -> checks -> disk (from scratch) -> outputs -> boot_test

Each is a model.Stage: its name, the recipe sections it reads, its layer's
inputs (the layered ones), and run. model holds what they share (options, step
records, the result). The engine (kiln_builder.engine.Bake) plans the list,
chains and caches the layers, holds the build's state and resources, and runs
the stages in order."""
