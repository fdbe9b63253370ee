"""report.html in a real browser: Debian's headless Chromium, offline, from a file:// path.

`.ci/run` installs it (`apt-get install -y chromium`). Without /usr/bin/chromium the tests skip, except under CI
(the CI environment variable set), where a missing browser is a failure.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from fake_run import SCRIPT, write_run
from kit.report.write import write_report

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing under CI: `.ci/run` must `apt-get install -y chromium`")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium); these tests need a real browser")
    folder = write_run(tmp_path_factory.mktemp("run"))
    return write_report(folder)[1]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


def read_png(path: Path) -> np.ndarray:
    """Pixels [height, width, channels] of a non-interlaced 8-bit RGB or RGBA PNG (zlib + struct only)."""
    data, pos, idat, header = path.read_bytes(), 8, [], None
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body, pos = data[pos + 8:pos + 8 + n], pos + 12 + n
        header = struct.unpack(">IIBBBBB", body) if kind == b"IHDR" else header
        idat += [body] if kind == b"IDAT" else []
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unsupported PNG header {header}"
    bpp = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, width * bpp + 1)
    out = np.zeros((height, width * bpp), np.uint8)
    prev = np.zeros(width * bpp, np.uint8)
    for y in range(height):
        out[y] = prev = _unfilter(int(raw[y, 0]), raw[y, 1:], prev, bpp)
    return out.reshape(height, width, bpp)


def _unfilter(kind: int, line: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """Undo one scanline's PNG filter (None, Sub, Up, Average, Paeth)."""
    if kind == 0:
        return line
    if kind == 2:
        return line + prev  # uint8 arithmetic wraps mod 256, as PNG wants
    if kind == 1:
        return (np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.int64) % 256).astype(np.uint8).ravel()
    cur, up = bytearray(line.tobytes()), prev.tobytes()
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        b = up[i]
        if kind == 3:
            cur[i] = (cur[i] + (a + b) // 2) & 255
            continue
        c = up[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    return np.frombuffer(bytes(cur), np.uint8)


def test_report_dom_has_highlighted_tokens_and_no_script(report_html, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", report_html.as_uri()).stdout
    assert dom.count('class="kit-t kit-hit"') >= 6 * 2, "each top latent's example and card outlines its token"
    assert "background:#ff8c00" in dom.replace(" ", ""), "the strongest tokens are drawn orange"
    assert "<script" not in dom.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom, \
        f"{SCRIPT} from the data must reach the page as text"
    assert 'id="attribution"' in dom and "Wikipedia" in dom


def test_report_screenshot_is_coloured(report_html, tmp_path):
    png = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={png}", "--window-size=1200,2000", report_html.as_uri())
    rgb = read_png(png)[..., :3].astype(int)
    assert rgb.shape[:2] == (2000, 1200)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    non_white = (rgb.min(axis=-1) < 200).mean()
    orange = ((r > 220) & (g > 100) & (g < 215) & (b < 140)).sum()
    assert non_white > 0.01, f"the page looks blank ({non_white:.2%} non-white pixels)"
    assert orange > 500, f"expected orange token highlights and bars, found {orange} orange pixels"


def test_png_reader_against_a_known_image(tmp_path):
    """Every filter type round-trips: a PNG written by hand with rows filtered 0..4 reads back exactly."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (10, 7, 3), dtype=np.uint8)
    rows, prev = [], np.zeros(21, np.int64)
    for y in range(10):
        kind, cur = y % 5, img[y].ravel().astype(np.int64)
        left = np.concatenate([np.zeros(3, np.int64), cur[:-3]])
        upleft = np.concatenate([np.zeros(3, np.int64), prev[:-3]])
        p = left + prev - upleft
        paeth = np.where((abs(p - left) <= abs(p - prev)) & (abs(p - left) <= abs(p - upleft)), left,
                         np.where(abs(p - prev) <= abs(p - upleft), prev, upleft))
        pred = [0, left, prev, (left + prev) // 2, paeth][kind]
        rows.append(bytes([kind]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
        prev = cur

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    png = tmp_path / "t.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 7, 10, 8, 2, 0, 0, 0))
                    + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))
    assert (read_png(png) == img).all()
