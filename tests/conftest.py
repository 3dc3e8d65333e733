"""Shared fixtures: an isolated workspace, tiny images, no network, no ~/.mmviz."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest

from mmviz.store import Workspace


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """Every test gets its own MMVIZ_HOME and no Hugging Face network access."""
    home = tmp_path_factory.mktemp("mmviz-home")
    monkeypatch.setenv("MMVIZ_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    for var in ("MMVIZ_MAX_PIXELS", "MMVIZ_MAX_ZIP_MEMBERS", "MMVIZ_MAX_ZIP_BYTES", "MMVIZ_MAX_UPLOAD_MB",
                "MMVIZ_MAX_IMAGE_BYTES", "MMVIZ_LOCAL_PATHS", "MMVIZ_MAX_ZIP_RATIO", "MMVIZ_MAX_ARRAY_BYTES",
                "MMVIZ_MAX_CAPTION_CHARS", "MMVIZ_VECTOR_DTYPE"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a small machine shared with other jobs, OpenMP threads spinning
    for cores make these tiny models many times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


def image_bytes(size=(16, 16), color=(200, 30, 30), fmt="PNG") -> bytes:
    """A small solid image with one marker pixel (so different colours give different bytes)."""
    from PIL import Image

    im = Image.new("RGB", size, color)
    im.putpixel((0, 0), (255 - color[0], 255 - color[1], 255 - color[2]))
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_image(path: Path, size=(16, 16), color=(200, 30, 30), fmt: str | None = None) -> Path:
    """Write a tiny image; the format follows the suffix unless given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP",
                  ".webp": "WEBP"}[path.suffix.lower()]
    path.write_bytes(image_bytes(size, color, fmt))
    return path


def png_claiming(width: int, height: int) -> bytes:
    """A real 16x16 PNG whose IHDR is patched (with a valid CRC) to claim width x height."""
    data = bytearray(image_bytes((16, 16)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


@pytest.fixture
def make_image():
    """make_image(path, size=(16, 16), color=..., fmt=None) -> path."""
    return write_image


COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


# ---------------------------------------------------------------------------- app pages

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


@pytest.fixture
def app_home(tmp_path, monkeypatch) -> Path:
    """MMVIZ_HOME for an AppTest, marked as launched before (no demo set is created)."""
    h = tmp_path / "home"
    h.mkdir()
    (h / ".demo-offered").touch()
    monkeypatch.setenv("MMVIZ_HOME", str(h))
    return h


def open_page(page: str, timeout: float = 120):
    """An AppTest of the app switched to views/<page>.py, run once, with no exception."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def embedded_demo(home: Path, n: int = 40):
    """The shapes demo set of n pairs in `home`, embedded with the builtin model: (ds, emb)."""
    from mmviz.builtin import make_demo
    from mmviz.embed import embed_dataset

    ws = Workspace(home)
    ds = make_demo(ws, n=n)
    return ds, embed_dataset(ws, ds, "builtin:shapes")
