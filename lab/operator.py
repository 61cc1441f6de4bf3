"""The operator's side of the lab's cloud, from another process: what `openstack server
reboot` would do, through the same APIs (Keystone, then Nova) with the lab's own
unrestricted credential, which `<root>/lab.json` holds.

    python -m lab reboot NODE [NODE ...] | --majority | --all
    python -m lab update --set KEY=VALUE ...    (Heat's "Update stack")
"""

from __future__ import annotations

from typing import Any

from agent.httpclient import Http, HttpError


class CloudCallError(RuntimeError):
    pass


class Operator:
    def __init__(self, auth_url: str, credential_id: str, secret: str, timeout: float = 10.0):
        self.auth_url = auth_url.rstrip("/")
        self.credential = {"id": credential_id, "secret": secret}
        self.timeout = timeout
        self.http = Http()
        self._token: str | None = None
        self._catalog: list[dict[str, Any]] = []

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Operator:
        credential = state.get("operator_credential") or {}
        if not state.get("auth_url") or not credential.get("id"):
            raise CloudCallError("the lab's state names no cloud credential (an older lab?)")
        return cls(state["auth_url"], credential["id"], credential["secret"])

    def _authenticate(self) -> None:
        body = {
            "auth": {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": self.credential,
                }
            }
        }
        try:
            answer = self.http.request(
                "POST", f"{self.auth_url}/auth/tokens", json=body, timeout=self.timeout
            )
        except HttpError as error:
            raise CloudCallError(f"keystone: {error}") from None
        if answer.status_code != 201:
            raise CloudCallError(f"keystone: HTTP {answer.status_code} {answer.text[:200]}")
        self._token = answer.headers.get("X-Subject-Token")
        self._catalog = answer.json()["token"]["catalog"]

    def endpoint(self, service_type: str) -> str:
        if self._token is None:
            self._authenticate()
        for service in self._catalog:
            if service.get("type") == service_type:
                for endpoint in service.get("endpoints", []):
                    if endpoint.get("interface") == "public":
                        return str(endpoint["url"]).rstrip("/")
        raise CloudCallError(f"no {service_type} endpoint in the catalog")

    def call(self, service_type: str, method: str, path: str, body: Any = None) -> Any:
        url = self.endpoint(service_type) + path
        try:
            answer = self.http.request(
                method,
                url,
                json=body,
                headers={"X-Auth-Token": self._token or ""},
                timeout=self.timeout,
            )
        except HttpError as error:
            raise CloudCallError(f"{method} {path}: {error}") from None
        if answer.status_code >= 400:
            raise CloudCallError(f"{method} {path}: HTTP {answer.status_code} {answer.text[:200]}")
        return answer.json() if answer.text.strip() else None

    def update_stack(
        self,
        stack: str,
        template: dict[str, Any],
        parameters: dict[str, str] | None = None,
        files: dict[str, str] | None = None,
    ) -> None:
        """Heat "Update stack (PATCH)": PATCH /stacks/{name}/{id} {"template": ...,
        "parameters": ..., "files": ...} (parameters left out are kept; `files` the
        provider templates the template names, as the provider sends them)."""
        name, _, stack_id = stack.partition("/")
        body: dict[str, Any] = {"template": template}
        if parameters:
            body["parameters"] = parameters
        if files:
            body["files"] = files
        self.call("orchestration", "PATCH", f"/stacks/{name}/{stack_id}", body)

    def reboot(self, server_id: str, kind: str = "HARD") -> None:
        """Nova "Reboot Server": POST /servers/{id}/action {"reboot": {"type": "HARD"}}."""
        self.call("compute", "POST", f"/servers/{server_id}/action", {"reboot": {"type": kind}})
