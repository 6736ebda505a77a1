"""Parse gateway URLs into the account, gateway, provider and upstream path.

Two forms are served:

- ``/v1/{account_id}/{gateway_id}/{provider}/{path}``, the scheme of
  Cloudflare AI Gateway, and
- ``/{provider}/{path}``, which uses the configured default gateway.
"""

from __future__ import annotations

from dataclasses import dataclass

from yarl import URL

from services.common.config import GatewayConfig
from services.ingress.errors import InvalidRequest, NotFound


@dataclass(frozen=True, slots=True)
class Route:
    account_id: str
    gateway_id: str
    provider: str
    # Upstream path with its leading slash, still percent-encoded as received.
    path: str


# Characters that must not appear in a forwarded path, raw or percent-encoded:
# they could climb out of the provider's path prefix or change the host.
_FORBIDDEN_ENCODED = ("%2f", "%5c", "%2e", "%00", "%3f", "%23")


def parse_route(raw_path: str, config: GatewayConfig) -> Route:
    """Split the raw (still percent-encoded) request path into a Route.

    Raises NotFound for an unknown provider or gateway and InvalidRequest for
    a path that tries to leave the provider's base URL.
    """
    path = raw_path.split("?", 1)[0]
    segments = path.split("/")[1:]
    if segments and segments[0] == "v1":
        if len(segments) < 4 or not segments[3]:
            raise NotFound(
                "not found: use /v1/{account_id}/{gateway_id}/{provider}/..."
            )
        account_id, gateway_id, provider = segments[1], segments[2], segments[3]
        rest = segments[4:]
    elif segments and segments[0]:
        account_id = config.default_account_id
        gateway_id = config.default_gateway_id
        provider = segments[0]
        rest = segments[1:]
    else:
        raise NotFound(
            "not found: use /v1/{account_id}/{gateway_id}/{provider}/... "
            "or /{provider}/..."
        )
    if provider not in config.providers:
        raise NotFound(
            f"provider {provider!r} not found; configured providers: "
            f"{', '.join(sorted(config.providers))}"
        )
    if config.gateway(account_id, gateway_id) is None:
        raise NotFound(f"gateway {account_id}/{gateway_id} not found")
    check_path_segments(rest)
    return Route(account_id, gateway_id, provider, "/" + "/".join(rest))


def check_path_segments(segments: list[str]) -> None:
    """Raise InvalidRequest for a path that could leave the provider's prefix.

    Empty segments are rejected too, which stops ``//host`` and absolute URLs
    such as ``http://host/...`` placed in the path.
    """
    for segment in segments:
        lowered = segment.lower()
        if segment in ("", ".", "..") and segments != [""]:
            raise InvalidRequest(
                "invalid path: empty, '.' and '..' segments are not allowed"
            )
        if "\\" in segment or any(code in lowered for code in _FORBIDDEN_ENCODED):
            raise InvalidRequest(
                "invalid path: encoded '/', '\\', '.', '?', '#' and NUL "
                "characters are not allowed"
            )


def upstream_url(base_url: str, path: str, query_string: str) -> str:
    """Join the configured base URL and the request path, and check the result.

    The host, port and scheme always come from the configuration. The check
    is a second line behind :func:`check_path_segments`: it raises
    InvalidRequest if the joined URL names another host or leaves the base
    URL's path prefix.
    """
    url = base_url + path
    if query_string:
        url += "?" + query_string
    try:
        base, joined = URL(base_url), URL(url)
    except ValueError as exc:
        raise InvalidRequest("invalid path: it does not form a valid URL") from exc
    prefix = base.raw_path.rstrip("/")
    same_origin = (joined.scheme, joined.host, joined.port) == (
        base.scheme,
        base.host,
        base.port,
    )
    inside = joined.raw_path == prefix or joined.raw_path.startswith(prefix + "/")
    if not same_origin or not inside or joined.user or joined.fragment:
        raise InvalidRequest("invalid path: it must stay under the provider's URL")
    return url
