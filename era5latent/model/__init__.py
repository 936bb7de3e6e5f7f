"""The Weather Latent Autoencoder (``wla``, no IO) and its checkpoint files (``checkpoint``)."""
