"""bs, decisions, locate and scenario commands in-process (libvirt's test driver as the fleet)."""

import json

import libvirt
import pytest

from orchestrator.errors import ExitStatus

pytestmark = pytest.mark.usefixtures("isolated_state")  # tests/unit/conftest.py


@pytest.fixture
def inventory(tmp_path):
    keeper = libvirt.open("test:///default")
    path = tmp_path / "hosts.ini"
    path.write_text("[fog_nodes]\nfogt libvirt_uri=test:///default domain_type=qemu "
                    "image_dir=/srv/img memory_mib=10240\n")
    yield str(path)
    keeper.close()


def test_bs_add_list_and_bad_input(cli, inventory):
    assert cli("bs", "add", "b1", "--node", "fogt", "--inventory", inventory).status == 0
    result = cli("bs", "list", "--json")
    assert result.status == ExitStatus.SUCCESS
    assert [(r["bs_id"], r["node"]) for r in json.loads(result.out)] == [("b1", "fogt")]
    bad = cli("bs", "add", "b2", "--node", "nope", "--inventory", inventory)
    assert bad.status == ExitStatus.BAD_INPUT and "unknown fog node" in bad.err
    bad = cli("bs", "add", "b/2", "--node", "fogt", "--inventory", inventory)
    assert bad.status == ExitStatus.BAD_INPUT and "invalid base station" in bad.err


def test_decisions_empty_and_locate_errors(cli, inventory):
    result = cli("decisions", "--json")
    assert result.status == ExitStatus.SUCCESS and json.loads(result.out) == []
    assert cli("decisions").status == ExitStatus.SUCCESS
    cli("bs", "add", "b1", "--node", "fogt", "--inventory", inventory)
    bad = cli("locate", "dev1", "--bs", "b1", "--inventory", inventory)
    assert bad.status == ExitStatus.BAD_INPUT and "unknown device" in bad.err
    bad = cli("locate", "--inventory", inventory)
    assert bad.status == ExitStatus.BAD_INPUT and "give DEVICE" in bad.err
    bad = cli("locate", "--serve", "0.0.0.0:7079", "--inventory", inventory)
    assert bad.status == ExitStatus.BAD_INPUT and "refusing to listen" in bad.err


def test_scenario_rejects_bad_trace(cli, tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("user,minute,bs_id\n0,0,0\n0,5,1\n")
    bad = cli("scenario", "run", str(trace))
    assert bad.status == ExitStatus.BAD_INPUT and "expected 1" in bad.err
