"""``transmed serve``: starts from a config file, answers C-ECHO and /health, stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

import yaml
from service_helpers import wait_until

from transmed.service.orthanc import free_port


def _serve(config_path, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "transmed.cli", "serve", "--config", str(config_path), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _health(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


def test_serve_runs_until_sigterm(tmp_path, tiny_checkpoint):
    from pynetdicom import AE

    dicom_port, http_port = free_port(), free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "ae_title": "TRANSMED",
                "dicom_port": dicom_port,
                "http_port": http_port,
                "storage_dir": "storage",
                "model": str(tiny_checkpoint),
                "torch_threads": 1,
                "destination": {
                    "type": "dicom",
                    "ae_title": "PACS",
                    "host": "127.0.0.1",
                    "port": 1,
                },
            }
        )
    )
    proc = _serve(config)
    try:
        health = wait_until(lambda: proc.poll() is None and _health(http_port), timeout=90)
        assert health["status"] == "ok"
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", dicom_port, ae_title="TRANSMED")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "SIGTERM received" in out and "transmed serve stopped" in out
    assert "C-ECHO from AE 'TESTSCU'" in out
    assert (tmp_path / "storage" / "incoming").is_dir()  # relative to the config file


def test_bad_config_is_one_clear_line(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text(
        "storage_dir: s\nmodel: m\nqueue_size: 0\n"
        "destination: {type: dicom, ae_title: P, host: h, port: 1}\n"
    )
    proc = _serve(config)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "Error:" in out and "queue_size" in out and "Traceback" not in out
