"""OAuth 2 authorization code with PKCE (S256) for Google and Microsoft: the authorization URL, the
code exchange and the refresh. Endpoints, client ids and secrets come from the settings."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx

from calmesh_common.problems import Problem
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


def new_state() -> tuple[str, str]:
    """(state, its digest): only the digest is stored."""
    state = secrets.token_urlsafe(32)
    return state, state_digest(state)


def state_digest(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def new_verifier() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) per RFC 7636."""
    verifier = secrets.token_urlsafe(64)[:96]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


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
