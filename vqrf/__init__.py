"""vqrf: train grid radiance fields and compress them to about 1 MB."""

__version__ = "0.1.0"
