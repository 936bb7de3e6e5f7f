"""Training (the lead writes this package; only ``memory`` lives here so far)."""
