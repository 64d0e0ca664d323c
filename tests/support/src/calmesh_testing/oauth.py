"""A fake OAuth 2 authorization server (Google's and Microsoft's shape): authorization code with
PKCE S256 — the verifier is checked against the challenge — refresh tokens, and revocation (the
next refresh answers ``invalid_grant``). Its access tokens are what the fake APIs accept."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

from litestar import Litestar, Request, Response, get, post


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    method: str
    scope: str
    used: bool = False


@dataclass
class OAuthFake:
    client_id: str = "calmesh-test-client"
    client_secret: str = "calmesh-test-secret"
    expires_in: int = 3600
    rotate_refresh_tokens: bool = False
    codes: dict[str, Grant] = field(default_factory=dict)
    access_tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (epoch)
    refresh_tokens: dict[str, bool] = field(default_factory=dict)  # token -> still valid
    log: list[dict[str, Any]] = field(default_factory=list)
    #: Set to make the next authorization deny access (as a user pressing "Cancel").
    deny_next: bool = False

    # -- what the tests do ---------------------------------------------------------------------

    def valid(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        expiry = self.access_tokens.get(authorization[7:])
        return expiry is not None and expiry > time.time()

    def revoke_all(self) -> None:
        """The user revoked the app: refresh tokens and access tokens stop working."""
        for token in self.refresh_tokens:
            self.refresh_tokens[token] = False
        self.access_tokens.clear()

    def expire_access_tokens(self) -> None:
        for token in self.access_tokens:
            self.access_tokens[token] = 0.0

    def refreshes(self) -> int:
        return sum(1 for entry in self.log if entry.get("grant_type") == "refresh_token")

    # -- the server ----------------------------------------------------------------------------

    def _issue(self, scope: str) -> dict[str, Any]:
        access = "at-" + secrets.token_urlsafe(16)
        refresh = "rt-" + secrets.token_urlsafe(16)
        self.access_tokens[access] = time.time() + self.expires_in
        self.refresh_tokens[refresh] = True
        return {"access_token": access, "refresh_token": refresh, "expires_in": self.expires_in, "token_type": "Bearer", "scope": scope}

    def app(self) -> Litestar:
        fake = self

        @get("/authorize")
        async def authorize(request: Request[Any, Any, Any]) -> Response[Any]:
            q = request.query_params
            if q.get("client_id") != fake.client_id or q.get("response_type") != "code":
                return Response({"error": "invalid_request"}, status_code=400)
            if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
                return Response({"error": "invalid_request", "error_description": "PKCE S256 required"}, status_code=400)
            redirect = q["redirect_uri"]
            if fake.deny_next:
                fake.deny_next = False
                params = {"error": "access_denied", "error_description": "The user said no", "state": q.get("state", "")}
            else:
                code = "code-" + secrets.token_urlsafe(12)
                fake.codes[code] = Grant(fake.client_id, redirect, q["code_challenge"], q["code_challenge_method"], q.get("scope", ""))
                params = {"code": code, "state": q.get("state", "")}
            sep = "&" if "?" in redirect else "?"
            return Response(content=b"", status_code=302, headers={"location": f"{redirect}{sep}{urlencode(params)}"})

        @post("/token")
        async def token(request: Request[Any, Any, Any]) -> Response[Any]:
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            fake.log.append({k: v for k, v in form.items() if k in ("grant_type", "client_id")})
            if form.get("client_id") != fake.client_id or form.get("client_secret") != fake.client_secret:
                return Response({"error": "invalid_client"}, status_code=401)
            if form.get("grant_type") == "authorization_code":
                grant = fake.codes.get(form.get("code", ""))
                if grant is None or grant.used or grant.redirect_uri != form.get("redirect_uri"):
                    return Response({"error": "invalid_grant", "error_description": "bad code"}, status_code=400)
                verifier = form.get("code_verifier", "")
                digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
                if digest != grant.challenge:
                    return Response({"error": "invalid_grant", "error_description": "PKCE verification failed"}, status_code=400)
                grant.used = True
                return Response(fake._issue(grant.scope))
            if form.get("grant_type") == "refresh_token":
                refresh = form.get("refresh_token", "")
                if not fake.refresh_tokens.get(refresh):
                    return Response({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}, status_code=400)
                issued = fake._issue("")
                if not fake.rotate_refresh_tokens:
                    fake.refresh_tokens.pop(issued["refresh_token"], None)
                    issued.pop("refresh_token")
                return Response(issued)
            return Response({"error": "unsupported_grant_type"}, status_code=400)

        @post("/revoke")
        async def revoke(request: Request[Any, Any, Any]) -> Response[Any]:
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            token = form.get("token", "")
            if token in fake.refresh_tokens:
                fake.refresh_tokens[token] = False
            fake.access_tokens.pop(token, None)
            return Response(b"", status_code=200)

        return Litestar([authorize, token, revoke], debug=False)
