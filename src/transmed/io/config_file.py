"""One reader for the YAML/JSON configuration files of training, federation and the service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_mapping(path: str | Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The mapping in a config file: ``.json`` is JSON, anything else YAML (a superset of JSON).

    Raises:
        error: the file is missing, unparsable or not a mapping (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:
        raise error(f"{path}: cannot parse ({exc})") from None
    if data is None:  # an empty file
        data = {}
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping of keys to values")
    return data
