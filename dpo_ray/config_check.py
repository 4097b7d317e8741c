"""The config's error type and its one check helper: shared by every schema module (config.py, config_loss.py)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type, or holds a value that cannot work."""


def require(*checks: tuple[bool, str]) -> None:
    """Raise ConfigError with the message of the first (condition, message) whose condition is false."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
