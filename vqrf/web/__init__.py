"""The browser player: static files (``index.html`` and its ES modules) that decode a ``.vqrf`` and render it with
WebGL2 on the viewer's own GPU, plus the two ways vqrf hands them out: a folder for any static file server
(``vqrf export-web``) and a local server for one file (``vqrf view --web``).
"""

from __future__ import annotations

import functools
import http.server
import shutil
import tempfile
import threading
from pathlib import Path

from vqrf.errors import VqrfError

__all__ = ["PAGE_FILES", "SCENE_NAME", "export_site", "SiteServer"]

WEB_DIR = Path(__file__).resolve().parent
SCENE_NAME = "scene.vqrf"
"""The file name the page fetches when its URL names no other (``?file=...``)."""
PAGE_FILES = tuple(sorted(p.name for p in WEB_DIR.iterdir() if p.suffix in (".html", ".js", ".css", ".txt")))
"""The page's own files, copied as they are: nothing is fetched from anywhere else."""


def export_site(vqrf_path: Path, out_dir: Path, force: bool = False) -> Path:
    """Write a static site playing ``vqrf_path`` to ``out_dir``: the page's files and the file as ``scene.vqrf``.

    The file is decoded first, so a corrupt one is refused before anything is written. The folder is assembled beside
    ``out_dir`` and renamed into place, so an interrupted export leaves no half-written site; an existing ``out_dir``
    is replaced only with ``force``. Returns ``out_dir``.
    """
    from vqrf.compress.codec import decode_field
    from vqrf.models import is_compressed

    vqrf_path, out_dir = Path(vqrf_path), Path(out_dir)
    if not vqrf_path.is_file():
        raise VqrfError(vqrf_path, "no such file")
    if not is_compressed(vqrf_path):
        raise VqrfError(vqrf_path, "is not a .vqrf file; the browser plays compressed files (vqrf compress it first)")
    data = vqrf_path.read_bytes()
    decode_field(data, vqrf_path)  # the same checks the page makes, with Python's one-line error
    if out_dir.exists() and not force:
        raise VqrfError(out_dir, "already exists; pass --force to overwrite")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name in PAGE_FILES:
            shutil.copyfile(WEB_DIR / name, staging / name)
        (staging / SCENE_NAME).write_bytes(data)
        if out_dir.exists():
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass


class SiteServer:
    """A static file server for a site folder on ``host:port`` (port 0: any free one), in a background thread."""

    def __init__(self, site: Path, host: str = "127.0.0.1", port: int = 0):
        handler = functools.partial(_QuietHandler, directory=str(site))
        try:
            self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        except OSError as e:
            raise VqrfError(None, f"cannot listen on {host}:{port} ({e.strerror or e})") from None
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
