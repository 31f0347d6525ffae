"""The built-in authorization server (SMART App Launch and Backend Services over OAuth 2.0).

- `GET /fhir/.well-known/smart-configuration` and `GET /auth/jwks`: discovery.
- `GET/POST /auth/authorize`: the authorization-code flow with PKCE (S256) and an HTML login
  form: user name, password, a TOTP code when the account has one, and a new password when the
  old one is temporary or too old.
- `POST /auth/token`: `authorization_code`, `refresh_token` (rotated on every use) and
  `client_credentials` (client secret, or a `private_key_jwt` assertion).
- `POST /auth/revoke` (RFC 7009): refresh tokens with their family, access tokens by jti.

Every login attempt, password change, token issued, refreshed or revoked is audited; errors
follow RFC 6749 (`{"error": ..., "error_description": ...}`), never a stack trace.
"""

from __future__ import annotations

import base64
import html
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jwt
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from fhir_server.api.formats import read_body
from fhir_server.api.routes import base_url
from fhir_server.audit.events import Agent
from fhir_server.auth.access import patient_in_context
from fhir_server.auth.accounts import AccountError, LoginResult, LoginStatus
from fhir_server.auth.clients import Client
from fhir_server.auth.grants import CHALLENGE, CodeGrant
from fhir_server.auth.scopes import ScopeError, ScopeSet
from fhir_server.auth.service import Security, issuer_of
from fhir_server.auth.tokens import TokenError, verify_client_assertion

FORM_LIMIT = 64 * 1024
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
OAUTH_FIELDS = (
    "response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge",
    "code_challenge_method", "aud",
)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status

    def response(self) -> JSONResponse:
        headers = dict(NO_STORE)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="fhir-server"'
        body = {"error": self.error, "error_description": self.description}
        return JSONResponse(body, self.status, headers)


def _security(request: Request) -> Security:
    return request.app.state.security


def _root(request: Request) -> str:
    return base_url(request).removesuffix("/fhir")


def _agent(request: Request, name: str, role: str | None = None, resource: str | None = None,
           ) -> Agent:
    address = request.client.host if request.client else None
    return Agent(name, name, resource, (role,) if role else (), address)


async def _audit(request: Request, kind: str, agent: Agent, status: int, text: str) -> None:
    trail = request.app.state.audit
    if trail is not None:
        await trail.record_security(kind, agent, status, text)


async def _form(request: Request) -> dict[str, str]:
    raw = await read_body(request, FORM_LIMIT)
    try:
        return dict(parse_qsl(raw.decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "the form is not UTF-8") from None


# --------------------------------------------------------------------------- discovery


async def smart_configuration(request: Request) -> Response:
    root = _root(request)
    return JSONResponse({
        "issuer": issuer_of(request.app.state.settings),
        "jwks_uri": f"{root}/auth/jwks",
        "authorization_endpoint": f"{root}/auth/authorize",
        "token_endpoint": f"{root}/auth/token",
        "revocation_endpoint": f"{root}/auth/revoke",
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384", "RS256"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": [
            "patient/*.cruds", "user/*.cruds", "system/*.cruds", "patient/*.read",
            "user/*.read", "system/*.read", "fhirUser", "offline_access", "online_access",
        ],
        "capabilities": [
            "launch-standalone", "client-confidential-symmetric",
            "client-confidential-asymmetric", "context-standalone-patient",
            "permission-patient", "permission-user", "permission-v1", "permission-v2",
        ],
    })


async def jwks(request: Request) -> Response:
    return JSONResponse(_security(request).keyring.jwks())


# --------------------------------------------------------------------------- authorize


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fhir-server: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>Sign in</h1><p>{client} asks for access: <code>{scope}</code></p>
{message}<form method="post" action="authorize">{hidden}
<p><label>User name <input name="username" value="{username}" autocomplete="username"
required></label></p>
<p><label>Password <input name="password" type="password" autocomplete="current-password"
required></label></p>
{extra}<p><button type="submit">Sign in</button></p></form></main></body></html>"""
_TOTP = """<p><label>Code from your authenticator app <input name="totp" inputmode="numeric"
autocomplete="one-time-code" required></label></p>
"""
_NEW_PASSWORD = """<p><label>New password <input name="new_password" type="password"
autocomplete="new-password" required></label></p>
<p><label>New password again <input name="new_password2" type="password"
autocomplete="new-password" required></label></p>
"""


def _page(client: Client, params: dict[str, str], message: str = "", extra: str = "",
          username: str = "", status: int = 200) -> HTMLResponse:
    hidden = "".join(
        f'<input type="hidden" name="{name}" value="{html.escape(params[name])}">'
        for name in OAUTH_FIELDS if name in params
    )
    text = _PAGE.format(
        client=html.escape(client.name), scope=html.escape(params.get("scope", "")),
        message=f'<p role="alert">{html.escape(message)}</p>' if message else "",
        hidden=hidden, username=html.escape(username), extra=extra,
    )
    headers = {**NO_STORE, "X-Frame-Options": "DENY",
               "Content-Security-Policy": "default-src 'none'; form-action 'self'"}
    return HTMLResponse(text, status, headers)


def _error_page(text: str) -> HTMLResponse:
    body = f"<!doctype html><title>fhir-server</title><p>{html.escape(text)}</p>"
    return HTMLResponse(body, 400, NO_STORE)


def _redirect(params: dict[str, str], **result: str) -> RedirectResponse:
    if "state" in params:
        result["state"] = params["state"]
    separator = "&" if "?" in params["redirect_uri"] else "?"
    return RedirectResponse(params["redirect_uri"] + separator + urlencode(result), 302)


async def _client_for(request: Request, params: dict[str, str]) -> Client | HTMLResponse:
    """The client of an authorization request; an error page (never a redirect) when the
    client or its redirect URI cannot be trusted."""
    client = await _security(request).clients.get(params.get("client_id", ""))
    if client is None:
        return _error_page("Unknown client_id: this application is not registered here.")
    if params.get("redirect_uri") not in client.redirect_uris:
        return _error_page("redirect_uri is not one registered for this application.")
    return client


def _request_error(params: dict[str, str]) -> str | None:
    if params.get("response_type") != "code":
        return "response_type must be code"
    if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
        return "PKCE is required: code_challenge with code_challenge_method S256"
    if not CHALLENGE.fullmatch(params["code_challenge"]):
        return "code_challenge must be the unpadded base64url SHA-256 of the code_verifier"
    return None


async def authorize_form(request: Request) -> Response:
    params = dict(request.query_params)
    client = await _client_for(request, params)
    if isinstance(client, HTMLResponse):
        return client
    if (problem := _request_error(params)) is not None:
        return _redirect(params, error="invalid_request", error_description=problem)
    return _page(client, params)


_MESSAGES = {
    LoginStatus.INVALID: "The user name, password or code is not right.",
    LoginStatus.TOTP_REQUIRED: "Enter the code from your authenticator app.",
    LoginStatus.TOTP_NOT_ENROLLED: (
        "Your account needs two-factor authentication, which an administrator has not set up "
        "yet. Ask them to enrol it."),
    LoginStatus.PASSWORD_CHANGE_REQUIRED: "Your password has expired: choose a new one.",
}


def _locked_message(result: LoginResult) -> str:
    return ("Too many failed sign-in attempts: sign-in is locked for this account for "
            f"{_minutes_left(result)} more minutes.")


def _minutes_left(result: LoginResult) -> int:
    if result.locked_until is None:
        return 0
    seconds = (result.locked_until - datetime.now(UTC)).total_seconds()
    return max(1, int(seconds // 60) + (seconds % 60 > 0))


async def authorize_submit(request: Request) -> Response:
    try:
        form = await _form(request)
    except OAuthError as exc:
        return _error_page(exc.description)
    params = {k: form[k] for k in OAUTH_FIELDS if k in form}
    client = await _client_for(request, params)
    if isinstance(client, HTMLResponse):
        return client
    if (problem := _request_error(params)) is not None:
        return _redirect(params, error="invalid_request", error_description=problem)
    security = _security(request)
    username, password = form.get("username", ""), form.get("password", "")
    result = await security.accounts.login(username, password, form.get("totp") or None)
    account = result.account
    agent = _agent(request, username, account.role if account else None,
                   account.resource if account else None)
    if result.status == LoginStatus.PASSWORD_CHANGE_REQUIRED and form.get("new_password"):
        if form["new_password"] != form.get("new_password2"):
            return _page(client, params, "The two new passwords differ.", _NEW_PASSWORD,
                         username)
        try:
            result = await security.accounts.change_password(
                username, password, form["new_password"])
        except AccountError as exc:
            return _page(client, params, str(exc), _NEW_PASSWORD, username)
        await _audit(request, "password-change", agent, 200 if result.status == "ok" else 401,
                     f"password of {username} changed at sign-in")
    ok = result.status == LoginStatus.OK
    await _audit(request, "login", agent, 200 if ok else 401,
                 f"sign-in of {username} for client {client.client_id}: {result.status}")
    if result.status == LoginStatus.LOCKED:
        return _page(client, params, _locked_message(result), username=username, status=403)
    if not ok or result.account is None:
        extra = {LoginStatus.TOTP_REQUIRED: _TOTP,
                 LoginStatus.PASSWORD_CHANGE_REQUIRED: _NEW_PASSWORD}.get(result.status, "")
        if result.status == LoginStatus.PASSWORD_CHANGE_REQUIRED and result.account and \
                result.account.requires_totp(security.settings):
            extra = _TOTP + extra
        return _page(client, params, _MESSAGES[result.status], extra, username,
                     401 if result.status == LoginStatus.INVALID else 200)
    account = result.account
    try:
        scope = str(ScopeSet.parse(client.scopes).narrow(params.get("scope", "")))
    except ScopeError as exc:
        return _redirect(params, error="invalid_scope", error_description=str(exc))
    code = await security.grants.issue_code(
        client.client_id, params["redirect_uri"], params["code_challenge"],
        params["code_challenge_method"], scope, account.username, account.resource,
        account.role,
    )
    return _redirect(params, code=code)


# --------------------------------------------------------------------------- token


async def _authenticate_client(request: Request, form: dict[str, str]) -> Client:
    """The client sending a token or revocation request: HTTP Basic, form secret or a
    private_key_jwt assertion. 401 invalid_client otherwise."""
    security = _security(request)
    header = request.headers.get("authorization", "")
    client_id, secret = form.get("client_id"), form.get("client_secret")
    if header.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(header[6:], validate=True).decode()
        except ValueError:  # binascii.Error, UnicodeDecodeError, non-ASCII text
            raise OAuthError("invalid_client", "malformed Basic credentials", 401) from None
        client_id, _, secret = decoded.partition(":")
    if form.get("client_assertion_type") == ASSERTION_TYPE:
        assertion = form.get("client_assertion", "")
        claimed = _assertion_issuer(assertion)
        client = await security.clients.get(claimed or "")
        if client is None or client.jwks is None:
            raise OAuthError("invalid_client", "unknown client or no keys registered", 401)
        try:
            await verify_client_assertion(
                assertion, client.jwks, client.client_id, f"{_root(request)}/auth/token",
                security.grants.remember_assertion,
            )
        except TokenError as exc:
            raise OAuthError("invalid_client", f"client assertion: {exc.reason}", 401) from None
        return client
    if not client_id or secret is None:
        raise OAuthError("invalid_client", "client authentication is required", 401)
    client = await security.clients.verify_secret(client_id, secret)
    if client is None:
        raise OAuthError("invalid_client", "unknown client or wrong secret", 401)
    return client


def _assertion_issuer(assertion: str) -> str | None:
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    issuer = claims.get("iss")
    return issuer if isinstance(issuer, str) else None


def _token_response(token: str, expires_in: int, scope: str, **more: str | None) -> Response:
    body: dict[str, Any] = {
        "access_token": token, "token_type": "Bearer", "expires_in": expires_in, "scope": scope,
    }
    body.update({k: v for k, v in more.items() if v is not None})
    return JSONResponse(body, 200, NO_STORE)


def _context(grant: CodeGrant) -> dict[str, str | None]:
    return {"patient": patient_in_context(grant.role, grant.fhir_user),
            "fhirUser": grant.fhir_user}


async def token(request: Request) -> Response:
    try:
        form = await _form(request)
        client = await _authenticate_client(request, form)
        return await _grant(request, form, client)
    except OAuthError as exc:
        return exc.response()


async def _grant(request: Request, form: dict[str, str], client: Client) -> Response:
    security = _security(request)
    kind = form.get("grant_type")
    agent = _agent(request, client.client_id)
    if kind == "authorization_code":
        grant = await security.grants.redeem_code(
            form.get("code", ""), client.client_id, form.get("redirect_uri", ""),
            form.get("code_verifier", ""))
        if grant is None:
            await _audit(request, "token-issue", agent, 400, "authorization code refused")
            raise OAuthError("invalid_grant", "the code is unknown, used, expired, or does "
                             "not match the client, redirect_uri or code_verifier")
        # SMART: a refresh token for an app that asked to stay signed in.
        scopes = ScopeSet.parse(grant.scope)
        refresh = await security.grants.issue_refresh(grant) if (
            scopes.has("offline_access") or scopes.has("online_access")) else None
        return await _issue_user_token(request, grant, client, "token-issue", refresh)
    if kind == "refresh_token":
        rotated = await security.grants.rotate_refresh(form.get("refresh_token", ""),
                                                       client.client_id)
        if rotated is None:
            await _audit(request, "token-refresh", agent, 400, "refresh token refused")
            raise OAuthError("invalid_grant", "the refresh token is unknown, expired, revoked "
                             "or another client's: sign in again")
        refresh, grant = rotated
        return await _issue_user_token(request, grant, client, "token-refresh", refresh)
    if kind == "client_credentials":
        try:
            registered = ScopeSet.parse(client.scopes)
            scope = str(registered.narrow(form["scope"]) if form.get("scope") else registered)
        except ScopeError as exc:
            raise OAuthError("invalid_scope", str(exc)) from None
        if not scope:
            raise OAuthError("invalid_scope", "none of the requested scopes is allowed")
        access, lifetime = security.tokens.issue(client.client_id, scope, client.client_id)
        await _audit(request, "token-issue", agent, 200,
                     f"client_credentials token for {client.client_id}: {scope}")
        return _token_response(access, lifetime, scope)
    raise OAuthError("unsupported_grant_type", f"grant_type {kind!r} is not supported")


async def _issue_user_token(
    request: Request, grant: CodeGrant, client: Client, kind: str, refresh: str | None
) -> Response:
    security = _security(request)
    account = await security.accounts.get(grant.username)
    agent = _agent(request, grant.username, grant.role, grant.fhir_user)
    if (
        account is None
        or (account.role, account.resource) != (grant.role, grant.fhir_user)
        or account.password_changed.timestamp() > grant.signed_in
    ):
        # Deleted, now another role or person, or its password changed (perhaps because it
        # was stolen): the session granted at sign-in is over.
        await _audit(request, kind, agent, 400, f"{grant.username} changed since sign-in")
        raise OAuthError("invalid_grant", "the account changed since sign-in: sign in again")
    access, lifetime = security.tokens.issue(
        grant.username, grant.scope, client.client_id, grant.fhir_user, grant.role)
    await _audit(request, kind, agent, 200,
                 f"token for {grant.username} via client {client.client_id}: {grant.scope}")
    return _token_response(access, lifetime, grant.scope, refresh_token=refresh,
                           **_context(grant))


async def revoke(request: Request) -> Response:
    try:
        form = await _form(request)
        client = await _authenticate_client(request, form)
    except OAuthError as exc:
        return exc.response()
    security = _security(request)
    value = form.get("token", "")
    revoked = await security.grants.revoke_refresh(value, client.client_id)
    if not revoked:
        try:
            claims = await security.tokens.verify(value)
        except TokenError:
            claims = None
        if claims is not None and claims.client_id == client.client_id and claims.jti:
            await security.grants.revoke_access(claims.jti, claims.expires)
            revoked = True
    await _audit(request, "token-revoke", _agent(request, client.client_id),
                 200, f"revocation by {client.client_id}: {'done' if revoked else 'no token'}")
    # RFC 7009: the answer is the same whether or not the token was valid.
    return Response(status_code=200, headers=NO_STORE)


auth_routes = [
    Route("/fhir/.well-known/smart-configuration", smart_configuration, methods=["GET"]),
    Route("/auth/jwks", jwks, methods=["GET"]),
    Route("/auth/authorize", authorize_form, methods=["GET"]),
    Route("/auth/authorize", authorize_submit, methods=["POST"]),
    Route("/auth/token", token, methods=["POST"]),
    Route("/auth/revoke", revoke, methods=["POST"]),
]
