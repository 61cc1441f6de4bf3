"""An agent follows the stack's settings document (agent/loop.py `follow_stack`,
agent/settings.py `adopt`): what a running agent takes, keeps for etcd's next start, or
refuses, and what it does when the document is not whole or the cloud does not answer.
The document is the program's own (infra.userdata.settings_document); the lab's `update`
scenario shows the same on live agents, checked from outside."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.cloud import CloudError
from agent.loop import Agent
from agent.settings import (
    AT_ETCD_START,
    FIXED,
    NODE_LOCAL,
    AgentSettings,
    OpenStackCloud,
    adopt,
    document_sha256,
    settings_changes,
)
from infra.bundle import Bundle
from infra.render import find_stack_file, stack_config
from infra.settings import parse_settings, strip_namespace
from infra.userdata import settings_document

BUNDLE = Bundle(b"an agent")
CLOUD = OpenStackCloud(
    auth_url="http://127.0.0.1:9/identity/v3",
    application_credential_id="c",
    application_credential_secret="s",
    stack_id="stack/1",
)


def stack(**changes: object):
    raw = strip_namespace(stack_config(find_stack_file("dev")))
    return parse_settings({**raw, **changes})


def document(**changes: object) -> dict[str, Any]:
    return settings_document(stack(**changes), cluster_name="c", bundle=BUNDLE)


def node_settings(tmp_path: Path, **changes: object) -> AgentSettings:
    """What a node's fetcher wrote at boot: the document's member settings, the node's cloud
    and state dir."""
    member = document(**changes)["roles"]["member"]
    return AgentSettings.model_validate(
        {**member, "cloud": CLOUD.model_dump(context={"reveal_secrets": True})}
    ).with_changes(state_dir=str(tmp_path / "state"))


class Cloud:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked = 0

    def stack_document(self) -> dict[str, Any] | None:
        self.asked += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def agent(tmp_path: Path, answer: Any, **changes: object) -> Agent:
    settings = node_settings(tmp_path, **changes)
    path = tmp_path / "agent.json"
    settings.write(path)
    return Agent(settings, cloud=Cloud(answer), service=None, settings_path=path)  # type: ignore[arg-type]


def test_a_new_threshold_and_period_apply_at_once_and_the_file_follows(tmp_path):
    new = document(threshold=50, lockattemptperiod=20, failtolerance=30)
    a = agent(tmp_path, new)
    said = a.follow_stack()
    assert said is not None and said.startswith(f"settings {new['sha256'][:12]} from the stack")
    assert "metric.threshold 90.0 -> 50.0 (now)" in said
    assert a.settings.metric.threshold == 50
    assert a.settings.scaling.lockattemptperiod == 20
    assert a.settings.scaling.failtolerance == 30
    assert a.state.settings_sha256 == new["sha256"]
    written = json.loads((tmp_path / "agent.json").read_text())
    assert written["metric"]["threshold"] == 50
    assert written["cloud"]["application_credential_secret"] == "s"  # the node's, kept
    assert stat.S_IMODE((tmp_path / "agent.json").stat().st_mode) == 0o600
    # the same document again: nothing to do
    assert a.follow_stack() is None


def test_the_node_keeps_its_own_paths_and_credential(tmp_path):
    a = agent(tmp_path, document(threshold=50))
    a.follow_stack()
    assert a.settings.state_dir == str(tmp_path / "state")  # not the document's
    assert a.settings.cloud == CLOUD


def test_ports_schemes_and_the_cluster_name_are_refused_the_rest_taken(tmp_path):
    new = document(etcdclientport=2379, threshold=70)
    a = agent(tmp_path, new)
    said = a.follow_stack() or ""
    assert "etcd.client_port 12379 -> 2379 refused" in said
    assert a.settings.etcd.client_port == 12379
    assert a.settings.metric.threshold == 70


def test_etcd_timings_are_kept_for_etcd_s_next_start(tmp_path):
    a = agent(tmp_path, document(etcd_election_ms=3000))
    said = a.follow_stack() or ""
    assert "etcd.election_ms 1000 -> 3000 (at etcd's next start)" in said
    assert a.settings.etcd.election_ms == 3000  # in the file: etcd reads it when it starts


@pytest.mark.parametrize(
    "answer, why",
    [
        (None, "the stack holds no document"),
        (CloudError("heat show settings: HTTP 503"), "the cloud does not answer"),
    ],
)
def test_no_document_or_no_answer_changes_nothing(tmp_path, answer, why):
    a = agent(tmp_path, answer)
    before = (tmp_path / "agent.json").read_text()
    assert a.follow_stack() is None, why
    assert (tmp_path / "agent.json").read_text() == before
    assert a.state.settings_sha256 is None


def test_a_document_that_is_not_whole_is_ignored(tmp_path):
    cut = document(threshold=50)
    cut["roles"]["member"]["metric"]["threshold"] = 10.0  # not what its sha256 names
    a = agent(tmp_path, cut)
    assert a.follow_stack() is None
    assert a.settings.metric.threshold == 90
    assert document_sha256(cut) != cut["sha256"]


def test_settings_no_agent_could_run_are_refused_whole(tmp_path):
    bad = document()
    bad["roles"]["member"]["scaling"]["capacity"] = 9  # above max_cluster
    bad["sha256"] = document_sha256(bad)
    a = agent(tmp_path, bad)
    assert a.follow_stack() is None
    assert a.settings.scaling.capacity == 3
    assert a.state.settings_sha256 == bad["sha256"]  # said once, not every minute


def test_the_change_kinds_cover_every_key_of_the_settings():
    """Every key a stack can change is classified: live, at etcd's start, refused."""
    base = document()["roles"]["member"]
    kinds = {key: kind for key, _, _, kind in settings_changes({}, base)}
    assert kinds["metric.threshold"] == "live" and kinds["scaling.capacity"] == "live"
    assert kinds["etcd.client_port"] == "refused" and kinds["cluster_name"] == "refused"
    assert kinds["etcd.quota_backend_bytes"] == "at etcd start"
    assert kinds["state_dir"] == "node-local"
    # and no name in the classes is stale or misspelt: each is a field of the settings
    assert (FIXED | AT_ETCD_START | NODE_LOCAL) - fields(AgentSettings) == set()
    _, notes = adopt(AgentSettings.model_validate({**base, "cloud": CLOUD.model_dump()}), base)
    assert notes == []


def fields(model: type, prefix: str = "") -> set[str]:
    """Every dotted field name of a pydantic model, nested models included."""
    found = set()
    for name, info in model.model_fields.items():
        found.add(prefix + name)
        for kind in getattr(info.annotation, "__args__", (info.annotation,)):
            if isinstance(kind, type) and hasattr(kind, "model_fields"):
                found |= fields(kind, f"{prefix}{name}.")
    return found


def test_the_agent_reads_the_document_every_few_cycles(tmp_path):
    from agent.loop import SETTINGS_POLL_CYCLES

    a = agent(tmp_path, CloudError("down"))
    a.observe = lambda **_: (_ for _ in ()).throw(RuntimeError("stop here"))  # type: ignore[method-assign]
    for _ in range(2 * SETTINGS_POLL_CYCLES):
        with pytest.raises(RuntimeError):
            a.cycle()
    assert a.cloud.asked == 2  # type: ignore[attr-defined]
