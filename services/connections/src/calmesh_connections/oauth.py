"""OAuth 2 authorization code with PKCE (S256) for Google and Microsoft: the authorization URL, the
code exchange and the refresh. Endpoints, client ids and secrets come from the settings.

The flow is bound to the browser that starts it (login CSRF / account-linking defence):
``POST /connections/{provider}`` answers a start URL on CalMesh's public origin; opening it, signed
in as the user who created the connection, sets a short-lived HttpOnly cookie tied to the state and
redirects to the provider. The callback completes the connection only when that cookie comes back
with the state, so a victim who consents through a link an attacker sent attaches nothing to the
attacker's account.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from calmesh_common.problems import FieldError, Problem
from calmesh_common.settings import Settings

OAUTH_PROVIDERS = ("google", "microsoft")


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    client_id: str
    client_secret: str
    auth_url: str
    token_url: str
    scopes: str
    setting_prefix: str

    @property
    def configured(self) -> bool:
        return bool(self.client_id and self.client_secret)


def provider_config(settings: Settings, provider: str) -> ProviderConfig:
    if provider == "google":
        return ProviderConfig(
            "Google", settings.google_client_id, settings.google_client_secret, settings.google_auth_url,
            settings.google_token_url, settings.google_scopes, "CALMESH_GOOGLE",
        )
    if provider == "microsoft":
        return ProviderConfig(
            "Microsoft", settings.microsoft_client_id, settings.microsoft_client_secret, settings.microsoft_auth_url,
            settings.microsoft_token_url, settings.microsoft_scopes, "CALMESH_MICROSOFT",
        )
    raise Problem(404, "not_found", f"No OAuth provider {provider!r}.")


def require_configured(config: ProviderConfig) -> None:
    if not config.configured:
        raise Problem(
            422,
            "provider_not_configured",
            f"{config.name} connections are not configured on this server: set {config.setting_prefix}_CLIENT_ID and "
            f"{config.setting_prefix}_CLIENT_SECRET.",
        )


def callback_url(settings: Settings, provider: str) -> str:
    return f"{settings.public_base_url}/api/v1/connections/{provider}/callback"


def start_url(settings: Settings, provider: str, state: str) -> str:
    """The `authorization_url` a client sends its user to: CalMesh's own start page, which binds
    the browser and then redirects to the provider."""
    return f"{settings.public_base_url}/api/v1/connections/{provider}/authorize?{urlencode({'state': state})}"


def _origin(url: str) -> tuple[str, str, int] | None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return None
    return scheme, parts.hostname.lower(), port


def check_return_to(settings: Settings, redirect_uri: str) -> str:
    """`redirect_uri` as an absolute URL on the public origin or an allowed one (a path such as
    ``/app/connections`` is read on the public origin); 422 naming the field otherwise."""
    def refuse(message: str) -> Problem:
        return Problem(422, "invalid_redirect_uri", f"redirect_uri: {message}",
                       errors=[FieldError("redirect_uri", message)])

    raw = redirect_uri.strip()
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in raw):
        raise refuse("must be a plain URL (no control characters or backslashes)")
    if raw.startswith("/") and not raw.startswith("//"):
        raw = urljoin(settings.public_base_url + "/", raw)
    parts = urlsplit(raw)
    origin = _origin(raw)
    if origin is None:
        raise refuse("must be an absolute http(s) URL or a path on this server")
    if parts.username is not None or parts.password is not None:
        raise refuse("must not carry a user name or password")
    allowed = {_origin(settings.public_base_url), *(_origin(o) for o in settings.oauth_redirect_origins)}
    if origin not in allowed:
        raise refuse(
            f"{origin[0]}://{parts.netloc} is not this server's origin ({settings.public_base_url}) nor one of "
            "CALMESH_OAUTH_REDIRECT_ORIGINS"
        )
    return parts._replace(fragment="").geturl()


# --- the browser binding --------------------------------------------------------------------

#: On an https public URL the cookie is ``__Host-``-prefixed (Secure, Path=/, no Domain: browsers
#: refuse it otherwise, so no sibling host or plain-http page can plant or overwrite it). Browsers
#: accept a ``__Host-`` (or any Secure) cookie only from a secure origin, and http://127.0.0.1 of
#: `make up` is not one everywhere (nor for HTTP libraries' cookie jars), so over http the cookie
#: drops the prefix and Secure and is scoped to the connections path instead.
BINDING_COOKIE_SECURE = "__Host-calmesh_oauth_"
BINDING_COOKIE_PLAIN = "calmesh_oauth_"
_PLAIN_COOKIE_PATH = "/api/v1/connections"


def _secure(settings: Settings) -> bool:
    return settings.public_base_url.lower().startswith("https://")


def binding_cookie_name(settings: Settings, digest: str) -> str:
    """One cookie per pending flow (named after its state's digest), so two flows never clash."""
    return (BINDING_COOKIE_SECURE if _secure(settings) else BINDING_COOKIE_PLAIN) + digest[:20]


def new_binding() -> tuple[str, str]:
    """(cookie value, its digest): only the digest is stored with the state."""
    value = secrets.token_urlsafe(32)
    return value, binding_digest(value)


def binding_digest(value: str) -> str:
    return hashlib.sha256(f"oauth-binding:{value}".encode()).hexdigest()


def binding_matches(stored_digest: str | None, presented: str | None) -> bool:
    if not stored_digest or not presented:
        return False
    return hmac.compare_digest(stored_digest, binding_digest(presented))


def binding_cookie(settings: Settings, digest: str, value: str, max_age: int) -> str:
    """The Set-Cookie value binding this browser to the flow (max_age 0 clears it)."""
    name = binding_cookie_name(settings, digest)
    if _secure(settings):
        attributes = "Path=/; Secure"
    else:
        attributes = f"Path={_PLAIN_COOKIE_PATH}"
    return f"{name}={value}; Max-Age={max(0, max_age)}; {attributes}; HttpOnly; SameSite=Lax"


def challenge_for(verifier: str) -> str:
    """The S256 code_challenge of `verifier` (RFC 7636)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def new_state() -> tuple[str, str]:
    """(state, its digest): only the digest is stored."""
    state = secrets.token_urlsafe(32)
    return state, state_digest(state)


def state_digest(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def new_verifier() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) per RFC 7636."""
    verifier = secrets.token_urlsafe(64)[:96]
    return verifier, challenge_for(verifier)


def authorization_url(config: ProviderConfig, provider: str, *, redirect_uri: str, state: str, challenge: str) -> str:
    params = {
        "client_id": config.client_id,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": config.scopes,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if provider == "google":
        # A refresh token every time (prompt=consent), for offline access.
        params.update({"access_type": "offline", "prompt": "consent", "include_granted_scopes": "true"})
    else:
        params.update({"response_mode": "query"})
    separator = "&" if "?" in config.auth_url else "?"
    return f"{config.auth_url}{separator}{urlencode(params)}"


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str | None
    expires_at: datetime | None
    scope: str | None

    def as_credentials(self, previous_refresh: str | None = None) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token or previous_refresh,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "scope": self.scope,
        }


class GrantRevoked(Exception):
    """The token endpoint answered invalid_grant: the user revoked access (or it expired)."""


class TokenEndpointError(Exception):
    """The token endpoint failed otherwise (network, 5xx, a client misconfiguration)."""


async def _token_call(http: httpx.AsyncClient, config: ProviderConfig, form: dict[str, str]) -> Tokens:
    form = {**form, "client_id": config.client_id, "client_secret": config.client_secret}
    try:
        response = await http.post(config.token_url, data=form, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise TokenEndpointError(f"{config.name}'s token endpoint could not be reached ({type(exc).__name__})") from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 400 or "access_token" not in body:
        error = str(body.get("error") or response.status_code)
        if error == "invalid_grant":
            raise GrantRevoked(str(body.get("error_description") or "invalid_grant"))
        raise TokenEndpointError(f"{config.name}'s token endpoint refused: {error}")
    expires_in = body.get("expires_in")
    expires_at = datetime.now(UTC) + timedelta(seconds=int(expires_in)) if expires_in else None
    return Tokens(body["access_token"], body.get("refresh_token"), expires_at, body.get("scope"))


async def exchange_code(http: httpx.AsyncClient, config: ProviderConfig, *, code: str, redirect_uri: str, verifier: str) -> Tokens:
    return await _token_call(
        http, config,
        {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, "code_verifier": verifier},
    )


async def refresh(http: httpx.AsyncClient, config: ProviderConfig, refresh_token: str) -> Tokens:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if config.name == "Microsoft":
        form["scope"] = config.scopes
    return await _token_call(http, config, form)
