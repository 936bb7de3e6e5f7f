"""``python -m era5latent.cli`` (the same as ``python -m era5latent``)."""

from era5latent.cli import main

main()
