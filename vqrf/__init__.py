"""vqrf: train grid radiance fields and compress them to about 1 MB."""

import os

# Large CPU tensors (sample batches, gradients) are allocated every step; backing them with transparent huge pages
# halves the cost of first touching that memory. Read by torch at its first allocation, so it is set before torch loads.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
