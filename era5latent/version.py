"""The package version, apart from ``era5latent/__init__`` so that any module can name it
without importing the package's public API (which sits above every other layer)."""

__version__ = "0.1.0"
