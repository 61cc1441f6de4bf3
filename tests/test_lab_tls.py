"""The lab on an https stack (tests/stacks/Pulumi.https.yaml): a cluster CA per lab, each
node's certificate issued by infra/node/issue-cert.sh at its boot, etcd with client-cert-auth,
the lab's watcher, writer and `status` on their own client certificate.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agent.etcd import EtcdClient, EtcdError
from agent.etcd_server import read_config
from agent.settings import AgentSettings
from infra.settings import PROJECT_DIR, load_stack_file
from lab.cluster import Lab
from lab.scenarios import run_scenario
from lab.status import status
from lab.timings import FAST_FACTOR, LabTimings
from tests.tools import need

pytestmark = [pytest.mark.etcd, pytest.mark.slow]

HTTPS_STACK = PROJECT_DIR / "tests" / "stacks" / "Pulumi.https.yaml"


@pytest.fixture(scope="module")
def stack():
    need("openssl")
    loaded = load_stack_file(HTTPS_STACK)
    assert (loaded.etcdclientscheme, loaded.etcdpeerscheme) == ("https", "https")
    return loaded


def test_an_https_lab_forms_with_verified_certificates(stack, etcd_bin, tmp_path):
    timings = LabTimings.scaled(stack, FAST_FACTOR)
    lab = Lab(stack, timings, tmp_path / "lab", stack_name="https", etcd_binary=etcd_bin)
    try:
        lab.start()
        assert lab.wait_for(lab.settled, 60, "a healthy cluster"), lab.latest()
        node = lab.nova.live()[0]
        # the node's settings point at its own files, issued for its own address
        settings = AgentSettings.load(node.dir / "agent.json")
        assert settings.etcd.tls is not None
        assert Path(settings.etcd.tls.cert_file) == node.dir / "pki" / "node.crt"
        assert not (node.dir / "pki" / "ca.key").exists()  # dropped after issuing
        config = read_config(node.state_dir / "etcd.yaml")
        for side in ("client-transport-security", "peer-transport-security"):
            assert config[side]["client-cert-auth"] is True
            assert config[side]["auto-tls"] is False
        urls = lab.endpoints()
        assert len(urls) == 3 and all(url.startswith("https://") for url in urls)
        # without the CA the members are not trusted
        with pytest.raises(EtcdError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
            EtcdClient(urls, timeout=1.0).members(check_health=False)
        # `python -m lab status` (another process) finds the lab's client certificate
        state = json.loads((lab.root / "lab.json").read_text())
        assert state["client_tls"]["cert_file"].startswith(str(lab.root / "pki"))
        shown = status(lab.root)
        assert shown["etcd_error"] is None
        assert sorted(r["member"] for r in shown["nodes"]) == ["voter"] * 3
        assert all(r["healthy"] for r in shown["nodes"])
    finally:
        lab.stop()


def test_the_node_loss_scenario_holds_on_https(stack, etcd_bin, tmp_path):
    timings = LabTimings.scaled(stack, FAST_FACTOR)
    outcome = run_scenario(
        "node-loss", stack, timings, tmp_path / "lab", stack_name="https", etcd_binary=etcd_bin
    )
    failed = [f"{i['name']}: {i['detail']}" for i in outcome.report["invariants"] if not i["ok"]]
    assert not failed, "\n".join(failed)
    kinds = [e["kind"] for e in outcome.report["events"]]
    assert "replace" in kinds and "joined" in kinds
    assert outcome.report["writes"]["acked"] > 0 and outcome.report["writes"]["lost"] == 0
    # the members spoke https to each other (peer URLs in their logs)
    logs = "".join(p.read_text() for p in (tmp_path / "lab" / "logs").glob("*.etcd.log"))
    schemes = set(re.findall(rf"(https?)://[0-9.]+:{stack.etcdpeerport}\b", logs))
    assert schemes == {"https"}
