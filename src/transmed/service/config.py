"""The DICOM node's configuration: one validated model, read from a YAML (or JSON) file.

Unknown keys and bad values are refused with the key named. Secrets (a DICOMweb password or
token) never sit in the file: it names an environment variable or a file that holds them, they
are read once at load time, and they are kept as ``SecretStr`` so no repr or log shows them.
Relative paths in the file are taken relative to the file's folder.

Example (``docs/service.md`` has the full annotated version)::

    ae_title: TRANSMED
    dicom_port: 11112
    http_port: 8080
    storage_dir: /var/lib/transmed
    model: /opt/transmed/runs/full
    allowed_calling_aets: [ORTHANC]
    destination: {type: dicom, ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A service configuration that cannot be used; the message names the file and the key."""


def check_ae_title(value: str) -> str:
    """An AE title: 1–16 printable ASCII characters, no backslash, not only spaces."""
    stripped = value.strip()
    if not stripped or len(value) > 16:
        raise ValueError(f"AE title must have 1 to 16 characters, got {len(value)}")
    if any(not (32 <= ord(c) < 127) or c == "\\" for c in value):
        raise ValueError("AE title may hold printable ASCII characters only, no backslash")
    return stripped


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryConfig(_Strict):
    """Exponential backoff of the outbox: delay = min(max_s, initial_s · factor^(attempt−1))."""

    initial_s: float = Field(5.0, gt=0.0)
    max_s: float = Field(600.0, gt=0.0)
    factor: float = Field(2.0, ge=1.0)

    @model_validator(mode="after")
    def _order(self) -> RetryConfig:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must be ≥ initial_s ({self.initial_s})")
        return self


class LimitsConfig(_Strict):
    """What the node accepts; anything beyond is refused, never half-processed."""

    max_instance_bytes: int = Field(256 * 2**20, ge=1024)  # one C-STORE data set
    max_study_bytes: int = Field(4 * 2**30, ge=1024)  # all instances of one study
    max_study_instances: int = Field(10_000, ge=1)
    max_voxels: int = Field(512 * 512 * 1024, ge=1)  # one instance, and one series
    max_storage_bytes: int = Field(50 * 2**30, ge=1024)  # incoming + waiting studies on disk
    max_sequence_depth: int = Field(8, ge=1)  # nested sequences in one data set
    # received, not yet handled bytes across all associations (memory held for peers)
    max_receiving_bytes: int = Field(1024 * 2**20, ge=1024)

    @model_validator(mode="after")
    def _receiving(self) -> LimitsConfig:
        if self.max_receiving_bytes < self.max_instance_bytes:
            raise ValueError(
                f"max_receiving_bytes ({self.max_receiving_bytes}) must be ≥ "
                f"max_instance_bytes ({self.max_instance_bytes})"
            )
        return self


class DicomDestination(_Strict):
    """Deliver the SEG by C-STORE to a DICOM peer (the PACS)."""

    type: Literal["dicom"]
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    timeout_s: float = Field(30.0, gt=0.0)

    @field_validator("ae_title")
    @classmethod
    def _aet(cls, v: str) -> str:
        return check_ae_title(v)

    def describe(self) -> str:
        return f"DICOM {self.ae_title}@{self.host}:{self.port}"


class DicomWebDestination(_Strict):
    """Deliver the SEG by DICOMweb STOW-RS. Credentials come from an env var or a file."""

    type: Literal["dicomweb"]
    url: str  # the DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    token_env: str | None = None
    token_file: Path | None = None
    timeout_s: float = Field(60.0, gt=0.0)
    # Filled by load_config from *_env / *_file; never in the file itself.
    password: SecretStr | None = None
    token: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _auth(self) -> DicomWebDestination:
        has_pw = bool(self.password_env or self.password_file)
        has_token = bool(self.token_env or self.token_file)
        if has_pw and has_token:
            raise ValueError("give either a password (with username) or a token, not both")
        if has_pw and not self.username:
            raise ValueError("a password needs a username")
        if self.password_env and self.password_file or self.token_env and self.token_file:
            raise ValueError("give each secret by an env var or a file, not both")
        return self

    def describe(self) -> str:
        return f"DICOMweb {self.url}"


Destination = Annotated[DicomDestination | DicomWebDestination, Field(discriminator="type")]


class ServiceConfig(_Strict):
    """Everything ``transmed serve`` needs. Network services bind to loopback by default."""

    ae_title: str = "TRANSMED"
    bind_host: str = "127.0.0.1"  # DICOM listener; set another address deliberately
    dicom_port: int = Field(11112, ge=0, le=65535)  # 0: any free port (tests)
    http_host: str = "127.0.0.1"  # health and metrics
    http_port: int | None = Field(8080, ge=0, le=65535)  # None: no HTTP endpoint
    http_token_env: str | None = None  # bearer token for /metrics (env var or file)
    http_token_file: Path | None = None
    http_token: SecretStr | None = None  # filled from the two above, never from the file
    storage_dir: Path
    model: Path  # checkpoint, run folder or cross-validation folder
    device: str = "cpu"
    torch_threads: int | None = Field(None, ge=1)
    allowed_calling_aets: list[str] = Field(default_factory=list)  # empty: any calling AE
    destination: Destination
    quiet_period_s: float = Field(10.0, gt=0.0)  # a study is complete after this much silence
    queue_size: int = Field(2, ge=1)  # studies held in memory for the worker; the rest wait on disk
    retry: RetryConfig = Field(default_factory=RetryConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    segments: Literal["regions", "labels"] = "regions"  # WT/TC/ET, or the three tumour classes
    modality_rules: Path | None = None  # YAML of series → modality rules (None: the defaults)
    max_associations: int = Field(10, ge=1)
    network_timeout_s: float = Field(60.0, gt=0.0)  # idle association / DIMSE timeout
    http_max_connections: int = Field(16, ge=1)  # open HTTP connections; more are closed
    http_read_timeout_s: float = Field(5.0, gt=0.0)  # a silent HTTP client is dropped after
    # failed studies' instances stay in storage_dir/quarantine this long (0: deleted at once)
    failed_retention_s: float = Field(7 * 24 * 3600.0, ge=0.0)
    max_quarantine_bytes: int = Field(10 * 2**30, ge=0)  # beyond: the oldest are deleted
    # processed studies' images and predicted SEG stay in storage_dir/jobs/<id>/ this long, for
    # review in `transmed view` (0: deleted once processed, as before the viewer existed)
    review_retention_s: float = Field(3 * 24 * 3600.0, ge=0.0)
    max_review_bytes: int = Field(20 * 2**30, ge=0)  # beyond: the oldest kept studies are deleted

    @field_validator("ae_title")
    @classmethod
    def _aet(cls, v: str) -> str:
        return check_ae_title(v)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aets(cls, v: list[str]) -> list[str]:
        return [check_ae_title(a) for a in v]

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "cpu" and not v.startswith("cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:i]', got {v!r}")
        return v


def _read_secret(env: str | None, file: Path | None, what: str) -> SecretStr | None:
    if env:
        value = os.environ.get(env)
        if not value:
            raise ValueError(f"{what}: environment variable {env} is not set")
        return SecretStr(value)
    if file:
        if not file.is_file():
            raise ValueError(f"{what}: file {file} not found")
        if file.stat().st_mode & 0o077:
            log.warning("%s file %s is readable by group or others; chmod 600 it", what, file)
        value = file.read_text(encoding="utf-8").strip()
        if not value:
            raise ValueError(f"{what}: file {file} is empty")
        return SecretStr(value)
    return None


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    def fix(d: dict[str, Any], key: str) -> None:
        if isinstance(d.get(key), str) and not Path(d[key]).expanduser().is_absolute():
            d[key] = str(base / d[key])

    fix(data, "storage_dir")
    fix(data, "model")
    fix(data, "http_token_file")
    fix(data, "modality_rules")
    dest = data.get("destination")
    if isinstance(dest, dict):
        fix(dest, "password_file")
        fix(dest, "token_file")


def config_from_dict(data: dict[str, Any], *, source: str = "config") -> ServiceConfig:
    """Validate a mapping (as read from the file) and read the secrets it names."""
    dest = data.get("destination")
    if isinstance(dest, dict) and ({"password", "token"} & set(dest)):
        raise ConfigError(
            f"{source}: destination: put secrets in password_env/password_file or "
            "token_env/token_file, never in the configuration file"
        )
    if "http_token" in data:
        raise ConfigError(f"{source}: http_token: use http_token_env or http_token_file")
    try:
        config = ServiceConfig(**data)
        if config.http_token_env and config.http_token_file:
            raise ValueError("http_token: give an env var or a file, not both")
        token = _read_secret(config.http_token_env, config.http_token_file, "http token")
        if token is not None:
            config = config.model_copy(update={"http_token": token})
        if isinstance(config.destination, DicomWebDestination):
            d = config.destination
            secrets = {
                "password": _read_secret(d.password_env, d.password_file, "destination password"),
                "token": _read_secret(d.token_env, d.token_file, "destination token"),
            }
            config = config.model_copy(update={"destination": d.model_copy(update=secrets)})
    except ValidationError as exc:
        msgs = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{source}: invalid service config: {msgs}") from None
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if not is_loopback(config.bind_host):
        log.warning(
            "DICOM listener binds to %s, not loopback: restrict it by firewall and "
            "allowed_calling_aets",
            config.bind_host,
        )
    return config


def load_config(path: str | Path) -> ServiceConfig:
    """Read and validate a YAML/JSON service configuration file.

    Raises:
        ConfigError: (a ``ValueError``) the file is missing, unparsable or invalid; the message
            names the file and the key.
    """
    from transmed.io.config_file import read_mapping

    path = Path(path)
    data = read_mapping(path, ConfigError)
    _resolve_paths(data, path.resolve().parent)
    return config_from_dict(data, source=str(path))
