"""Typed reads of environment variables that collect every problem found."""

from __future__ import annotations

from collections.abc import Mapping

# Largest TCP port number, for settings that name a port.
MAX_PORT = 65535


def env_int(
    environ: Mapping[str, str],
    name: str,
    default: int,
    problems: list[str],
    *,
    minimum: int = 0,
    maximum: int | None = None,
) -> int:
    """Return ``environ[name]`` as an int, or ``default`` when unset or empty.

    An invalid value is appended to ``problems`` and the default returned, so
    that the caller can report every invalid setting at once.
    """
    text = environ.get(name, "")
    if text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        problems.append(f"{name}: expected a whole number, got {text!r}")
        return default
    if value < minimum:
        problems.append(f"{name}: must be at least {minimum}, got {value}")
        return default
    if maximum is not None and value > maximum:
        problems.append(f"{name}: must be at most {maximum}, got {value}")
        return default
    return value


def env_float(
    environ: Mapping[str, str],
    name: str,
    default: float,
    problems: list[str],
    *,
    minimum: float = 0.0,
) -> float:
    """Return ``environ[name]`` as a float; see :func:`env_int`."""
    text = environ.get(name, "")
    if text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        problems.append(f"{name}: expected a number, got {text!r}")
        return default
    if value < minimum:
        problems.append(f"{name}: must be at least {minimum}, got {value}")
        return default
    return value


def env_bool(
    environ: Mapping[str, str], name: str, default: bool, problems: list[str]
) -> bool:
    """Return ``environ[name]`` as a bool: true/false, 1/0, yes/no, on/off."""
    text = environ.get(name, "").strip().lower()
    if text == "":
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    problems.append(f"{name}: expected true or false, got {text!r}")
    return default
