"""The lab's Keystone auth for a real Swift proxy: a paste filter, standard library only
(inside the proxy it takes Swift's logger and Swift's 403 response when it finds them).

It stands where Swift's documented Keystone pipeline has `authtoken keystoneauth`
(https://docs.openstack.org/swift/latest/overview_auth.html#keystone-auth), because the
proxy runs on Debian's /usr/bin/python3, which has neither keystonemiddleware nor the
lab's venv. It loads as `use = call:lab_authtoken:filter_factory` (PasteDeploy's `call:`
protocol, https://docs.pylonsproject.org/projects/pastedeploy/en/latest/#call) with this
directory on the proxy's PYTHONPATH, and does for each request what keystonemiddleware's
auth_token (https://docs.openstack.org/keystonemiddleware/latest/middlewarearchitecture.html)
and Swift's keystoneauth do:

- the token: `X-Auth-Token` (else `X-Storage-Token`); none, or one Keystone does not
  validate (`GET {keystone_url}/v3/auth/tokens`, X-Subject-Token: it, X-Auth-Token: it too,
  as Keystone's policy lets a token's owner validate it), or an expired one: 401 with
  `WWW-Authenticate: Keystone uri=...`; Keystone unreachable: 503. Nothing is cached.
- access rules of an application credential (keystonemiddleware's
  `validate_allowed_request`): with the filter's `service_type` unset, or a catalog in the
  token without that service type, every token with rules is refused; else one rule must
  have the request's method, that service type and a path matching the request's path
  (SCRIPT_NAME + PATH_INFO, percent-quoted as webob's `request.path`, no query). Refused:
  401, the reason in the body. `X-Service-Token` (which lets keystonemiddleware skip the
  rules) is not supported: the rules always apply.
- the account: a request under /v1/AUTH_<project> is refused (403) unless the token's
  project is <project> (keystoneauth's reseller prefix `AUTH_`); a token of the account's
  project owns it (`swift_owner`, as keystoneauth's operator roles make it). Swift calls
  `swift.authorize` again for the subrequests its middlewares make (an SLO's segments,
  a copy's source), and for those the same account rule holds.

Rule paths (`path_matches`, keystonemiddleware's `_path_matches` semantics): `*` and
`{name}` are one or more characters other than `/`, `**` any characters (none, or `/` too),
anything else itself, and the whole path must match. One difference: keystonemiddleware
pastes the other characters into a regular expression unescaped, so there `.` matches any
character and `+ ? ( ) [ ] ^ $ | \\` are regex syntax; here every character matches only
itself. Rules with such characters other than `.` behave differently: write none.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

PATH_SAFE = "/~!$&'()*+,;=:@"
"""What webob's `Request.path` (keystonemiddleware's request path) leaves unquoted."""
API_VERSIONS = ("v1", "v1.0")
RESELLER_PREFIX = "AUTH_"
IDENTITY_HEADERS = (
    "HTTP_X_IDENTITY_STATUS",
    "HTTP_X_SERVICE_IDENTITY_STATUS",
    "HTTP_X_DOMAIN_ID",
    "HTTP_X_DOMAIN_NAME",
    "HTTP_X_PROJECT_ID",
    "HTTP_X_PROJECT_NAME",
    "HTTP_X_PROJECT_DOMAIN_ID",
    "HTTP_X_PROJECT_DOMAIN_NAME",
    "HTTP_X_USER_ID",
    "HTTP_X_USER_NAME",
    "HTTP_X_USER_DOMAIN_ID",
    "HTTP_X_USER_DOMAIN_NAME",
    "HTTP_X_ROLES",
    "HTTP_X_TENANT_ID",
    "HTTP_X_TENANT_NAME",
    "HTTP_X_TENANT",
    "HTTP_X_USER",
    "HTTP_X_ROLE",
    "HTTP_X_IS_ADMIN_PROJECT",
)
"""What auth_token removes from every request before it sets its own (no spoofing)."""

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# --- access rule paths ----------------------------------------------------------------------

_SEGMENT = 0  # `*` or `{name}`: one or more characters, none of them `/`
_ANYTHING = 1  # `**`: any characters


def _pieces(rule_path: str) -> Iterator[str | int]:
    """The rule's path as literal runs and wildcards. As keystonemiddleware reads it: `{`
    up to the next `}` is one wildcard; a `{` without a `}` after it, and a `}` outside
    one, count for nothing; stars pair up from the left (`***` is `**` then `*`)."""
    literal = ""
    i = 0
    while i < len(rule_path):
        char = rule_path[i]
        wildcard: int | None = None
        if char == "{":
            close = rule_path.find("}", i + 1)
            if close >= 0:
                wildcard, i = _SEGMENT, close + 1
            else:
                i += 1
        elif char == "}":
            i += 1
        elif char == "*":
            double = rule_path.startswith("**", i)
            wildcard, i = (_ANYTHING, i + 2) if double else (_SEGMENT, i + 1)
        else:
            literal += char
            i += 1
            continue
        if literal:
            yield literal
            literal = ""
        if wildcard is not None:
            yield wildcard
    if literal:
        yield literal


def path_matches(request_path: str, rule_path: str) -> bool:
    """Whether `rule_path` (an access rule's path) matches all of `request_path`: every
    place in the request path the rule's pieces so far can end at, piece by piece."""
    ends = {0}
    size = len(request_path)
    for piece in _pieces(rule_path):
        after: set[int] = set()
        for start in ends:
            if piece == _ANYTHING:
                after.update(range(start, size + 1))
            elif piece == _SEGMENT:
                end = start
                while end < size and request_path[end] != "/":
                    end += 1
                    after.add(end)
            elif isinstance(piece, str) and request_path.startswith(piece, start):
                after.add(start + len(piece))
        if not after:
            return False
        ends = after
    return size in ends


def refusal(
    token: dict[str, Any], service_type: str | None, method: str, request_path: str
) -> str | None:
    """None if the token's access rules (if any) allow the call, else why not."""
    credential = token.get("application_credential") or {}
    rules = credential.get("access_rules")
    if rules is None:
        return None
    if not service_type:
        return "the proxy has no service_type: a token with access rules is refused"
    if not any(s.get("type") == service_type for s in token.get("catalog") or []):
        return f"the token's catalog has no {service_type} service"
    for rule in rules:
        if (
            rule.get("method") == method
            and rule.get("service") == service_type
            and path_matches(request_path, str(rule.get("path", "")))
        ):
            return None
    return f"no access rule allows {method} {request_path} on {service_type}"


def account_of(path_info: str) -> str | None:
    """The account a Swift API path names (/v1/<account>[/...]), else None."""
    parts = path_info.split("/")
    if len(parts) >= 3 and parts[0] == "" and parts[1] in API_VERSIONS and parts[2]:
        return parts[2]
    return None


# --- the filter ------------------------------------------------------------------------------


class KeystoneUnavailable(Exception):
    pass


class LabAuthToken:
    def __init__(self, app: WsgiApp, conf: dict[str, Any]) -> None:
        self.app = app
        url = str(conf["keystone_url"]).rstrip("/")
        self.keystone_url = url[: -len("/v3")] if url.endswith("/v3") else url
        self.service_type = str(conf.get("service_type") or "") or None
        self.timeout = float(conf.get("http_timeout", 10))
        # never through an http_proxy of the environment: Keystone is the lab's, nearby
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.log = _logger(conf)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        for name in IDENTITY_HEADERS:
            environ.pop(name, None)
        method = str(environ.get("REQUEST_METHOD", "GET"))
        raw = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
        # WSGI strings carry the request's bytes as latin-1; webob's `path` quotes them
        request_path = quote(raw.encode("latin-1"), safe=PATH_SAFE)
        token_id = environ.get("HTTP_X_AUTH_TOKEN") or environ.get("HTTP_X_STORAGE_TOKEN")
        if not token_id:
            return self._deny(environ, start_response, 401, "no token")
        try:
            token = self.validate(str(token_id))
        except KeystoneUnavailable as error:
            return self._deny(environ, start_response, 503, f"Keystone: {error}")
        if token is None:
            return self._deny(environ, start_response, 401, "the token is not valid")
        why = refusal(token, self.service_type, method, request_path)
        if why is not None:
            return self._deny(environ, start_response, 401, why)
        project = str((token.get("project") or {}).get("id", ""))
        account = account_of(str(environ.get("PATH_INFO", "")))
        if account is not None and account != RESELLER_PREFIX + project:
            why = f"the token's project {project} does not own account {account}"
            return self._deny(environ, start_response, 403, why)
        user = token.get("user") or {}
        environ.update(
            {
                "HTTP_X_IDENTITY_STATUS": "Confirmed",
                "HTTP_X_PROJECT_ID": project,
                "HTTP_X_PROJECT_NAME": str((token.get("project") or {}).get("name", "")),
                "HTTP_X_USER_ID": str(user.get("id", "")),
                "HTTP_X_USER_NAME": str(user.get("name", "")),
                "HTTP_X_ROLES": ",".join(str(r.get("name")) for r in token.get("roles") or []),
                "keystone.token_info": {"token": token},
                "REMOTE_USER": f"{project}:{user.get('id', '')}",
                "swift_owner": account is not None,
                "swift.authorize": _authorizer(project),
                "swift.authorize_override": True,
            }
        )
        return self.app(environ, start_response)

    def validate(self, token_id: str) -> dict[str, Any] | None:
        """The token's body as Keystone answers it, None if it is not (or no longer) valid."""
        request = urllib.request.Request(
            f"{self.keystone_url}/v3/auth/tokens",
            headers={
                "X-Auth-Token": token_id,
                "X-Subject-Token": token_id,
                "Accept": "application/json",
            },
            method="GET",
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code in (401, 403, 404):
                return None
            raise KeystoneUnavailable(f"token validation answered {error.code}") from error
        except (OSError, ValueError) as error:
            raise KeystoneUnavailable(str(error)) from error
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, dict):
            raise KeystoneUnavailable("token validation answered no token")
        try:  # Keystone checked it; a token expiring since is refused all the same
            expires = datetime.fromisoformat(str(token["expires_at"])).timestamp()
        except (KeyError, ValueError) as error:
            raise KeystoneUnavailable(f"a token without a valid expires_at: {error}") from error
        return token if expires > time.time() else None

    def _deny(
        self, environ: dict[str, Any], start_response: StartResponse, status: int, why: str
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        self.log.warning("%s %s refused (%d): %s", environ.get("REQUEST_METHOD"), path, status, why)
        return self._answer(environ, start_response, status, why)

    def _answer(
        self, environ: dict[str, Any], start_response: StartResponse, status: int, why: str
    ) -> Iterable[bytes]:
        titles = {401: "Unauthorized", 403: "Forbidden", 503: "Service Unavailable"}
        title = titles.get(status, "Error")
        payload = json.dumps({"error": {"code": status, "title": title, "message": why}})
        body = payload.encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        if status == 401:
            headers.append(("WWW-Authenticate", f'Keystone uri="{self.keystone_url}"'))
        start_response(f"{status} {title}", headers)
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def _logger(conf: dict[str, Any]) -> Any:
    """Inside Swift, a logger of Swift's (its log lines, with the transaction id); else
    the standard library's."""
    try:
        from swift.common.utils import get_logger
    except ImportError:
        return logging.getLogger("lab_authtoken")
    return get_logger(conf, log_route="lab_authtoken")


def _authorizer(project: str) -> Callable[[Any], Any]:
    """Swift's `swift.authorize` hook: the proxy calls it with each (sub)request's swob
    Request; None allows it, a response refuses it."""

    def authorize(request: Any) -> Any:
        account = account_of(str(request.environ.get("PATH_INFO", "")))
        if account is None or account == RESELLER_PREFIX + project:
            return None
        from swift.common.swob import HTTPForbidden  # only ever called inside Swift

        return HTTPForbidden(request=request)

    return authorize


def filter_factory(global_conf: dict[str, Any], **local_conf: Any) -> Callable[[WsgiApp], Any]:
    """PasteDeploy's filter factory: options `keystone_url` (the identity API's root, with
    or without /v3), `service_type` (access rules' service; unset: rule tokens refused),
    `http_timeout` (seconds, default 10)."""
    conf = {**global_conf, **local_conf}

    def make(app: WsgiApp) -> LabAuthToken:
        return LabAuthToken(app, conf)

    return make
