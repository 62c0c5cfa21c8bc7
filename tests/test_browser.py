"""The report in a real browser: headless Chromium renders it with no console error, every image loads, and a
screenshot is saved.

Also a small tool: ``python tests/test_browser.py REPORT.html OUT.png`` checks any report the same way and saves a
256-colour screenshot of its top (docs/report.png).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                             "/usr/bin/chromium") if p and Path(p).is_file()), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-extensions", "--disable-sync", "--hide-scrollbars", "--mute-audio"]

# Runs first in <head>: collects uncaught errors, console.error calls and failed resource loads, then on load
# writes them with the state of every <img> into <pre id="convae-check">, which --dump-dom prints.
PROBE = """<script>
(function () {
  var problems = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    problems.push(t && t.tagName ? "failed to load " + t.tagName + " " + String(t.src || t.href).slice(0, 60) : "error: " + e.message);
  }, true);
  window.addEventListener("unhandledrejection", function (e) { problems.push("unhandled rejection: " + e.reason); });
  var error = console.error;
  console.error = function () { problems.push("console.error: " + Array.prototype.join.call(arguments, " ")); error.apply(console, arguments); };
  window.addEventListener("load", function () {
    var images = Array.prototype.slice.call(document.images);
    var out = document.createElement("pre");
    out.id = "convae-check";
    out.textContent = JSON.stringify({
      images: images.length,
      broken: images.filter(function (i) { return !i.complete || i.naturalWidth === 0; }).map(function (i) { return i.alt; }),
      sizes: images.map(function (i) { return [i.naturalWidth, i.naturalHeight]; }),
      problems: problems,
      height: document.documentElement.scrollHeight
    });
    document.body.appendChild(out);
  });
})();
</script>"""


def _chromium(args: list[str], profile: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def check_page(html: Path) -> tuple[dict, str]:
    """Open ``html`` with the error probe injected; (what the probe saw, Chromium's log)."""
    with tempfile.TemporaryDirectory(prefix="convae-chromium-") as tmp:
        probed = Path(tmp) / html.name
        probed.write_text(html.read_text().replace("<head>", "<head>" + PROBE, 1))
        result = _chromium(["--virtual-time-budget=10000", "--dump-dom", probed.as_uri()], Path(tmp) / "profile")
    found = re.search(r'<pre id="convae-check">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the page never finished loading; chromium said:\n{result.stderr[-2000:]}"
    text = found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return json.loads(text), result.stderr


def console_errors(log: str) -> list[str]:
    """Lines of Chromium's log that report a page problem: console errors, uncaught exceptions, failed loads."""
    return [line for line in log.splitlines() if "CONSOLE" in line and re.search(r"error|uncaught|failed", line, re.I)
            or "Failed to load resource" in line]


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 2400) -> Path:
    """Save a ``width`` x ``height`` screenshot of the top of ``html`` to ``png``."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="convae-chromium-") as tmp:
        result = _chromium([f"--screenshot={png.resolve()}", f"--window-size={width},{height}", "--virtual-time-budget=10000",
                            html.resolve().as_uri()], Path(tmp) / "profile")
    assert png.is_file(), f"no screenshot; chromium said:\n{result.stderr[-2000:]}"
    return png


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_report_renders_in_chromium_without_errors(tmp_path_factory):
    from PIL import Image, ImageStat

    from convae.report import write_report
    from test_report import make_report_inputs

    inputs = make_report_inputs(tmp_path_factory.mktemp("report"))
    out = tmp_path_factory.mktemp("browser")
    html = write_report(inputs["conv"], compare=inputs["compare"], fcae=inputs["dense"], out=out / "report.html")

    seen, log = check_page(html)
    assert seen["problems"] == [] and console_errors(log) == []
    assert seen["images"] == html.read_text().count("<img") >= 12
    assert seen["broken"] == [] and all(w > 0 and h > 0 for w, h in seen["sizes"])
    assert seen["height"] > 2000  # the whole report laid out, not an error page

    png = screenshot(html, out / "report.png")
    with Image.open(png) as image:
        assert image.size == (1280, 2400)
        assert max(ImageStat.Stat(image.convert("L")).stddev) > 10  # something drawn, not a blank page
    print(f"screenshot: {png}")


if __name__ == "__main__":  # python tests/test_browser.py REPORT.html OUT.png [WIDTH HEIGHT]: check, then a 256-colour screenshot
    from PIL import Image

    if CHROMIUM is None:
        sys.exit("headless Chromium is not installed")
    report, out = Path(sys.argv[1]), Path(sys.argv[2])
    width, height = (int(v) for v in sys.argv[3:5]) if len(sys.argv) > 4 else (1024, 2300)
    seen, log = check_page(report)
    print(json.dumps({k: v for k, v in seen.items() if k != "sizes"}), *console_errors(log), sep="\n")
    screenshot(report, out, width, height)
    with Image.open(out) as image:
        compact = image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    compact.save(out, optimize=True)
    print(out)
