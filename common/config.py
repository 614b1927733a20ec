"""Configuration parsing helpers shared by every package's ``from_env()``."""

from __future__ import annotations

from collections.abc import Mapping


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the variable."""


def env_number(
    env: Mapping[str, str], name: str, default: float, lo: float, hi: float, *, integer: bool = False
) -> float:
    """``env[name]`` as a number in ``[lo, hi]`` (``default`` when unset).

    :raises ConfigError: naming the variable when the value is not a number or out of range.
    """
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {raw!r} is not {'an integer' if integer else 'a number'}") from exc
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: {value} is outside [{lo}, {hi}]")
    return value
