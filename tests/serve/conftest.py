"""Real servers for the endpoint's tests: `ragless serve` subprocesses on free loopback ports, each over its own copy
of a small index (the fixed-window segmenter, like tests/ragless/test_ingest.py), with API keys from a file.

- ``docs_server`` (module): keys, no preloading, small limits; never asked a question, so the generator never loads.
- ``server`` (session): keys, the shipped joint model preloaded (SmolLM2: tests using it are marked slow); one for
  asking, streaming, ingestion while serving, the fuzzing and the page.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.ragless.test_ingest import ingest, write_corpus

READ_KEY = "read-key-0123456789abcdef"
ADMIN_KEY = "admin-key-fedcba9876543210"
ROOT = Path(__file__).resolve().parents[2]


class Server:
    """A `ragless serve` process; ``url`` once it listens, its output in ``log_path``."""

    def __init__(self, index: Path, log_path: Path, *args: str, env: dict[str, str] | None = None):
        self.index, self.log_path = index, log_path
        self._log = open(log_path, "wb")
        environ = {k: v for k, v in os.environ.items() if k != "RAGLESS_API_KEYS"} | (env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "ragless.cli", "serve", "--index", str(index),
                                      "--port", "0", *args], cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=environ)
        deadline = time.monotonic() + 180
        while True:
            found = re.search(r"Uvicorn running on http://([\d.]+):(\d+)", self.log())
            if found:
                self.host, self.port = found.group(1), int(found.group(2))
                self.url = f"http://{self.host}:{self.port}"
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start:\n{self.log()}")
            time.sleep(0.2)

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


@pytest.fixture(scope="session")
def base_index(tmp_path_factory, encoder) -> Path:
    """Eight small notes, cut by fixed windows; each server gets a copy."""
    root = tmp_path_factory.mktemp("serve-corpus")
    ingest(root / "index", write_corpus(root / "corpus", 8), encoder)
    return root / "index"


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"# test keys\n{READ_KEY} read\n\n{ADMIN_KEY} admin\n")
    return path


def start(base_index: Path, where: Path, *args: str, **kwargs) -> Server:
    index = where / "index"
    shutil.copytree(base_index, index)
    return Server(index, where / "server.log", *args, **kwargs)


@pytest.fixture(scope="module")
def docs_server(base_index, keys_file, tmp_path_factory):
    srv = start(base_index, tmp_path_factory.mktemp("docs-server"), "--api-keys", str(keys_file), "--no-preload",
                "--max-body-bytes", "4096", "--max-upload-bytes", "65536", "--max-documents", "5",
                "--max-question-chars", "200", "--max-k", "10")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def server(base_index, keys_file, tmp_path_factory):
    srv = start(base_index, tmp_path_factory.mktemp("server"), "--api-keys", str(keys_file))
    try:
        srv.wait_ready()
    except RuntimeError:
        srv.stop()
        raise
    yield srv
    srv.stop()
