"""Keystone v3 as the lab's cloud needs it: application credentials, tokens, the catalog,
and access rules checked the way keystonemiddleware checks them.

- `POST /v3/auth/tokens` with `{"auth": {"identity": {"methods": ["application_credential"],
  "application_credential": {"id", "secret"}}}}` answers 201, the token in the
  `X-Subject-Token` header and a body holding the catalog, the project and the credential
  (https://docs.openstack.org/api-ref/identity/v3/#authenticating-with-an-application-credential).
- `GET /v3/auth/tokens` (`X-Auth-Token`: a service's token, `X-Subject-Token`: the one to
  check) answers the token's body, as a service's auth_token middleware asks it.
- Access rules (keystonemiddleware/auth_token/__init__.py, `validate_allowed_request`): a
  token of a credential with rules (`None`: no rules, every call allowed; `[]`: nothing is)
  is refused (401) unless one rule has the request's method exactly, the service type the
  service's `[keystone_authtoken] service_type` names (unset: every rule token is
  refused), and a path matching `request.path`: the script name (the endpoint's path
  prefix, such as /heat-api) plus the path info, without the query. In a rule's path `*`
  (and `{name}`) is one path segment, `**` any characters, and the match is anchored
  (`_path_matches`).
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class AccessRule:
    service: str
    method: str
    path: str


@dataclass
class AppCredential:
    id: str
    secret: str
    name: str
    access_rules: tuple[AccessRule, ...] | None
    """None: unrestricted by rules; () : nothing allowed."""


@dataclass
class Token:
    id: str
    credential: AppCredential
    issued_at: float
    expires_at: float


@dataclass(frozen=True)
class Endpoint:
    service_type: str
    name: str
    interface: str
    region: str
    url: str


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def path_matches(request_path: str, rule_path: str) -> bool:
    """keystonemiddleware's own `_path_matches` (`*` and `{x}` one segment, `**` anything)."""
    from keystonemiddleware.auth_token import _path_matches

    return bool(_path_matches(request_path, rule_path))


@dataclass
class Keystone:
    project_id: str
    project_name: str = "lab"
    region: str = "RegionOne"
    token_lifetime: float = 3600.0
    clock: Callable[[], float] = time.time
    endpoints: list[Endpoint] = field(default_factory=list)
    credentials: dict[str, AppCredential] = field(default_factory=dict)
    tokens: dict[str, Token] = field(default_factory=dict)
    issued: list[Token] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_credential(
        self,
        name: str,
        access_rules: Sequence[AccessRule] | None = None,
        *,
        credential_id: str | None = None,
        secret: str | None = None,
    ) -> AppCredential:
        credential = AppCredential(
            id=credential_id or uuid.uuid4().hex,
            secret=secret or secrets.token_urlsafe(24),
            name=name,
            access_rules=None if access_rules is None else tuple(access_rules),
        )
        self.credentials[credential.id] = credential
        return credential

    def expire_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    # --- the API -------------------------------------------------------------------------

    def authenticate(self, body: Any) -> tuple[int, dict[str, str], Any]:
        try:
            identity = body["auth"]["identity"]
            given = identity["application_credential"]
            methods = identity["methods"]
        except (KeyError, TypeError):
            return 400, {}, _error(400, "Bad Request", "Invalid input for field 'identity'")
        credential = self.credentials.get(str(given.get("id")))
        if (
            methods != ["application_credential"]
            or credential is None
            or not secrets.compare_digest(str(given.get("secret", "")), credential.secret)
        ):
            return 401, {}, UNAUTHORIZED
        token = self.issue(credential)
        return 201, {"X-Subject-Token": token.id}, {"token": self._token_body(token)}

    def issue(self, credential: AppCredential) -> Token:
        """A token of `credential`, valid for `token_lifetime` from now."""
        now = self.clock()
        token = Token("gAAAAA" + uuid.uuid4().hex, credential, now, now + self.token_lifetime)
        with self._lock:
            self.tokens[token.id] = token
            self.issued.append(token)
        return token

    def stack_user_token(self, name: str, signal_path: str) -> Token:
        """The token Heat gets for a WaitConditionHandle's stack user (signal_transport
        TOKEN_SIGNAL): a user of Heat's stack domain whose token, by Heat's policy, may only
        signal its own resource (here: a rule for exactly `signal_path`); it expires with
        the token lifetime (Heat's FIXME: "the assumption here is that token expiry >
        timeout")."""
        user = AppCredential(
            id=uuid.uuid4().hex,
            secret=secrets.token_urlsafe(24),
            name=f"stack-user:{name}",
            access_rules=(AccessRule("orchestration", "POST", signal_path),),
        )
        return self.issue(user)

    def validate(self, subject: str) -> tuple[int, dict[str, str], Any]:
        token = self.valid(subject)
        if token is None:
            return 404, {}, _error(404, "Not Found", "Could not find token.")
        return 200, {"X-Subject-Token": token.id}, {"token": self._token_body(token)}

    def valid(self, token_id: str | None) -> Token | None:
        with self._lock:
            token = self.tokens.get(token_id or "")
        if token is None or token.expires_at <= self.clock():
            return None
        return token

    def allowed(
        self, token: Token, service_type: str | None, method: str, request_path: str
    ) -> str | None:
        """None if the token may make this call; else why not (keystonemiddleware's check)."""
        rules = token.credential.access_rules
        if rules is None:
            return None
        if not service_type:
            return "the service has no [keystone_authtoken] service_type: access rules refused"
        for rule in rules:
            if (
                rule.method == method
                and rule.service == service_type
                and path_matches(request_path, rule.path)
            ):
                return None
        return f"no access rule allows {method} {request_path} on {service_type}"

    def catalog(self) -> list[dict[str, Any]]:
        services: dict[tuple[str, str], list[Endpoint]] = {}
        for endpoint in self.endpoints:
            services.setdefault((endpoint.service_type, endpoint.name), []).append(endpoint)
        return [
            {
                "type": kind,
                "name": name,
                "id": f"{name}-id",
                "endpoints": [
                    {
                        "id": f"{name}-{n}",
                        "interface": e.interface,
                        "region": e.region,
                        "region_id": e.region,
                        "url": e.url,
                    }
                    for n, e in enumerate(endpoints)
                ],
            }
            for (kind, name), endpoints in services.items()
        ]

    def _token_body(self, token: Token) -> dict[str, Any]:
        credential = token.credential
        body: dict[str, Any] = {
            "methods": ["application_credential"],
            "expires_at": _iso(token.expires_at),
            "issued_at": _iso(token.issued_at),
            "project": {
                "id": self.project_id,
                "name": self.project_name,
                "domain": {"id": "default", "name": "Default"},
            },
            "user": {"id": "lab-user", "name": "lab", "domain": {"id": "default"}},
            "roles": [{"id": "member-id", "name": "member"}],
            "application_credential": {
                "id": credential.id,
                "name": credential.name,
                "restricted": True,
            },
            "catalog": self.catalog(),
        }
        if credential.access_rules is not None:
            body["application_credential"]["access_rules"] = [
                {"service": r.service, "method": r.method, "path": r.path}
                for r in credential.access_rules
            ]
        return body


def _error(code: int, title: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "title": title, "message": message}}


UNAUTHORIZED = _error(401, "Unauthorized", "The request you have made requires authentication.")
