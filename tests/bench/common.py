"""What the on-demand benchmarks share: server subprocesses, load generation (wrk with the Lua
scripts in wrk/, or a bounded asyncio+httpx client), machine facts and the command entry point.

Not a test: pytest does not collect tests/bench.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType

import httpx

HERE = Path(__file__).resolve().parent
WRK_SCRIPTS = HERE / "wrk"
JSON = "application/fhir+json"
PYTHON_MAX_REQUESTS = 2_000_000
"""Upper bound on requests of one Python load run (it is also bounded by --duration)."""


class BenchError(Exception):
    """The benchmark could not run (a server did not start, a request failed, ...)."""


# --------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A server subprocess in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            list(argv), env=env, stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n"
                                     f"{self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return
                time.sleep(0.1)
        raise BenchError(f"{self.name} not ready at {url} after {timeout:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        self._log_file.flush()
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """SIGTERM to the whole group (uvicorn shuts down cleanly), SIGKILL after 10 s."""
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log_file.close()


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    print("terminated", file=sys.stderr)
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def servers() -> Iterator[list[Server]]:
    """Every server started inside is stopped on the way out, whatever happened."""
    started: list[Server] = []
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield started
    finally:
        for server in reversed(started):
            server.stop()
        signal.signal(signal.SIGTERM, previous)


def server_env(**extra: str) -> dict[str, str]:
    """This environment without FHIR_SERVER_* settings (they would override the options)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env | extra


def fhir_server_argv(port: int, data_dir: Path, mongodb_url: str | None) -> list[str]:
    script = Path(sys.executable).with_name("fhir-server")
    head = [str(script)] if script.exists() else [
        sys.executable, "-c", "from fhir_server.cli import main; main()"]
    argv = [*head, "serve", "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir), "--no-seed"]
    if mongodb_url:
        argv += ["--mongodb-url", mongodb_url]
    return argv


# --------------------------------------------------------------------------------------------
# Load generation


@dataclass
class Result:
    name: str
    generator: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    """Non-2xx responses, socket errors and timeouts."""


def run_wrk(name: str, url: str, script: str, script_args: Sequence[str], duration: float,
            connections: int, threads: int, headers: Mapping[str, str] | None = None) -> Result:
    wrk = shutil.which("wrk")
    assert wrk is not None
    extra = [arg for k, v in (headers or {}).items() for arg in ("-H", f"{k}: {v}")]
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
            "--timeout", "10s", "--latency", *extra, "-s", str(WRK_SCRIPTS / script), url,
            "--", *script_args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                          check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    s = json.loads(line.removeprefix("WRK_JSON "))
    seconds = s["duration_us"] / 1e6
    errors = sum(s[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts",
                                "status_errors"))
    return Result(name, "wrk", s["requests"], seconds, s["requests"] / seconds,
                  s["p50_us"] / 1e3, s["p90_us"] / 1e3, s["p99_us"] / 1e3, s["max_us"] / 1e3,
                  errors)


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def python_load(name: str, base: str, method: str, paths: Sequence[str],
                      body: bytes | None, duration: float, connections: int,
                      more_headers: Mapping[str, str] | None = None) -> Result:
    latencies: list[float] = []
    errors = 0
    headers = {"Accept": JSON} | ({"Content-Type": JSON} if body is not None else {})
    headers |= more_headers or {}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    rng = random.Random(7)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10.0) as client:
        start = time.perf_counter()
        deadline = start + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline and len(latencies) < PYTHON_MAX_REQUESTS:
                path = paths[rng.randrange(len(paths))]
                t0 = time.perf_counter()
                try:
                    r = await client.request(method, path, content=body, headers=headers)
                    ok = r.status_code < 400
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok

        await asyncio.gather(*(worker() for _ in range(connections)))
        seconds = time.perf_counter() - start
    latencies.sort()
    ms = [x * 1e3 for x in latencies]
    return Result(name, "python-httpx", len(ms), seconds, len(ms) / seconds,
                  _percentile(ms, 50), _percentile(ms, 90), _percentile(ms, 99),
                  ms[-1] if ms else float("nan"), errors)


def wrk_wanted(python_client: bool, fallback_note: str) -> bool:
    """Whether wrk runs the load (it is on PATH and --python-client is off); says so when not."""
    use_wrk = shutil.which("wrk") is not None and not python_client
    if not use_wrk:
        print("wrk not found (apt-get install wrk): using the Python httpx load generator"
              + fallback_note, file=sys.stderr)
    return use_wrk


@dataclass
class LoadGen:
    use_wrk: bool
    duration: float
    warmup: float
    connections: int
    threads: int
    headers: dict[str, str] = field(default_factory=dict)
    """Sent with every request (an Authorization header, when the server requires one)."""

    @property
    def name(self) -> str:
        return "wrk" if self.use_wrk else "python-httpx"

    def measure(self, name: str, base: str, method: str, path: str, script: str,
                script_args: Sequence[str], python_paths: Callable[[], Sequence[str]],
                body: bytes | None = None, warm: bool = True) -> Result:
        """A short unmeasured warm-up (when `warm`), then the measured run: wrk runs `script`
        against base + path, or the Python client sends `method` to base + one of
        `python_paths()` at random."""
        if self.use_wrk:
            def once(seconds: float) -> Result:
                return run_wrk(name, base + path, script, script_args, seconds,
                               self.connections, self.threads, self.headers)
        else:
            paths = python_paths()

            def once(seconds: float) -> Result:
                return asyncio.run(python_load(name, base, method, paths, body, seconds,
                                               self.connections, self.headers))

        if warm and self.warmup > 0:
            once(self.warmup)
        return once(self.duration)


# --------------------------------------------------------------------------------------------
# Machine facts


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _wrk_version() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        return "not installed"
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10,
                         check=False)
    return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0].strip()


def cpus_fact() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return f"{os.cpu_count()} ({usable} usable), {_cpu_model()}"


def generator_fact(use_wrk: bool, threads: int, python_note: str) -> str:
    if use_wrk:
        return f"wrk ({_wrk_version()}), {threads} thread(s)"
    return f"python-httpx (httpx {version('httpx')}): {python_note}"


def load_average_fact(load: Sequence[float]) -> str:
    return ("load average before the run " + " ".join(f"{x:.2f}" for x in load)
            + " (other work skews figures)")


# --------------------------------------------------------------------------------------------
# Entry point


def run_main(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """`run(args)`; 2 when the benchmark could not run, 130 on Ctrl-C."""
    try:
        return run(args)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
