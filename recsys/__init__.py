"""recsys: autoencoder-family recommenders with an honest evaluation harness."""

__version__ = "0.1.0"
