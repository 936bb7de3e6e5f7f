"""era5latent: ERA5 to binary latent codes with a Weather Latent Autoencoder, and back."""

__version__ = "0.1.0"
