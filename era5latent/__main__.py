"""``python -m era5latent`` (what ``torchrun -m era5latent train ...`` runs on every rank)."""

from era5latent.cli import main

main()
