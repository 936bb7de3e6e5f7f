"""The latent store (docs/format.md): a Zarr v3 group of codes, its build state and checksums,
and its residual and mask layers.

Import from the modules, lowest first: :mod:`.layout` (where each array lives, token
coordinates), :mod:`.meta` (the attributes' schema, metadata digests), :mod:`.locks` (writer
locks), :mod:`.spec` (``GroupSpec``, ``StoreSpec``, parts, ``StoreView``), :mod:`.arrays` (chunk
reads, corrupt-chunk errors), :mod:`.residual` and :mod:`.masks` (the two layers), :mod:`.core`
(``LatentStore``: create, open, write, finish), :mod:`.info` (what ``info`` shows),
:mod:`.verify` (``verify``), :mod:`.cleanup` (what killed runs left at an output).
"""
