"""Real servers for the endpoint's tests: `ragless serve` subprocesses on free loopback ports, each over its own copy
of a small index (the fixed-window segmenter, like tests/ragless/test_ingest.py), with API keys from a file.

- ``docs_server`` (module): keys, no preloading, small limits; never asked a question, so the generator never loads.
- ``server`` (session): keys, the shipped joint model preloaded (SmolLM2: tests using it are marked slow); one for
  asking, streaming, ingestion while serving, the fuzzing and the page.
- ``open_server`` (session): no keys, no waiting room in the queue, a 1 s timeout (test_limits.py).
- ``prompted_server`` (session): no keys, ``--answerer prompted``, an IVF index searched with ANN flags
  (test_serve_modes.py).

The servers that the session's tests use are launched together as soon as the base index exists, so that their
models load while the first tests run (the documents tests need none), not one after another; each fixture then
waits for its own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from ragless.ann import AnnConfig, build_ann
from tests.ragless.test_ingest import ingest, write_corpus

READ_KEY = "read-key-0123456789abcdef"
ADMIN_KEY = "admin-key-fedcba9876543210"
ROOT = Path(__file__).resolve().parents[2]


class Server:
    """A `ragless serve` process, launched at once; ``url`` once `wait_listening` has seen it listen; its output in
    ``log_path``."""

    def __init__(self, index: Path, log_path: Path, *args: str, env: dict[str, str] | None = None):
        self.index, self.log_path = index, log_path
        self._log = open(log_path, "wb")
        environ = {k: v for k, v in os.environ.items() if k != "RAGLESS_API_KEYS"} | (env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "ragless.cli", "serve", "--index", str(index),
                                      "--port", "0", *args], cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=environ)
        self.url = None

    def wait_listening(self, timeout: float = 180) -> Server:
        deadline = time.monotonic() + timeout
        while self.url is None:
            found = re.search(r"Uvicorn running on http://([\d.]+):(\d+)", self.log())
            if found:
                self.host, self.port = found.group(1), int(found.group(2))
                self.url = f"http://{self.host}:{self.port}"
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start:\n{self.log()}")
            time.sleep(0.2)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, key: str | None = None, timeout: float = 300) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while c.get("/readyz").status_code != 200:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server never became ready:\n{self.log()}")
                time.sleep(0.3)

    def wait_idle(self, timeout: float = 300) -> None:
        """Until the model worker has nothing running or waiting."""
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while True:
                text = c.get("/metrics").text
                busy = re.search(r"^ragless_queue_running (\S+)", text, re.M)
                depth = re.search(r"^ragless_queue_depth (\S+)", text, re.M)
                if float(busy.group(1)) == 0 and float(depth.group(1)) == 0:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker stayed busy")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def launch(base_index: Path, where: Path, *args: str, ann: AnnConfig | None = None, **kwargs) -> Server:
    """A server over a copy of ``base_index`` (with an ANN index built first, given ``ann``), launched, not waited
    for."""
    index = where / "index"
    shutil.copytree(base_index, index)
    if ann is not None:
        build_ann(index, ann)
    return Server(index, where / "server.log", *args, **kwargs)


def start(base_index: Path, where: Path, *args: str, **kwargs) -> Server:
    """A server launched and listening."""
    return launch(base_index, where, *args, **kwargs).wait_listening()


# The session servers: how each is launched (the base index, the keys file and a folder of its own).
SESSION_SERVERS: dict[str, Callable[[Path, Path, Path], Server]] = {
    "server": lambda index, keys, where: launch(index, where, "--api-keys", str(keys)),
    "open_server": lambda index, keys, where: launch(
        index, where, "--host", "0.0.0.0", "--no-preload", "--queue-size", "0", "--request-timeout-s", "1",
        "--retry-after-s", "3"),
    # ANN flags (see test_serve_modes.py): one of the 4 IVF lists scanned, where the default (32) scans them all
    "prompted_server": lambda index, keys, where: launch(
        index, where, "--answerer", "prompted", "--nprobe", "1", "--candidates", "40", "--ef-search", "64",
        ann=AnnConfig(kind="ivf-flat", nlist=4)),
}
_launched: dict[str, Server] = {}


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"# test keys\n{READ_KEY} read\n\n{ADMIN_KEY} admin\n")
    return path


@pytest.fixture(scope="session")
def base_index(request, tmp_path_factory, encoder, keys_file) -> Path:
    """Eight small notes, cut by fixed windows; each server gets a copy. Once it exists, the session servers that
    the collected tests use are launched."""
    root = tmp_path_factory.mktemp("serve-corpus")
    ingest(root / "index", write_corpus(root / "corpus", 8), encoder)
    used = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    for name, make in SESSION_SERVERS.items():
        if name in used:
            _launched[name] = make(root / "index", keys_file, tmp_path_factory.mktemp(name.replace("_", "-")))
    yield root / "index"
    for srv in _launched.values():  # launched for tests that did not run (-x, a failed setup)
        srv.stop()


def session_server(name: str, base_index: Path, keys_file: Path, tmp_path_factory, ready: bool):
    """The session server ``name``, launched with the base index (or now), listening (and ready: models loaded)."""
    srv = _launched.pop(name, None) or SESSION_SERVERS[name](base_index, keys_file, tmp_path_factory.mktemp(name))
    try:
        srv.wait_listening()
        if ready:
            srv.wait_ready()
    except RuntimeError:
        srv.stop()
        raise
    return srv


@pytest.fixture(scope="module")
def docs_server(base_index, keys_file, tmp_path_factory):
    srv = start(base_index, tmp_path_factory.mktemp("docs-server"), "--api-keys", str(keys_file), "--no-preload",
                "--max-body-bytes", "4096", "--max-upload-bytes", "65536", "--max-documents", "5",
                "--max-question-chars", "200", "--max-question-tokens", "40", "--max-k", "10")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def server(base_index, keys_file, tmp_path_factory):
    srv = session_server("server", base_index, keys_file, tmp_path_factory, ready=True)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def open_server(base_index, keys_file, tmp_path_factory):
    srv = session_server("open_server", base_index, keys_file, tmp_path_factory, ready=False)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def prompted_server(base_index, keys_file, tmp_path_factory):
    srv = session_server("prompted_server", base_index, keys_file, tmp_path_factory, ready=True)
    yield srv
    srv.stop()
