"""Screenshots of a run's TensorBoard as a person sees it, taken by headless Chromium.

Serves TensorBoard on 127.0.0.1 over the run's parent folder and writes, under docs/screenshots/:
landing.png (the page TensorBoard opens: Time Series), summary.png (the Custom Scalars dashboard),
hparams.png (HParams) and text.png (the verdict's text). With --run it reuses a finished run;
without, it trains the short configuration below first (a minute or two on a CPU).

    python docs/screenshots.py [--run runs/demo] [--out docs/screenshots]

Needs Chromium (Debian: apt-get install chromium). Not a test: `make test` needs no browser.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHORT_RUN = ["--max-steps", "60", "--gap-every", "10", "--val-every", "15", "--eval-size", "256"]
PAGES = {  # file -> the page's fragment; forceSVG draws charts without WebGL
    "landing": "",
    "summary": "#custom_scalars",
    "hparams": "#hparams",
    "text": "#text",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_short_run(output: Path) -> Path:
    cmd = [str(BIN / "signaldrift"), "train", *SHORT_RUN, "--name", "shots", "--output", str(output),
           "--overwrite", "--no-progress"]
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return output / "shots"


def serve(logdir: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(BIN / "tensorboard"), "--logdir", str(logdir), "--host", "127.0.0.1",
                             "--port", str(port), "--reload_interval", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/data/plugins_listing"
    for _ in range(360):  # a demo run's ~500 tags and histograms load before the first page: up to 3 minutes here
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("TensorBoard did not start within 3 minutes")


def shoot(browser: str, url: str, path: Path, size: str) -> None:
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={size}",
                        "--virtual-time-budget=20000", f"--screenshot={path}", url],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=None, help="a finished run folder (default: train a short run)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="where the PNGs go")
    p.add_argument("--size", default="1920,1080", help="browser window, width,height in pixels (a common desktop)")
    p.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    args = p.parse_args(argv)
    if args.run is not None and not (args.run / "run.json").is_file():
        p.error(f"--run {args.run} is not a run folder (no run.json); pass a finished run or omit --run")
    tmp = Path(tempfile.mkdtemp(prefix="signaldrift-shots-"))
    try:
        run = args.run if args.run is not None else train_short_run(tmp / "runs")
        # The run's parent, as the README says to serve it: runs compare side by side.
        port = free_port()
        server = serve(run.parent, port)
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            for name, fragment in PAGES.items():
                shoot(args.browser, f"http://127.0.0.1:{port}/?forceSVG=true{fragment}", args.out / f"{name}.png",
                      args.size)
                print(f"wrote {args.out / (name + '.png')}")
        finally:
            server.terminate()
            server.wait(timeout=30)
        subprocess.run([str(BIN / "signaldrift"), "report", str(run)], check=True, stdout=subprocess.DEVNULL)
        shutil.copyfile(run / "report.png", args.out / "report.png")
        print(f"wrote {args.out / 'report.png'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
