#!/usr/bin/env python3
"""Check an HTML report in a real headless Chromium: no sideways scrolling, no tiny text.

    python scripts/check_report_layout.py report.html [--width 400] [--screenshot out.png]

The page is copied with a small measuring script added at the end of its body (the
report itself carries no scripts) and shown in an iframe exactly `--width` CSS pixels
wide: headless Chromium will not make its window narrower than 500 px, so a
`--window-size=400,...` alone lays the page out at 500 px and crops the picture. The
script posts its result to the wrapping page, and `--dump-dom` returns that page with the
result in it. Reported:

- `overflow`: how many CSS pixels the document is wider than the window (0 is right);
- `wide`: the elements whose right edge passes the window, first few;
- `small_text`: visible text smaller than `--min-font` (11 px) after any SVG scaling.

Exit 0 when there is nothing to report, 1 when there is, 2 when Chromium is missing or
fails. Chromium runs with a fresh profile and no network features (the flags below).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

MIN_FONT_PX = 11.0
_MARK = "fedaudit-layout-result"

_MEASURE = """
<script>
(function () {
  var min = %(min)s, small = [], wide = [], seen = 0;
  var walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    var node = walker.currentNode, el = node.parentElement;
    if (!el || !node.textContent.trim() || el.closest('script,style,title,desc')) continue;
    var range = document.createRange(); range.selectNodeContents(node);
    var rects = range.getClientRects();
    if (!rects.length || (rects[0].width === 0 && rects[0].height === 0)) continue;
    seen++;
    var size = parseFloat(getComputedStyle(el).fontSize);
    if (el instanceof SVGElement && el.getScreenCTM) {
      var m = el.getScreenCTM(); if (m) size = size * Math.sqrt(Math.abs(m.a * m.d - m.b * m.c));
    }
    if (size < min - 0.01) small.push({text: node.textContent.trim().slice(0, 60), px: Math.round(size * 10) / 10});
  }
  var width = document.documentElement.clientWidth;
  document.querySelectorAll('body *').forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.width && r.right > width + 0.5 && wide.length < 10 && !el.closest('details:not([open]) > :not(summary)')) {
      var cls = el.getAttribute('class') || '';
      wide.push({tag: el.tagName.toLowerCase(), cls: cls, right: Math.round(r.right)});
    }
  });
  var out = {width: width, scroll_width: document.documentElement.scrollWidth,
             overflow: Math.max(0, document.documentElement.scrollWidth - width),
             wide: wide, small_text: small.slice(0, 20), small_count: small.length, text_nodes: seen,
             height: document.documentElement.scrollHeight, sections: {}};
  document.querySelectorAll('section[id]').forEach(function (el) {
    out.sections[el.id] = Math.round(el.getBoundingClientRect().top + scrollY); });
  parent.postMessage(JSON.stringify(out), '*');
})();
</script>
"""

_WRAPPER = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><style>html, body { margin: 0; padding: 0; }</style></head>
<body><iframe src="%(src)s" style="display: block; border: 0; width: %(width)spx;
  height: %(height)spx; margin-top: -%(offset)spx"></iframe>
<pre id="%(mark)s"></pre>
<script>addEventListener('message', function (e) {
  document.getElementById('%(mark)s').textContent = e.data; });</script>
</body></html>
"""


class ChromiumMissing(RuntimeError):
    """No Chromium binary on PATH."""


def chromium() -> str:
    """The Chromium binary, or ChromiumMissing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise ChromiumMissing("chromium is not installed (apt-get install chromium)")


def _flags(profile: Path, width: int, height: int) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": "disabled:"}
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _wrapper(directory: Path, src: str, width: int, height: int, offset: int = 0) -> Path:
    """A page holding `src` in an iframe of exactly width x height CSS pixels, shifted up
    by `offset` pixels (to picture a part of a long page)."""
    wrapper = directory / f"wrapper-{width}.html"
    values = {"src": src, "width": width, "height": height, "offset": offset, "mark": _MARK}
    wrapper.write_text(_WRAPPER % values, encoding="utf-8")
    return wrapper


def measure(html_path: Path, width: int, *, min_font: float = MIN_FONT_PX) -> dict[str, Any]:
    """Lay out `html_path` at `width` CSS pixels in headless Chromium and measure it."""
    binary = chromium()
    html = Path(html_path).read_text(encoding="utf-8")
    script = _MEASURE % {"min": min_font}
    probe = html.replace("</body>", script + "</body>", 1)
    if probe == html:
        raise ValueError(f"{html_path}: no </body> to add the measuring script to")
    with tempfile.TemporaryDirectory(prefix="fedaudit-layout-") as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(probe, encoding="utf-8")
        wrapper = _wrapper(Path(tmp), page.name, width, 900)
        proc = _run(
            [
                binary,
                *_flags(Path(tmp) / "profile", max(width, 500), 900),
                "--virtual-time-budget=10000",
                "--dump-dom",
                wrapper.as_uri(),
            ],
            timeout=120,
        )
    match = re.search(rf'<pre id="{_MARK}">(.+?)</pre>', proc.stdout, re.S)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")
    text = match.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
    return json.loads(text.replace("&amp;", "&"))


def screenshot(
    html_path: Path, out: Path, width: int, height: int | None = None, *, offset: int = 0
) -> Path:
    """A PNG of the page at `width` CSS pixels, `height` tall (default: the whole page),
    starting `offset` pixels down the page."""
    binary = chromium()
    if height is None:
        height = int(measure(html_path, width)["height"]) + 16
    with tempfile.TemporaryDirectory(prefix="fedaudit-shot-") as tmp:
        uri = Path(html_path).resolve().as_uri()
        wrapper = _wrapper(Path(tmp), uri, width, height + offset, offset)
        proc = _run(
            [
                binary,
                *_flags(Path(tmp) / "profile", width, height),
                "--virtual-time-budget=10000",
                f"--screenshot={Path(out).resolve()}",
                wrapper.as_uri(),
            ],
            timeout=120,
        )
    if proc.returncode != 0 or not Path(out).is_file():
        raise RuntimeError(f"chromium screenshot failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return Path(out)


def problems(result: dict[str, Any]) -> list[str]:
    """What is wrong in a `measure` result, in words (empty when the layout is fine)."""
    found = []
    if result["overflow"] > 0:
        found.append(f"page is {result['overflow']} px wider than the window: {result['wide']}")
    if result["small_count"]:
        found.append(
            f"{result['small_count']} text(s) below the minimum size: {result['small_text']}"
        )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("--width", type=int, default=400)
    parser.add_argument("--min-font", type=float, default=MIN_FONT_PX)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--offset", type=int, default=0, help="screenshot from this far down")
    parser.add_argument("--height", type=int, help="screenshot height (default: whole page)")
    args = parser.parse_args(argv)
    try:
        result = measure(args.html, args.width, min_font=args.min_font)
        if args.screenshot:
            height = args.height or int(result["height"]) + 16 - args.offset
            screenshot(args.html, args.screenshot, args.width, height, offset=args.offset)
    except (ChromiumMissing, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    found = problems(result)
    for problem in found:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
