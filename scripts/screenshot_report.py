"""Render an HTML report (``pld report``) in headless Chromium: a PNG screenshot, optionally the
rendered DOM, and a check that the picture is not blank. Exits non-zero on any failure.

    python scripts/screenshot_report.py bench/results/report-stereoset-dev.html \
        [--out report.png] [--dom report.dom.html] [--width 1280] [--height 2000]

Needs Chromium (Debian: apt-get install chromium); nothing is fetched from the network.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",  # root in a container has no user namespace for the sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def chromium() -> str | None:
    """The Chromium binary: $CHROMIUM, /usr/bin/chromium, or chromium on PATH."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(
    binary: str, extra: list[str], page: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="pld-chromium-") as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def screenshot(
    page: Path, png: Path, *, width: int = 1280, height: int = 2000, timeout: float = 90
) -> None:
    """Write a ``width`` x ``height`` screenshot of ``page`` to ``png``; raise on failure."""
    binary = chromium()
    if binary is None:
        raise RuntimeError(
            "Chromium not found; install it (apt-get install chromium) or set CHROMIUM"
        )
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    proc = _run(
        binary, [f"--screenshot={png.resolve()}", f"--window-size={width},{height}"], page, timeout
    )
    if proc.returncode != 0 or not png.is_file():
        raise RuntimeError(
            f"chromium exited {proc.returncode} without {png}:\n{proc.stderr[-2000:]}"
        )
    if png.read_bytes()[:8] != PNG_MAGIC:
        raise RuntimeError(f"{png} is not a PNG file")


def dump_dom(page: Path, *, timeout: float = 90) -> str:
    """The DOM of ``page`` after Chromium rendered it, serialised as HTML."""
    binary = chromium()
    if binary is None:
        raise RuntimeError(
            "Chromium not found; install it (apt-get install chromium) or set CHROMIUM"
        )
    proc = _run(binary, ["--dump-dom"], page, timeout)
    if proc.returncode != 0 or "<html" not in proc.stdout:
        raise RuntimeError(f"chromium --dump-dom exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return proc.stdout


def distinct_colours(png: Path) -> int:
    """How many distinct RGB colours the picture has (1: blank)."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    return len(np.unique(pixels, axis=0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path, help="the report's HTML file")
    ap.add_argument("--out", type=Path, help="PNG to write (default: next to the HTML, .png)")
    ap.add_argument("--dom", type=Path, help="also write the rendered DOM here")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=2000)
    args = ap.parse_args(argv)
    if not args.html.is_file():
        print(f"error: no file {args.html}", file=sys.stderr)
        return 2
    png = args.out or args.html.with_suffix(".png")
    try:
        screenshot(args.html, png, width=args.width, height=args.height)
        colours = distinct_colours(png)
        if colours < 2:
            raise RuntimeError(f"{png} is blank (one colour)")
        if args.dom:
            args.dom.write_text(dump_dom(args.html), encoding="utf-8")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {png} ({args.width}x{args.height}, {colours} colours)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
