"""What crosses the wire: model weights as a list of arrays, and the model's fingerprint.

Weights travel as the model's ``state_dict`` tensors in its own key order (floating point only;
TransMed's models have no integer buffers). The fingerprint is a hash of the registry config
(name and constructor arguments) and of every tensor's name and shape, so a site whose model
differs by one argument is refused before its weights are averaged with anyone's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import numpy as np
import torch
from torch import nn


class ModelMismatchError(ValueError):
    """A site's model configuration differs from the server's."""


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model config and of the state_dict's names and shapes (hex, 16 chars)."""
    config = getattr(model, "config", {}) or {}
    spec = {
        "config": config,
        "tensors": [[k, list(v.shape)] for k, v in model.state_dict().items()],
    }
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_difference(mine: dict[str, Any], theirs: dict[str, Any]) -> str:
    """Human-readable list of the keys where two model configs differ."""
    a, b = _flatten(mine), _flatten(theirs)
    keys = sorted(set(a) | set(b))
    diffs = [f"{k}: here {_plain(a.get(k))}, server {_plain(b.get(k))}"
             for k in keys if _plain(a.get(k)) != _plain(b.get(k))]  # fmt: skip
    return "; ".join(diffs) or "same config, different tensor shapes"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _plain(v: Any) -> str:
    """Tuples and lists read the same (a config that went through JSON has lists)."""
    return json.dumps(v, default=str)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's state_dict as float32 arrays, in key order."""
    return [v.detach().cpu().float().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load arrays made by :func:`get_weights` (same order); ValueError on a shape mismatch."""
    state = model.state_dict()
    if len(weights) != len(state):
        raise ModelMismatchError(
            f"received {len(weights)} tensors, the model has {len(state)}"
        )
    new = {}
    for (k, v), w in zip(state.items(), weights, strict=True):
        if tuple(w.shape) != tuple(v.shape):
            raise ModelMismatchError(
                f"tensor {k}: received shape {w.shape}, model {tuple(v.shape)}"
            )
        new[k] = torch.as_tensor(w, dtype=v.dtype)
    model.load_state_dict(new)


def state_from_weights(model: nn.Module, weights: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """A state_dict for ``model`` holding ``weights`` (for checkpoints)."""
    keys = list(model.state_dict().keys())
    return {k: torch.as_tensor(np.asarray(w)) for k, w in zip(keys, weights, strict=True)}


def all_finite(weights: list[np.ndarray]) -> bool:
    return all(np.isfinite(w).all() for w in weights)


def sign_update(token: str, nonce: str, fingerprint: str) -> str:
    """HMAC-SHA256 of the round's nonce and the model fingerprint with the shared token.

    The token itself never crosses the wire; the server recomputes the tag to admit a result.
    """
    msg = f"{nonce}|{fingerprint}".encode()
    return hmac.new(token.encode(), msg, hashlib.sha256).hexdigest()


def check_signature(token: str, nonce: str, fingerprint: str, tag: str) -> bool:
    return hmac.compare_digest(sign_update(token, nonce, fingerprint), str(tag))
