from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from twofa_middleware.errors import ConfigurationError, PolicyError
from twofa_middleware.policy import NOT_ENFORCED, Method, PortalPolicy
from twofa_middleware.settings import (
    EnvironmentSettings,
    SettingsProvider,
    StaticSettings,
    parse_portals,
)

ACME = PortalPolicy(enforce=True, methods=frozenset({Method.TOTP}))
STRICT_DEFAULT = PortalPolicy(enforce=True, reauth_hours=1)


@pytest.mark.parametrize(
    ("portals", "portal", "expected"),
    [
        ({}, "acme", NOT_ENFORCED),
        ({"acme": ACME}, "acme", ACME),
        ({"acme": ACME}, "other", NOT_ENFORCED),
        ({"acme": ACME, "default": STRICT_DEFAULT}, "other", STRICT_DEFAULT),
        ({"acme": ACME, "default": STRICT_DEFAULT}, "acme", ACME),
        ({"acme": {"enforce": True, "methods": ["totp"]}}, "acme", ACME),
        ({"default": {"enforce": True, "reauth_hours": 1}}, "x", STRICT_DEFAULT),
    ],
)
async def test_static_resolution(
    portals: dict[str, Any], portal: str, expected: PortalPolicy
) -> None:
    settings: SettingsProvider = StaticSettings(portals)
    await settings.start()
    assert await settings.get_policy(portal) == expected
    await settings.close()


@pytest.mark.parametrize(
    ("portals", "error", "field", "message"),
    [
        (
            {"acme": {"reauth_hours": -3}},
            PolicyError,
            "reauth_hours",
            "portal 'acme': reauth_hours must be a positive number of hours or null, got -3",
        ),
        (
            {"acme": {"enforce": "yes"}},
            PolicyError,
            "enforce",
            "portal 'acme': enforce must be true or false, got 'yes'",
        ),
        (
            {"acme": {"methods": ["pigeon"]}},
            PolicyError,
            "methods",
            "portal 'acme': methods contains 'pigeon'",
        ),
        ({"acme": {"enfroce": True}}, PolicyError, "enfroce", "portal 'acme': unknown"),
        ({"acme": 3}, PolicyError, "policy", "portal 'acme': a policy must be an object"),
        ({"": {}}, ConfigurationError, None, "a portal id must be a non-empty string, got ''"),
        ({7: {}}, ConfigurationError, None, "a portal id must be a non-empty string, got 7"),
    ],
)
def test_static_rejects(
    portals: Any, error: type[Exception], field: str | None, message: str
) -> None:
    with pytest.raises(error) as caught:
        StaticSettings(portals)
    assert str(caught.value).startswith(message)
    if field is not None:
        assert isinstance(caught.value, PolicyError)
        assert caught.value.field == field


def test_parse_portals_rejects_non_mapping() -> None:
    with pytest.raises(ConfigurationError, match="must be an object mapping portal ids"):
        parse_portals([("acme", {})])  # type: ignore[arg-type]


async def test_static_rejects_empty_portal_lookup() -> None:
    with pytest.raises(ConfigurationError, match="non-empty string"):
        await StaticSettings({}).get_policy("")


# -- environment ---------------------------------------------------------------------


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


ACME_JSON = '{"acme": {"enforce": true, "methods": ["totp"]}, "default": {"enforce": false}}'
ACME_TOML = """
[acme]
enforce = true
methods = ["totp"]

[default]
enforce = false
"""


@pytest.mark.parametrize(
    ("environ", "files"),
    [
        ({"TWOFA_PORTALS": ACME_JSON}, {}),
        ({"TWOFA_PORTALS_FILE": "@p.json"}, {"p.json": ACME_JSON}),
        ({"TWOFA_PORTALS_FILE": "@p.toml"}, {"p.toml": ACME_TOML}),
        ({"TWOFA_PORTALS_FILE": "@P.TOML"}, {"P.TOML": ACME_TOML}),
    ],
)
async def test_environment_sources(
    tmp_path: Path, environ: dict[str, str], files: dict[str, str]
) -> None:
    for name, text in files.items():
        _write(tmp_path, name, text)
    env = {k: _expand(v, tmp_path) for k, v in environ.items()}
    settings = EnvironmentSettings.from_env(env)
    assert await settings.get_policy("acme") == ACME
    assert await settings.get_policy("unlisted") == PortalPolicy(enforce=False)
    assert set(settings.policies) == {"acme", "default"}


async def test_environment_unset_enforces_nothing() -> None:
    settings = EnvironmentSettings.from_env({"PATH": "/bin"})
    assert settings.policies == {}
    assert await settings.get_policy("acme") == NOT_ENFORCED


async def test_environment_toml_default_applies_to_unlisted(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.toml", "[default]\nenforce = true\nreauth_hours = 1\n")
    settings = EnvironmentSettings.from_env({"TWOFA_PORTALS_FILE": path})
    assert await settings.get_policy("anything") == STRICT_DEFAULT


@pytest.mark.parametrize(
    ("environ", "files", "error", "field", "fragments"),
    [
        (
            {"TWOFA_PORTALS": "{}", "TWOFA_PORTALS_FILE": "x.json"},
            {},
            ConfigurationError,
            None,
            ["both TWOFA_PORTALS and TWOFA_PORTALS_FILE are set", "only one"],
        ),
        (
            {"TWOFA_PORTALS": "{acme: 1}"},
            {},
            ConfigurationError,
            None,
            ["TWOFA_PORTALS is not valid JSON", "set it to a JSON object"],
        ),
        (
            {"TWOFA_PORTALS": ""},
            {},
            ConfigurationError,
            None,
            ["TWOFA_PORTALS is not valid JSON"],
        ),
        (
            {"TWOFA_PORTALS": '["acme"]'},
            {},
            ConfigurationError,
            None,
            ["TWOFA_PORTALS must be a JSON object mapping portal ids", "got list"],
        ),
        (
            {"TWOFA_PORTALS": '{"acme": {"reauth_hours": 0}}'},
            {},
            PolicyError,
            "reauth_hours",
            ["TWOFA_PORTALS: portal 'acme': reauth_hours must be a positive number"],
        ),
        (
            {"TWOFA_PORTALS": '{"": {}}'},
            {},
            ConfigurationError,
            None,
            ["TWOFA_PORTALS: a portal id must be a non-empty string"],
        ),
        (
            {"TWOFA_PORTALS_FILE": "@missing.json"},
            {},
            ConfigurationError,
            None,
            ["TWOFA_PORTALS_FILE: cannot read", "missing.json", "readable"],
        ),
        (
            {"TWOFA_PORTALS_FILE": "@p.yaml"},
            {"p.yaml": "acme: {}"},
            ConfigurationError,
            None,
            ["TWOFA_PORTALS_FILE must name a .json or .toml file", "p.yaml"],
        ),
        (
            {"TWOFA_PORTALS_FILE": "@p.json"},
            {"p.json": "{"},
            ConfigurationError,
            None,
            ["TWOFA_PORTALS_FILE", "p.json", "is not valid JSON", "fix the file"],
        ),
        (
            {"TWOFA_PORTALS_FILE": "@p.json"},
            {"p.json": "42"},
            ConfigurationError,
            None,
            ["TWOFA_PORTALS_FILE", "must be a JSON object", "got int"],
        ),
        (
            {"TWOFA_PORTALS_FILE": "@p.toml"},
            {"p.toml": "[acme\nenforce = true"},
            ConfigurationError,
            None,
            ["TWOFA_PORTALS_FILE", "p.toml", "is not valid TOML", "[acme] table"],
        ),
        (
            {"TWOFA_PORTALS_FILE": "@p.toml"},
            {"p.toml": "[acme]\nenforce = true\ngroups = ['robots']\n"},
            PolicyError,
            "groups",
            ["TWOFA_PORTALS_FILE (", "p.toml): portal 'acme': groups contains 'robots'"],
        ),
        (
            {"TWOFA_PORTALS_FILE": "@p.toml"},
            {"p.toml": "enforce = true\n"},
            PolicyError,
            "policy",
            ["portal 'enforce': a policy must be an object of settings"],
        ),
    ],
)
def test_environment_rejects(
    tmp_path: Path,
    environ: dict[str, str],
    files: dict[str, str],
    error: type[Exception],
    field: str | None,
    fragments: list[str],
) -> None:
    for name, text in files.items():
        _write(tmp_path, name, text)
    env = {k: _expand(v, tmp_path) for k, v in environ.items()}
    with pytest.raises(error) as caught:
        EnvironmentSettings.from_env(env)
    for fragment in fragments:
        assert fragment in str(caught.value)
    if field is not None:
        assert isinstance(caught.value, PolicyError)
        assert caught.value.field == field


def _expand(value: str, tmp_path: Path) -> str:
    """``@name`` in a test table stands for the file ``tmp_path / name``."""
    return str(tmp_path / value[1:]) if value.startswith("@") else value
