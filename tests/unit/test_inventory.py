import pytest

from orchestrator.errors import UserError
from orchestrator.fog.inventory import parse_inventory

GOOD = """
# a real lab
[fog_nodes]
fog-a ansible_host=192.0.2.11 libvirt_uri=qemu+tls://fog-a.lab.example/system memory_mib=65536
fog-b ansible_host=192.0.2.12 vm_bridge=br0 energy=solar

[fog_nodes:vars]
image_dir=/srv/edgeiot/images

[all:vars]
vm_network=10.50.0.0/24

[monitoring]
mon ansible_host=192.0.2.20
"""


def test_parses_nodes_with_defaults_and_group_vars():
    nodes, all_vars = parse_inventory(GOOD)
    assert [n.name for n in nodes] == ["fog-a", "fog-b"]
    a, b = nodes
    assert a.uri == "qemu+tls://fog-a.lab.example/system"
    assert a.host == "fog-a.lab.example"
    assert a.facts["memory_mib"] == 65536
    assert b.uri == "qemu+tls://192.0.2.12/system"  # TLS by default on real hosts
    assert b.vm_bridge == "br0" and b.facts["energy"] == "solar"
    assert a.image_dir == b.image_dir == "/srv/edgeiot/images"
    assert all_vars["vm_network"] == "10.50.0.0/24"


@pytest.mark.parametrize("text, message", [
    ("[fog_nodes]\nfog1 libvirt_uri=http://x/", "inventory:2"),
    ("[fog_nodes]\nFog1 ansible_host=1.2.3.4", "invalid node name"),
    ("[fog_nodes]\nfog1 colour=blue", "unknown variable"),
    ("[fog_nodes\nfog1", "malformed group header"),
    ("fog1 ansible_host=x", "outside any group"),
    ("[monitoring]\nmon", "no hosts in group"),
    ("[fog_nodes]\nfog1 memory_mib=lots", "memory_mib must be an integer"),
])
def test_bad_inventories_name_the_problem(text, message):
    with pytest.raises(UserError, match=message):
        parse_inventory(text)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_is_parsed_or_refused_with_a_user_error(text):
    """Fuzz: the inventory parser never fails with anything but a one-line UserError."""
    try:
        nodes, _ = parse_inventory(text)
    except UserError as exc:
        assert "\n" not in str(exc)
    else:
        assert nodes and all(n.name for n in nodes)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True), min_size=1,
                max_size=5, unique=True))
def test_well_formed_inventories_round_trip_their_host_names(names):
    text = "[fog_nodes]\n" + "\n".join(f"{n} ansible_host=192.0.2.{i + 1}"
                                        for i, n in enumerate(names))
    nodes, _ = parse_inventory(text)
    assert [n.name for n in nodes] == names
    assert all(n.uri.startswith("qemu+tls://192.0.2.") for n in nodes)


# --- values that reach a kernel command line, a domain or a connection (issue 13) -----------

@pytest.mark.parametrize("line, key", [
    ('[all:vars]\ngateway=10.50.0.1 init=/bin/sh', "gateway"),
    ('[fog_nodes]\nfog1 gateway="10.50.0.1 init=/bin/sh"', "gateway"),
    ("[fog_nodes]\nfog1 gateway=10.50.0.256", "gateway"),
    ("[fog_nodes]\nfog1 gateway=fog-gw", "gateway"),
    ("[all:vars]\nvm_network=10.50.0.0/24 quiet", "vm_network"),
    ("[fog_nodes]\nfog1 ansible_host=1.2.3.4&reboot", "ansible_host"),
    ('[fog_nodes]\nfog1 ansible_host="-oProxyCommand=x"', "ansible_host"),
    ("[fog_nodes]\nfog1 vm_bridge=br0,script=/tmp/x", "vm_bridge"),
    ("[fog_nodes]\nfog1 image_dir=relative/dir", "image_dir"),
    ('[fog_nodes]\nfog1 image_dir="/srv/a b"', "image_dir"),
    ("[fog_nodes]\nfog1 domain_type=xen", "domain_type"),
    ("[fog_nodes]\nfog1 ansible_port=0", "ansible_port"),
    ('[fog_nodes]\nfog1 libvirt_uri="qemu+tcp://h/system?socket=/x y"', "libvirt_uri"),
    ("[fog_nodes:vars]\nenergy=so lar", "energy"),
])
def test_hostile_values_are_refused_at_parse_time_in_one_line(line, key):
    text = line if "[fog_nodes]" in line else "[fog_nodes]\nfog1\n" + line
    with pytest.raises(UserError) as err:
        parse_inventory(text)
    message = str(err.value)
    assert f"invalid {key}" in message and "\n" not in message and message.startswith(
        "inventory:")


def test_good_values_of_every_checked_kind_are_kept():
    nodes, all_vars = parse_inventory(
        "[all:vars]\ngateway=10.50.0.1\nvm_network=10.50.0.0/24\n[fog_nodes]\n"
        "fog1 ansible_host=fog1.lab.example ansible_port=22 ansible_user=edge "
        "vm_bridge=br-vm.10 image_dir=/srv/edgeiot/images domain_type=kvm "
        "libvirt_uri=qemu+tcp://10.50.0.11:16509/system gateway=10.50.0.1\n")
    assert all_vars["gateway"] == "10.50.0.1" and nodes[0].facts["gateway"] == "10.50.0.1"
    assert nodes[0].uri == "qemu+tcp://10.50.0.11:16509/system"
