"""Time from `allting serve` to ready (empty and existing data directory) and idle memory.

The baseline, measured in the same run, is a bare uvicorn app answering /api/readyz-like
requests, so the ratio shows what Allting adds on this (shared, noisy) machine.
Run: .venv/bin/python bench/bench_startup.py
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
BASELINE_APP = """
from fastapi import FastAPI
app = FastAPI()
@app.get("/api/readyz")
async def ready():
    return {"status": "ready"}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise RuntimeError("not ready in time")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def measure_allting(data_dir: Path) -> tuple[float, float]:
    port = _free_port()
    env = {
        **os.environ,
        "ALLTING_DATA_DIR": str(data_dir),
        "LOG_LEVEL": "WARNING",
        "ALLTING_ADMIN_PASSWORD": "benchmark password",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "allting", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = process.pid
    seconds = _wait_ready(f"http://127.0.0.1:{port}/api/readyz", process)
    time.sleep(2)
    rss = _rss_mib(started)
    _stop(process)
    return seconds, rss


def measure_baseline(workdir: Path) -> tuple[float, float]:
    (workdir / "baseline_app.py").write_text(BASELINE_APP)
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "baseline_app:app", "--port", str(port), "--log-level", "warning"],
        cwd=workdir,
    )
    seconds = _wait_ready(f"http://127.0.0.1:{port}/api/readyz", process)
    time.sleep(2)
    rss = _rss_mib(process.pid)
    _stop(process)
    return seconds, rss


def main() -> None:
    empty, existing, rss, base_time, base_rss = [], [], [], [], []
    for _ in range(RUNS):
        with tempfile.TemporaryDirectory(prefix="allting-bench-") as tmp:
            data_dir = Path(tmp) / "data"
            seconds, _ = measure_allting(data_dir)
            empty.append(seconds)
            seconds, memory = measure_allting(data_dir)
            existing.append(seconds)
            rss.append(memory)
            seconds, memory = measure_baseline(Path(tmp))
            base_time.append(seconds)
            base_rss.append(memory)
    median = statistics.median
    print(f"runs: {RUNS}")
    print(f"{'measure':38} {'allting':>10} {'baseline':>10} {'ratio':>7}")
    print(
        f"{'serve → ready, empty data dir (s)':38} {median(empty):10.2f} {median(base_time):10.2f} "
        f"{median(empty) / median(base_time):7.1f}"
    )
    print(
        f"{'serve → ready, existing data dir (s)':38} {median(existing):10.2f} {median(base_time):10.2f} "
        f"{median(existing) / median(base_time):7.1f}"
    )
    print(
        f"{'API process RSS at idle (MiB)':38} {median(rss):10.1f} {median(base_rss):10.1f} "
        f"{median(rss) / median(base_rss):7.1f}"
    )


if __name__ == "__main__":
    main()
