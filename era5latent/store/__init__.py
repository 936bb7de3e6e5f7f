"""The latent store (docs/format.md): its schema and metadata, layout, creation and build state,
its residual and mask layers, verification, writer locks and the cleanup of killed runs."""
