"""Regenerate the TensorBoard pictures in docs/tensorboard.md from real demo runs.

Trains the demo (draft_lv + demo: the shipped toy model drawing shapes) and a variant of
it, serves their logs with TensorBoard on 127.0.0.1 and photographs every tab the runs fill
(time series, scalars, custom scalars, images, histograms, distributions, hparams) with
headless Chromium (Debian's `chromium` package: `apt-get install chromium`). Run:
`make screenshots`.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The demo, and the demo with another learning rate and LoRA rank: two runs to compare (the
# HParams tab puts the settings that differ first).
DEMO_RUNS = [
    [],
    [
        "--model.optimizer.init_args.lr",
        "0.001",
        "--model.lora.rank",
        "4",
        "--model.lora.alpha",
        "4",
    ],
]
# Every tab the demo runs fill: file name -> (page, window width x height in pixels).
PAGES = {
    "tensorboard_time_series.png": ("?forceSVG=true&tagFilter=%5Eval%2F#timeseries", (1400, 1400)),
    "tensorboard_scalars.png": ("#scalars&tagFilter=%5Eval%2F&_smoothingWeight=0", (1400, 1400)),
    "tensorboard_custom_scalars.png": ("#custom_scalars&_smoothingWeight=0", (1400, 2600)),
    "tensorboard_images.png": ("#images", (1400, 1200)),
    "tensorboard_histograms.png": ("#histograms", (1400, 1200)),
    "tensorboard_distributions.png": ("#distributions", (1400, 1200)),
    "tensorboard_hparams.png": ("#hparams", (2800, 600)),
}
# No outlier clipping (and, in the page address, no smoothing): both hide a validation
# curve of a few points (what docs/tensorboard.md tells readers to set in the left panel).
SETTINGS = {"_ignoreYOutliers": "false"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_served(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read(1)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"TensorBoard did not answer at {url} within {seconds:.0f} s")


def screenshot(chromium: str, url: str, out: Path, size: tuple[int, int]) -> None:
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tempfile.mkdtemp()}", "--hide-scrollbars",
         "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=20000",
         f"--screenshot={out}",
         url],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def settings_proxy(tensorboard: str) -> http.server.ThreadingHTTPServer:
    """A local pass-through to TensorBoard whose front page first stores `SETTINGS` in the
    browser's localStorage, where TensorBoard keeps them (a fresh browser profile has
    none, and the page address cannot set them)."""
    script = "".join(
        f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in SETTINGS.items()
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            self.forward(None)

        def do_POST(self) -> None:  # noqa: N802 - the HParams tab asks by POST
            self.forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

        def forward(self, data: bytes | None) -> None:
            request = urllib.request.Request(tensorboard + self.path, data=data)
            for header in ("Content-Type", "X-XSRF-Protected"):
                if self.headers.get(header):
                    request.add_header(header, self.headers[header])
            with urllib.request.urlopen(request, timeout=60) as answer:
                body, kind = answer.read(), answer.headers.get("Content-Type", "")
            if self.path in ("/", "/index.html"):
                body = body.replace(b"<head>", f"<head><script>{script}</script>".encode(), 1)
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)


def main(argv: list[str]) -> None:
    """`--logs DIR`: photograph an existing log folder instead of training the demo."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    work = Path(tempfile.mkdtemp(prefix="tb-demo-"))
    logs = Path(argv[argv.index("--logs") + 1]) if "--logs" in argv else work / "runs"
    if "--logs" not in argv:
        for overrides in DEMO_RUNS:
            subprocess.run(
                [BIN / "lightning", "fit", "--config", ROOT / "configs/draft_lv.yaml",
                 "--config", ROOT / "configs/demo.yaml", *overrides],
                cwd=work, check=True,
            )  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [BIN / "tensorboard", "--logdir", logs, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    proxy = settings_proxy(f"http://127.0.0.1:{port}")
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        wait_until_served(f"http://127.0.0.1:{port}/")
        base = f"http://127.0.0.1:{proxy.server_address[1]}/"
        time.sleep(5)  # let TensorBoard finish reading the event files
        for name, (page, size) in PAGES.items():
            out = ROOT / "docs" / "images" / name
            out.parent.mkdir(parents=True, exist_ok=True)
            screenshot(chromium, base + page, out, size)
            print(f"wrote {out.relative_to(ROOT)}")
    finally:
        proxy.shutdown()
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
