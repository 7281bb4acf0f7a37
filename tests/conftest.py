"""Shared fixtures. Real data comes from $VQRF_DATA (CI sets it to ../shared/data).

A test that needs real data fails loudly in CI (CI=true) when the data is missing, and skips with a reason on a
user's clone.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest


def _data_root() -> Path | None:
    root = os.environ.get("VQRF_DATA")
    return Path(root).absolute() if root else None


def pytest_configure(config: pytest.Config) -> None:
    # CI passes a path relative to the checkout; subprocesses, Ray workers and symlinks made by tests need it absolute.
    root = _data_root()
    if root is not None:
        os.environ["VQRF_DATA"] = str(root)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    problem = None
    if root is None:
        problem = "VQRF_DATA is not set (point it at the shared data folder with nerf_synthetic/lego, nerf_llff_data/fern, lpips/)"
    elif not root.is_dir():
        problem = f"VQRF_DATA={root} is not a directory"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"real data missing in CI: {problem}")
        pytest.skip(problem)
    return root


def _scene_folder(data_root: Path, relative: str) -> Path:
    path = data_root / relative
    if not path.is_dir():
        pytest.fail(f"{path} missing from VQRF_DATA")
    return path


@pytest.fixture(scope="session")
def lego_dir(data_root: Path) -> Path:
    return _scene_folder(data_root, "nerf_synthetic/lego")


@pytest.fixture(scope="session")
def fern_dir(data_root: Path) -> Path:
    return _scene_folder(data_root, "nerf_llff_data/fern")


@pytest.fixture(scope="session")
def beer_dir(data_root: Path) -> Path:
    return _scene_folder(data_root, "captures/beer")


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    """A small model trained on 12 views of the analytic demo scene (24x24), for tests that render."""
    from vqrf.config import demo_preset
    from vqrf.data.synthetic import make_demo_scene
    from vqrf.train import train

    out = tmp_path_factory.mktemp("demo_model")
    cfg = dataclasses.replace(demo_preset().train, iters=60, batch_rays=512, n_voxel_init=20**3, n_voxel_final=20**3,
                              upsample_at=(), alpha_mask_at=(30,))
    train(make_demo_scene("train", n_views=12, size=24), dataclasses.replace(demo_preset(), train=cfg), out,
          progress=False)
    return out / "model.safetensors"
