"""A timm-style model registry: ``@register_model``, ``create_model(name, ...)``, ``list_models()``.

Every registered factory takes ``in_channels`` and ``out_channels`` plus its own typed keyword
arguments and returns a :class:`~transmed.models.base.SegmentationModel`. The model remembers
its registry name and the arguments it was built with (``model.config``) so that a checkpoint can
rebuild it without outside knowledge.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from transmed.models.base import SegmentationModel

_REGISTRY: dict[str, Callable[..., SegmentationModel]] = {}
#: Arguments whose default changed: {model name: {argument: the value before the change}}. A
#: stored config that lacks such an argument was written before the change, so
#: ``create_model_from_config`` and :func:`stored_kwargs` rebuild it with the old value, and
#: ``create_model`` records the argument explicitly in every new ``model.config``.
LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {}


def register_model(fn: Callable[..., SegmentationModel]) -> Callable[..., SegmentationModel]:
    """Register a model factory under its function name."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn


def register_legacy_default(name: str, key: str, value: Any) -> None:
    """Declare that ``key``'s default for model ``name`` changed from ``value``."""
    LEGACY_DEFAULTS.setdefault(name, {})[key] = value


def stored_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of a config stored earlier (a checkpoint's ``model_config``, a
    run's ``model_kwargs``), completed with the defaults that held before a default changed."""
    _ensure_builtin_models()
    return {**LEGACY_DEFAULTS.get(name, {}), **kwargs}


def pinned_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments for a new config that is stored (a checkpoint, a run's config):
    the arguments whose default changed once are written out with today's default, so the
    stored config keeps meaning the same model if the default changes again."""
    _ensure_builtin_models()
    if name not in _REGISTRY:
        return dict(kwargs)
    accepted = model_kwargs(name)
    pinned = dict(kwargs)
    for key in LEGACY_DEFAULTS.get(name, {}):
        pinned.setdefault(key, accepted[key].default)
    return pinned


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _ensure_builtin_models()
    return sorted(_REGISTRY)


def model_kwargs(name: str) -> dict[str, inspect.Parameter]:
    """The keyword arguments a registered model accepts (besides in/out channels)."""
    _ensure_builtin_models()
    fn = _get(name)
    params = inspect.signature(fn).parameters
    return {k: v for k, v in params.items() if k not in ("in_channels", "out_channels")}


def create_model(
    name: str, in_channels: int = 4, out_channels: int = 3, **kwargs: Any
) -> SegmentationModel:
    """Build a registered model by name.

    Raises:
        ValueError: unknown model name, unknown keyword argument or a bad argument value.
    """
    _ensure_builtin_models()
    fn = _get(name)
    accepted = model_kwargs(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"model {name!r} got unknown argument(s) {unknown}; accepted: {sorted(accepted)}"
        )
    for key, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    model = fn(in_channels=in_channels, out_channels=out_channels, **kwargs)
    model.config = {
        "name": name,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "kwargs": pinned_kwargs(name, kwargs),
    }
    return model


def create_model_from_config(config: dict[str, Any]) -> SegmentationModel:
    """Rebuild a model from ``model.config`` (as stored in a checkpoint)."""
    try:
        name = config["name"]
    except (KeyError, TypeError):
        raise ValueError(f"model config must hold a 'name' key, got {config!r}") from None
    return create_model(
        name,
        in_channels=int(config.get("in_channels", 4)),
        out_channels=int(config.get("out_channels", 3)),
        **stored_kwargs(name, dict(config.get("kwargs", {}))),
    )


def _get(name: str) -> Callable[..., SegmentationModel]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def _ensure_builtin_models() -> None:
    # Importing the modules runs their @register_model decorators.
    from transmed.models import peers, transmed  # noqa: F401
