"""Headless Chromium for the browser tests: where it is, and what a missing one means."""

from __future__ import annotations

import os
import shutil

import pytest


def chromium_path() -> str:
    """Debian's Chromium (`.ci/run` installs it); required in CI, skipped on a user's clone without it."""
    path = os.environ.get("VQRF_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("headless Chromium is missing in CI (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium, or set VQRF_CHROMIUM)")
    return path
