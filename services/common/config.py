"""The gateway configuration file: providers, accounts and their gateways.

Every service reads the same TOML file (``TOLLGATE_CONFIG``, default
``tollgate.toml`` in the working directory, else the built-in defaults) once
at start. Each problem in it is collected and reported together in one
:class:`ConfigError`.

Example::

    [providers.anthropic]
    base_url = "https://api.anthropic.com"

    [providers.groq]                # any OpenAI-compatible provider
    format = "openai"
    base_url = "https://api.groq.com/openai"

    [accounts.acme.gateways.agents]
    authenticated = true
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PROVIDER_FORMATS = ("anthropic", "openai")

DEFAULT_PROVIDERS: Mapping[str, tuple[str, str]] = {
    "anthropic": ("anthropic", "https://api.anthropic.com"),
    "openai": ("openai", "https://api.openai.com"),
}

# Accounts and gateways served when the configuration declares none, so that a
# first run works without a file. The short route /{provider}/... uses them.
DEFAULT_ACCOUNT_ID = "default"
DEFAULT_GATEWAY_ID = "default"


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    # Wire format the provider speaks: "anthropic" or "openai".
    format: str
    # Scheme, host and optional path prefix; request paths are appended.
    base_url: str


@dataclass(frozen=True, slots=True)
class Gateway:
    account_id: str
    gateway_id: str
    # Require a gateway key on every call.
    authenticated: bool = False
    # On a policy failure (Redis down, deadline exceeded): admit the call
    # ("open", the default without authentication) or reject it with 503
    # ("closed", always for authenticated gateways).
    fail_mode: str = "open"
    # Per-gateway settings read by later features (cache, limits, loop
    # guard), kept as plain tables and validated by the feature that owns them.
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    providers: Mapping[str, Provider]
    gateways: Mapping[tuple[str, str], Gateway]
    default_account_id: str = DEFAULT_ACCOUNT_ID
    default_gateway_id: str = DEFAULT_GATEWAY_ID

    def gateway(self, account_id: str, gateway_id: str) -> Gateway | None:
        return self.gateways.get((account_id, gateway_id))


def config_path_from_env(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Return the configuration file to read, or None for built-in defaults."""
    explicit = environ.get("TOLLGATE_CONFIG")
    if explicit:
        return Path(explicit)
    local = Path("tollgate.toml")
    return local if local.is_file() else None


def load_config(path: Path | None) -> GatewayConfig:
    """Read and validate the configuration file; None gives the defaults."""
    if path is None:
        return parse_config({})
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError([f"{path}: file not found"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from exc
    return parse_config(raw, environ=os.environ)


def parse_config(
    raw: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Validate a parsed configuration table.

    Provider base URLs can be overridden per provider with the environment
    variable ``TOLLGATE_<NAME>_BASE_URL`` (tests and the demo point them at the
    simulator this way).
    """
    environ = environ if environ is not None else os.environ
    problems: list[str] = []
    providers = _parse_providers(raw.get("providers", {}), environ, problems)
    gateways = _parse_accounts(raw.get("accounts", {}), problems)
    ingress = raw.get("ingress", {})
    default_account = str(ingress.get("default_account", DEFAULT_ACCOUNT_ID))
    default_gateway = str(ingress.get("default_gateway", DEFAULT_GATEWAY_ID))
    # Without declared accounts the default gateway exists, so a first run
    # works without a file. With accounts declared, the short route answers
    # 404 unless the default gateway is one of them.
    if not raw.get("accounts"):
        gateways[(default_account, default_gateway)] = Gateway(
            default_account, default_gateway
        )
    if problems:
        raise ConfigError(problems)
    return GatewayConfig(
        providers=providers,
        gateways=gateways,
        default_account_id=default_account,
        default_gateway_id=default_gateway,
    )


def _parse_providers(
    table: Any, environ: Mapping[str, str], problems: list[str]
) -> dict[str, Provider]:
    if not isinstance(table, dict):
        problems.append("providers: expected a table")
        table = {}
    names = set(DEFAULT_PROVIDERS) | set(table)
    providers: dict[str, Provider] = {}
    for name in sorted(names):
        entry = table.get(name, {})
        if not isinstance(entry, dict):
            problems.append(f"providers.{name}: expected a table")
            continue
        default_format, default_url = DEFAULT_PROVIDERS.get(name, ("", ""))
        wire_format = str(entry.get("format", default_format))
        env_name = f"TOLLGATE_{name.upper().replace('-', '_')}_BASE_URL"
        base_url = environ.get(env_name) or str(entry.get("base_url", default_url))
        if not _valid_name(name):
            problems.append(
                f"providers.{name}: invalid name, use letters, digits, - and _"
            )
        if wire_format not in PROVIDER_FORMATS:
            problems.append(
                f"providers.{name}.format: expected one of "
                f"{', '.join(PROVIDER_FORMATS)}, got {wire_format!r}"
            )
        url_problem = _check_base_url(base_url)
        if url_problem:
            problems.append(f"providers.{name}.base_url: {url_problem}")
        providers[name] = Provider(name, wire_format, base_url.rstrip("/"))
    return providers


def _parse_accounts(table: Any, problems: list[str]) -> dict[tuple[str, str], Gateway]:
    if not isinstance(table, dict):
        problems.append("accounts: expected a table")
        return {}
    gateways: dict[tuple[str, str], Gateway] = {}
    for account_id, account in table.items():
        if not _valid_name(account_id):
            problems.append(f"accounts.{account_id}: invalid account id")
        entries = account.get("gateways", {}) if isinstance(account, dict) else None
        if not isinstance(entries, dict):
            problems.append(f"accounts.{account_id}.gateways: expected a table")
            continue
        for gateway_id, entry in entries.items():
            where = f"accounts.{account_id}.gateways.{gateway_id}"
            gateway = _parse_gateway(account_id, gateway_id, entry, where, problems)
            if gateway is not None:
                gateways[(account_id, gateway_id)] = gateway
    return gateways


def _parse_gateway(
    account_id: str, gateway_id: str, entry: Any, where: str, problems: list[str]
) -> Gateway | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected a table")
        return None
    if not _valid_name(gateway_id):
        problems.append(f"{where}: invalid gateway id")
    authenticated = entry.get("authenticated", False)
    if not isinstance(authenticated, bool):
        problems.append(f"{where}.authenticated: expected true or false")
        authenticated = False
    # Failing open admits calls that nobody authenticated, so a gateway that
    # requires keys fails closed by default and cannot be set to fail open.
    fail_mode = entry.get("fail_mode", "closed" if authenticated else "open")
    if fail_mode not in ("open", "closed"):
        problems.append(f'{where}.fail_mode: expected "open" or "closed"')
        fail_mode = "open"
    if authenticated and fail_mode == "open":
        problems.append(
            f"{where}.fail_mode: an authenticated gateway cannot fail open, "
            "because keys cannot be checked while the policy service is down; "
            'remove fail_mode or set it to "closed"'
        )
    extra = {k: v for k, v in entry.items() if k not in ("authenticated", "fail_mode")}
    return Gateway(account_id, gateway_id, authenticated, fail_mode, extra)


def _valid_name(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "-_" for c in name)


def _check_base_url(url: str) -> str:
    if not url:
        return "missing"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return f"expected an http or https URL, got {url!r}"
    if not parts.hostname:
        return f"missing host in {url!r}"
    if parts.query or parts.fragment:
        return f"must not carry a query or fragment: {url!r}"
    return ""
