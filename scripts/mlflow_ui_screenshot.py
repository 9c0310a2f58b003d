"""Screenshot of the MLflow UI on a real quantsweep store, taken with headless Chromium.

Without --store it first makes a small real store: a 2-point `run.py -m` sweep of a tiny random Llama on a
tiny HellaSwag-layout file (built as the tests build them). Then it starts `mlflow server` on 127.0.0.1 on a
free port, opens the experiment's runs table with quantsweep's key-metrics view, expands the sweep's parent
run to show its children, saves the PNG and stops the server.

    .venv/bin/python scripts/mlflow_ui_screenshot.py                       # -> docs/img/mlflow-ui.png
    .venv/bin/python scripts/mlflow_ui_screenshot.py --store mlruns/mlflow.db --out /tmp/ui.png
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny model and data the tests build

from conftest import base_overrides, build_tiny_llama, sentence, write_hellaswag_jsonl  # noqa: E402

from quantsweep import tracking  # noqa: E402

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,900",
]
# MLflow 3.17's UI opens an experiment on GenAI pages unless told otherwise; this query asks for the runs
# table with the key-metrics view that tracking.setup saves on the experiment.
RUNS_QUERY = f"workflowType=machine_learning&viewStateShareKey={tracking.VIEW_ID}"
VIEWPORT = {"width": 1600, "height": 900, "deviceScaleFactor": 1, "mobile": False}
# The +/- button before a run's name that shows its child runs (runNameCellRenderer in MLflow's UI).
EXPAND = 'button[data-component-id$="runnamecellrenderer.tsx_46"]'
# True once the table shows more than one run (the sweep's parent and its children).
MANY_RUNS = """new Set([...document.querySelectorAll('.ag-row a[href*="/runs/"]')].map(a => a.href)).size>1"""
# Expand every sweep, close the assistant panel and the shared-view banner, where they are shown.
CLICK_ALL = f"""(() => {{
  const selectors = [{EXPAND!r}, 'button[data-component-id="mlflow.assistant.chat_panel.close"]',
                     'button[data-component-id="mlflow.experiment_page.shared_view.dismiss"]'];
  for (const s of selectors) document.querySelectorAll(s).forEach(b => b.click());
}})()"""


def make_store(work: Path) -> Path:
    """A 2-point sweep (W4A16 RTN, group 64 and 32) through run.py; returns the SQLite file."""
    model = build_tiny_llama(work / "tiny-llama")
    task = write_hellaswag_jsonl(work / "hellaswag.jsonl")
    rng = random.Random(1)
    calib = work / "calib.txt"
    calib.write_text("\n".join(sentence(rng, 40) for _ in range(32)) + "\n")
    overrides = [*base_overrides(model, task, calib, work), "scheme=W4A16", "scheme.group_size=64,32"]
    cmd = [sys.executable, "run.py", "-m", *overrides, f"hydra.sweep.dir={work}/multirun"]
    subprocess.run(cmd, cwd=ROOT, env=ENV, check=True, timeout=1200)
    return work / "mlruns" / "mlflow.db"


def experiment_id(db: Path, name: str) -> str:
    """The experiment's id, after tracking.setup gave it the tags the UI reads (an older store lacks them)."""
    import mlflow

    from quantsweep.config import TrackingConfig

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    if mlflow.get_experiment_by_name(name) is None:
        raise SystemExit(f"no experiment {name!r} in {db}: pass --experiment with the store's experiment")
    return tracking.setup(TrackingConfig(uri=f"sqlite:///{db}", experiment=name))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_up(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"mlflow server exited with {server.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow server did not answer {url}/health within {timeout:.0f} s")


class DevTools:
    """Chromium driven over its DevTools protocol on --remote-debugging-pipe: NUL-ended JSON on fds 3 and 4.

    A plain `chromium --screenshot` cannot click, and the sweep's children show only once its row is expanded.
    """

    def __init__(self, chromium: str, profile: str):
        # The shell hands our stdin pipe to Chromium as fd 3 (commands) and our stdout pipe as fd 4 (answers).
        shell = 'exec "$@" 3<&0 4>&1 </dev/null >/dev/null'
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(
            ["sh", "-c", shell, "sh", chromium, *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.ids = itertools.count(1)
        self.pending = b""

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params: Any) -> dict:
        """Send one command and return its result, skipping the events that arrive meanwhile."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        number = next(self.ids)
        message = {"id": number, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self.proc.stdin.write(json.dumps(message).encode() + b"\0")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self.pending:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                    raise TimeoutError(f"chromium did not answer {method} within {timeout:.0f} s")
                chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited with {self.proc.wait()} during {method}")
                self.pending += chunk
            raw, self.pending = self.pending.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == number:
                if "error" in answer:
                    raise RuntimeError(f"chromium refused {method}: {answer['error']}")
                return answer["result"]

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


def wait_for(browser: DevTools, session: str, script: str, what: str, timeout: float = 60) -> None:
    """Evaluate `script` in the page until it returns true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = browser.call("Runtime.evaluate", session, expression=script, returnByValue=True)
        if found["result"].get("value") is True:
            return
        time.sleep(0.5)
    raise SystemExit(f"the MLflow page did not show {what} within {timeout:.0f} s")


def screenshot(url: str, png: Path, chromium: str) -> None:
    """Open `url`, expand the runs that have children, close the assistant panel, save a PNG."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        browser = DevTools(chromium, profile)
        try:
            target = browser.call("Target.createTarget", url="about:blank")["targetId"]
            session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            browser.call("Emulation.setDeviceMetricsOverride", session, **VIEWPORT)
            browser.call("Page.navigate", session, url=url)
            wait_for(browser, session, f"document.querySelectorAll({EXPAND!r}).length > 0", "a sweep's row")
            browser.call("Runtime.evaluate", session, expression=CLICK_ALL)
            wait_for(browser, session, MANY_RUNS, "the sweep's child runs")
            time.sleep(1)  # let the table settle after expanding
            shot = browser.call("Page.captureScreenshot", session, format="png")["data"]
            png.write_bytes(base64.b64decode(shot))
        finally:
            browser.close()


def stop(server: subprocess.Popen) -> None:
    """Stop the server and what it started in its process group (its job consumers)."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)  # consumers that outlived the server


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--store", type=Path, help="an existing SQLite store (default: a tiny new one)")
    parser.add_argument("--experiment", default="quantsweep")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "mlflow-ui.png")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: install it (apt-get install -y chromium)")
    if args.store is not None and not args.store.is_file():
        raise SystemExit(f"--store {args.store} is not a file: pass the SQLite file, e.g. mlruns/mlflow.db")

    with tempfile.TemporaryDirectory(prefix="quantsweep-ui-") as tmp:
        db = args.store.resolve() if args.store else make_store(Path(tmp))
        exp = experiment_id(db, args.experiment)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server_cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}"]
        server = subprocess.Popen(
            [*server_cmd, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=ENV,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_up(url, server)
            page = f"{url}/#/experiments/{exp}/runs?{RUNS_QUERY}"
            screenshot(page, args.out, chromium)
            print(f"{page} -> {args.out}")
        finally:
            stop(server)


if __name__ == "__main__":
    main()
