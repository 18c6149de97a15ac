"""The service configuration: defaults, validation with the key named, secrets kept secret."""

from __future__ import annotations

import logging

import pytest

from transmed.service.config import ConfigError, DicomWebDestination, load_config

BASE = """
storage_dir: store
model: runs/full
destination: {type: dicom, ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
"""


def _write(tmp_path, text):
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return path


def test_defaults_bind_to_loopback_and_resolve_paths(tmp_path):
    cfg = load_config(_write(tmp_path, BASE))
    assert cfg.bind_host == "127.0.0.1" and cfg.http_host == "127.0.0.1"
    assert cfg.storage_dir == tmp_path / "store"  # relative to the config file
    assert cfg.model == tmp_path / "runs/full"
    assert cfg.ae_title == "TRANSMED" and cfg.allowed_calling_aets == []
    assert cfg.retry.initial_s < cfg.retry.max_s


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("queue_size: 0", "queue_size"),
        ("ae_title: WAY_TOO_LONG_AE_TITLE", "ae_title"),
        ("allowed_calling_aets: ['BAD\\\\AE']", "allowed_calling_aets"),
        ("dicom_port: 70000", "dicom_port"),
        ("quiet_period_s: -1", "quiet_period_s"),
        ("retry: {initial_s: 10, max_s: 1}", "retry"),
        ("limits: {max_voxels: 0}", "limits.max_voxels"),
        ("segments: everything", "segments"),
        ("device: tpu", "device"),
        ("unknown_key: 1", "unknown_key"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(tmp_path, extra, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        load_config(_write(tmp_path, BASE + extra + "\n"))


@pytest.mark.parametrize(
    ("dest", "message"),
    [
        ("{type: ftp, host: x}", "destination"),
        ("{type: dicom, ae_title: X, host: h}", "port"),
        ("{type: dicomweb, url: ftp://x}", "url"),
        ("{type: dicomweb, url: 'http://x', password_env: PW}", "username"),
        ("{type: dicomweb, url: 'http://x', username: u, password: hunter2}", "never in the"),
        (
            "{type: dicomweb, url: 'http://x', username: u, password_env: TRANSMED_UNSET_VAR}",
            "TRANSMED_UNSET_VAR is not set",
        ),
    ],
)
def test_bad_destinations(tmp_path, dest, message, monkeypatch):
    monkeypatch.delenv("TRANSMED_UNSET_VAR", raising=False)
    text = BASE.replace(
        "destination: {type: dicom, ae_title: ORTHANC, host: 127.0.0.1, port: 4242}",
        f"destination: {dest}",
    )
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text))


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(_write(tmp_path, "a: [unclosed"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- a list"))


def test_secrets_from_env_and_file_are_never_shown(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PACS_PW", "s3cret-pw")
    token = tmp_path / "token"
    token.write_text("tok-s3cret\n")
    token.chmod(0o600)
    dest_pw = "{type: dicomweb, url: 'http://127.0.0.1:8042/dicom-web/', username: ai, password_env: PACS_PW}"  # noqa: E501
    dest_tok = "{type: dicomweb, url: 'https://pacs/dicom-web', token_file: token}"
    for dest, secret in ((dest_pw, "s3cret-pw"), (dest_tok, "tok-s3cret")):
        text = BASE.replace(BASE.splitlines()[3], f"destination: {dest}")
        with caplog.at_level(logging.DEBUG):
            cfg = load_config(_write(tmp_path, text))
        d = cfg.destination
        assert isinstance(d, DicomWebDestination)
        got = (d.password or d.token).get_secret_value()
        assert got == secret
        assert secret not in repr(cfg) and secret not in str(cfg.model_dump())
        assert secret not in caplog.text
    assert cfg.destination.url == "https://pacs/dicom-web"


def test_world_readable_secret_file_is_warned_about(tmp_path, caplog):
    token = tmp_path / "token"
    token.write_text("tok")
    token.chmod(0o644)
    text = BASE.replace(
        BASE.splitlines()[3], "destination: {type: dicomweb, url: 'http://x', token_file: token}"
    )
    with caplog.at_level(logging.WARNING):
        load_config(_write(tmp_path, text))
    assert "chmod 600" in caplog.text


def test_non_loopback_bind_is_allowed_but_warned(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load_config(_write(tmp_path, BASE + "bind_host: 0.0.0.0\n"))
    assert cfg.bind_host == "0.0.0.0"
    assert "not loopback" in caplog.text


def test_modality_rules_path_is_resolved_and_loaded(tmp_path):
    from transmed.service.service import _load_rules

    (tmp_path / "rules.yaml").write_text("rules:\n  - {modality: t2, match: ['T2']}\n")
    cfg = load_config(_write(tmp_path, BASE + "modality_rules: rules.yaml\n"))
    assert cfg.modality_rules == tmp_path / "rules.yaml"
    rules = _load_rules(cfg.modality_rules)
    assert [r.modality for r in rules.rules] == ["t2"]
    assert _load_rules(None) is None
    (tmp_path / "bad.yaml").write_text("rules: [{modality: pd}]\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        _load_rules(tmp_path / "bad.yaml")
