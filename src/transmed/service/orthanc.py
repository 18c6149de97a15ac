"""A private Orthanc PACS for the service's tests and benchmark (not used by the node itself).

:class:`OrthancServer` writes its own configuration into a work folder (free ports,
authentication on, remote access off, C-STORE accepted only from registered modalities, the
DICOMweb plugin loaded), starts the ``Orthanc`` executable (Debian package ``orthanc``, plugin
from ``orthanc-dicomweb``), waits until its REST API answers, and stops it. The storage folder
outlives :meth:`stop`, so a stop / start pair simulates a PACS outage.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

#: Where Debian's packages put the executable and the DICOMweb plugin.
ORTHANC_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
DICOMWEB_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so",
)


def find_orthanc() -> str | None:
    """Path of the ``Orthanc`` executable (PATH first, then Debian's /usr/sbin), or ``None``."""
    found = shutil.which("Orthanc")
    if found:
        return found
    return next((p for p in ORTHANC_CANDIDATES if os.access(p, os.X_OK)), None)


def find_dicomweb_plugin() -> str | None:
    return next((p for p in DICOMWEB_PLUGIN_CANDIDATES if os.path.isfile(p)), None)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class OrthancServer:
    """One Orthanc process on loopback with a configuration of its own.

    Args:
        workdir: folder for the configuration, the database and the log.
        modalities: name -> (AE title, host, port) of the DICOM peers Orthanc may exchange
            with (each is allowed to C-STORE into Orthanc and to receive from it).
        aet: Orthanc's own AE title.
    """

    def __init__(
        self,
        workdir: Path,
        modalities: dict[str, tuple[str, str, int]] | None = None,
        *,
        aet: str = "ORTHANC",
        http_port: int | None = None,
        dicom_port: int | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.modalities = dict(modalities or {})
        self.aet = aet
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.username = "transmed-test"
        self.password = secrets.token_urlsafe(16)
        self.executable = find_orthanc()
        self.plugin = find_dicomweb_plugin()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict[str, Any]:
        storage = str(self.workdir / "db")
        # Orthanc itself as a modality: lets a test drive a real C-MOVE (Orthanc's C-MOVE SCU
        # asks its own C-MOVE SCP to send a study to the node).
        peers = {**self.modalities, "self": (self.aet, "127.0.0.1", self.dicom_port)}
        config: dict[str, Any] = {
            "Name": "transmed-test-pacs",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": False,
            "DicomCheckModalityHost": True,
            "DicomCheckCalledAet": True,
            "DicomModalities": {
                name: {
                    "AET": aet,
                    "Host": host,
                    "Port": port,
                    "AllowStore": True,
                    "AllowEcho": True,
                    "AllowFind": name == "self",
                    "AllowMove": name == "self",
                }
                for name, (aet, host, port) in peers.items()
            },
            "StableAge": 1,
            "HttpCompressionEnabled": False,
            "StorageCompression": False,
            "ConcurrentJobs": 4,
        }
        if self.plugin:
            config["Plugins"] = [self.plugin]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        return config

    def start(self, timeout: float = 30.0) -> OrthancServer:
        """Write the configuration, start Orthanc, wait until ``/system`` answers."""
        if self.executable is None:
            raise RuntimeError(
                "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=1))
        os.chmod(config_path, 0o600)  # it holds the password
        self._log = open(self.workdir / "orthanc.log", "ab")  # noqa: SIM115 (closed in stop)
        # DCMTK (Orthanc's DICOM layer) leaves Nagle's algorithm on unless told; with it, each
        # C-STORE waits ~40 ms for a delayed ACK (20 instances/s), which PACS tuning removes.
        env = {**os.environ, "TCP_NODELAY": "1"}
        self._proc = subprocess.Popen(
            [self.executable, str(config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {self._proc.returncode}: {self.log_tail()}"
                )
            try:
                if self.get("/system").get("Version"):
                    return self
            except Exception:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s: {self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(5)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 2000) -> str:
        path = self.workdir / "orthanc.log"
        return path.read_bytes()[-n:].decode("utf-8", "replace") if path.is_file() else ""

    # --- REST ---

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import requests

        r = requests.request(
            method,
            self.url + path,
            auth=(self.username, self.password),
            timeout=kwargs.pop("timeout", 60),
            **kwargs,
        )
        r.raise_for_status()
        if "json" in r.headers.get("Content-Type", ""):
            return r.json()
        return r.content

    def get(self, path: str, **kwargs: Any) -> Any:
        return self._request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self._request("POST", path, **kwargs)

    def upload(self, files: list[Path]) -> str:
        """POST every file to ``/instances``; return the Orthanc id of their (one) study."""
        study = None
        for path in files:
            answer = self.post(
                "/instances",
                data=Path(path).read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
            study = answer["ParentStudy"]
        if study is None:
            raise ValueError("no files to upload")
        return study

    def send_to_modality(self, modality: str, study_id: str, synchronous: bool = True) -> Any:
        """Orthanc's "send to modality" (C-STORE of the whole study to the peer)."""
        return self.post(
            f"/modalities/{modality}/store",
            json={"Resources": [study_id], "Synchronous": synchronous},
        )

    def move_to(self, target_aet: str, study_uid: str) -> Any:
        """A real C-MOVE: Orthanc (SCU) asks itself (SCP) to send the study to ``target_aet``."""
        return self.post(
            "/modalities/self/move",
            json={
                "Level": "Study",
                "Resources": [{"StudyInstanceUID": study_uid}],
                "TargetAet": target_aet,
                "Synchronous": True,
            },
        )

    def study_id(self, study_uid: str) -> str | None:
        found = self.post("/tools/lookup", data=study_uid)
        return next((f["ID"] for f in found if f["Type"] == "Study"), None)

    def seg_instances(self, study_uid: str) -> list[str]:
        """Orthanc ids of the SEG instances in the study with this StudyInstanceUID."""
        series = self.post(
            "/tools/find",
            json={
                "Level": "Series",
                "Query": {"StudyInstanceUID": study_uid, "Modality": "SEG"},
            },
        )
        ids: list[str] = []
        for s in series:
            ids += self.get(f"/series/{s}")["Instances"]
        return ids

    def instance_file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file")

    def wait_for_segs(self, study_uid: str, count: int = 1, timeout: float = 60.0) -> list[str]:
        """Poll until the study holds ``count`` SEG instances; return their ids."""
        deadline = time.monotonic() + timeout
        while True:
            ids = self.seg_instances(study_uid)
            if len(ids) >= count or time.monotonic() > deadline:
                return ids
            time.sleep(0.1)
