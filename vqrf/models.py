"""Open any model file: a training output (.safetensors) or a compressed .vqrf, as the same LoadedModel."""

from __future__ import annotations

from pathlib import Path

import torch

from vqrf.checkpoint import LoadedModel, load_model
from vqrf.compress.container import MAGIC
from vqrf.errors import VqrfError

__all__ = ["is_compressed", "open_model"]


def is_compressed(path: str | Path) -> bool:
    """Whether ``path`` starts with the .vqrf magic."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def open_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model for rendering; a .vqrf file is decoded on the CPU and then moved to ``device``."""
    path = Path(path)
    if not path.is_file():
        raise VqrfError(path, "no such model file")
    if not is_compressed(path):
        return load_model(path, device)
    from vqrf.compress.codec import decode_field

    try:
        data = path.read_bytes()
    except OSError as e:
        raise VqrfError(path, f"cannot read ({e.strerror})") from None
    return decode_field(data, path).to(device)
