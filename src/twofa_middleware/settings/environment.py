"""Policies from the process environment, for deployments configured by env vars.

``TWOFA_PORTALS`` holds the policies inline as a JSON object; ``TWOFA_PORTALS_FILE``
names a ``.json`` or ``.toml`` file with the same shape. Neither set means no portal
enforces 2FA. A variable that is set but unusable (even empty) is an error, never
"no policies": a broken deployment must not quietly turn 2FA off.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from ..errors import ConfigurationError, PolicyError
from .static import StaticSettings

PORTALS_VAR: Final = "TWOFA_PORTALS"
PORTALS_FILE_VAR: Final = "TWOFA_PORTALS_FILE"

_EXAMPLE: Final = '{"acme": {"enforce": true, "methods": ["totp"]}}'


class EnvironmentSettings(StaticSettings):
    """``StaticSettings`` read once from ``TWOFA_PORTALS`` or ``TWOFA_PORTALS_FILE``."""

    def __init__(self, policies: Mapping[str, Any], *, source: str = "code") -> None:
        try:
            super().__init__(policies)
        except PolicyError as exc:
            raise PolicyError(exc.field, f"{source}: {exc}") from None
        except ConfigurationError as exc:
            raise ConfigurationError(f"{source}: {exc}") from None
        self.source = source

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> EnvironmentSettings:
        inline = environ.get(PORTALS_VAR)
        path = environ.get(PORTALS_FILE_VAR)
        if inline is not None and path is not None:
            raise ConfigurationError(
                f"both {PORTALS_VAR} and {PORTALS_FILE_VAR} are set; set only one of them"
            )
        if inline is not None:
            return cls(_load_inline(inline), source=PORTALS_VAR)
        if path is not None:
            return cls(_load_file(path), source=f"{PORTALS_FILE_VAR} ({path})")
        return cls({}, source="environment (no portal policies configured)")


def _load_inline(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(
            f"{PORTALS_VAR} is not valid JSON ({exc}); set it to a JSON object mapping "
            f"portal ids to policies, e.g. {_EXAMPLE}"
        ) from None
    return _object(data, PORTALS_VAR)


def _load_file(name: str) -> dict[str, Any]:
    path = Path(name)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ConfigurationError(
            f"{PORTALS_FILE_VAR} must name a .json or .toml file, got {name!r}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"{PORTALS_FILE_VAR}: cannot read {name!r} ({exc}); "
            "point it at a readable UTF-8 .json or .toml file"
        ) from None
    try:
        data: object = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError and JSONDecodeError both are
        kind = "TOML" if suffix == ".toml" else "JSON"
        raise ConfigurationError(
            f"{PORTALS_FILE_VAR}: {name!r} is not valid {kind} ({exc}); "
            "fix the file (one entry per portal id, e.g. a [acme] table in TOML)"
        ) from None
    return _object(data, f"{PORTALS_FILE_VAR} ({name})")


def _object(data: object, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"{where} must be a JSON object mapping portal ids to policies, "
            f"got {type(data).__name__}; e.g. {_EXAMPLE}"
        )
    return data
