"""Helpers for the test servers (MONAI Label, Orthanc) that the tests start on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_serving(
    proc: subprocess.Popen, url: str, log_path: Path, timeout: float, name: str, poll_s: float = 0.5,
    request_timeout: float = 5.0,
) -> None:
    """Poll ``GET url`` until it answers 200; fail the test with the tail of ``log_path`` if ``proc`` exits first
    or ``timeout`` seconds pass."""
    import requests  # in the MONAI Label environment it comes with monailabel: imported only when a server runs

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if requests.get(url, timeout=request_timeout).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{name} not ready in {timeout:.0f} s:\n{log_path.read_text()[-4000:]}")
        time.sleep(poll_s)
