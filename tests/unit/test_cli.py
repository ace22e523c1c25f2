"""The CLI in-process: exit codes, one-line errors, and the VM lifecycle on libvirt's test
driver through an inventory (fast, no lab)."""

import libvirt
import pytest

from orchestrator.errors import ExitStatus

pytestmark = pytest.mark.usefixtures("isolated_state")  # tests/unit/conftest.py


@pytest.fixture
def test_inventory(tmp_path):
    # NOTE: test:///default keeps its state only while some connection holds it open.
    keeper = libvirt.open("test:///default")
    path = tmp_path / "hosts.ini"
    path.write_text("[fog_nodes]\n"
                    "fogt libvirt_uri=test:///default domain_type=qemu image_dir=/srv/img "
                    "memory_mib=10240\n")  # the driver's own "test" domain holds 8 GiB
    yield str(path)
    keeper.close()


def one_line_error(result, status=ExitStatus.BAD_INPUT):
    assert result.status == status, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orchestrator: error: ")
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["vm", "list"], "lab 'eunit' is not up"),
    (["migrate", "vm1", "--to", "fog2"], "lab 'eunit' is not up"),
    (["migrate", "vm1", "--to", "fog2", "--bandwidth", "0"], "--bandwidth must be > 0"),
    (["migrate", "vm1", "--to", "fog2", "--timeout", "-1"], "--timeout must be > 0"),
    (["migrate", "Bad_Name", "--to", "fog2"], "invalid VM name"),
    (["vm", "create", "UPPER", "--node", "fog1"], "invalid VM name"),
    (["lab", "up", "--nodes", "0"], "--nodes must be between 1 and 9"),
    (["lab", "up", "--prefix", "X"], "invalid lab prefix"),
    (["lab", "up", "--subnet", "8.8.0.0/16"], "must be a private /22 or larger"),
    (["vm", "list", "--inventory", "/nonexistent.ini"], "cannot read inventory"),
    (["migrate", "vm1"], "Missing option '--to'"),
    (["no-such-command"], "No such command"),
])
def test_bad_input_exits_2_with_one_line(cli, args, message):
    assert message in one_line_error(cli(*args))


def test_help_and_version(cli):
    assert cli("--help").status == ExitStatus.SUCCESS
    result = cli("--version")
    assert result.status == ExitStatus.SUCCESS and "orchestrator" in result.out


def test_lab_status_when_down(cli):
    result = cli("lab", "status", "--json")
    assert result.status == ExitStatus.SUCCESS
    assert result.json()["status"] == "down"


def test_vm_lifecycle_on_the_test_driver(cli, test_inventory):
    created = cli("vm", "create", "unit-vm", "--node", "fogt", "--memory", "128",
                  "--inventory", test_inventory, "--json")
    assert created.status == ExitStatus.SUCCESS, created.err
    assert created.json()["node"] == "fogt"
    try:
        rows = {r["name"]: r for r in cli("vm", "list", "--inventory", test_inventory,
                                          "--json").json()}
        assert rows["unit-vm"]["state"] == "running" and rows["unit-vm"]["node"] == "fogt"
        assert rows["unit-vm"]["memory_mib"] == 128 and rows["unit-vm"]["role"] == "proxy"
        again = cli("vm", "create", "unit-vm", "--node", "fogt", "--inventory", test_inventory)
        assert "already exists" in one_line_error(again)
        unknown = cli("migrate", "unit-vm", "--to", "nowhere", "--inventory", test_inventory)
        assert "unknown fog node 'nowhere'" in one_line_error(unknown)
        same = cli("migrate", "unit-vm", "--to", "fogt", "--inventory", test_inventory)
        assert "already runs on fogt" in one_line_error(same)
    finally:
        destroyed = cli("vm", "destroy", "unit-vm", "--inventory", test_inventory)
    assert destroyed.status == ExitStatus.SUCCESS
    names = [r["name"] for r in cli("vm", "list", "--inventory", test_inventory,
                                    "--json").json()]
    assert "unit-vm" not in names


def test_migrations_listing_is_empty_at_first(cli):
    result = cli("migrations", "--json")
    assert result.status == ExitStatus.SUCCESS and result.json() == []


def test_a_vm_that_does_not_fit_is_refused_before_anything_is_defined(cli, test_inventory):
    big = cli("vm", "create", "big-vm", "--node", "fogt", "--memory", "4096",
              "--inventory", test_inventory)
    assert "not enough free memory for big-vm" in one_line_error(big)
    names = [r["name"] for r in cli("vm", "list", "--inventory", test_inventory,
                                    "--json").json()]
    assert "big-vm" not in names


def test_refused_requests_change_nothing_on_the_test_driver(cli, test_inventory):
    inv = ("--inventory", test_inventory)
    assert cli("vm", "create", "keep-vm", "--node", "fogt", "--memory", "128",
               *inv).status == ExitStatus.SUCCESS
    try:
        before = cli("vm", "list", "--json", *inv).json()
        for args, message in [
            (["migrate", "nosuchvm", "--to", "fogt"], "unknown VM 'nosuchvm'"),
            (["migrate", "keep-vm", "--to", "fog9"], "unknown fog node 'fog9'"),
            (["migrate", "keep-vm", "--to", "fogt"], "already runs on fogt"),
            (["migrate", "keep-vm", "--to", "fogt", "--bandwidth", "-1"],
             "--bandwidth must be > 0"),
            (["migrate", "Keep-VM", "--to", "fogt"], "invalid VM name"),
            (["vm", "create", "y" * 64, "--node", "fogt"], "invalid VM name"),
            (["vm", "create", "other-vm", "--node", "fog9"], "unknown fog node 'fog9'"),
            (["vm", "destroy", "nosuchvm"], "unknown VM 'nosuchvm'"),
        ]:
            assert message in one_line_error(cli(*args, *inv)), args
            assert cli("vm", "list", "--json", *inv).json() == before, args
            assert cli("migrations", "--json").json() == [], args
    finally:
        cli("vm", "destroy", "keep-vm", *inv)


# --- hostile numbers on every numeric option ------------------------------------------------

HOSTILE_NUMBERS = ["inf", "-inf", "nan", "1e999", "-1", "1e30", "99999999999999999999999"]


def numeric_options() -> list[tuple[tuple[str, ...], str]]:
    """(command path, option) for every option of the CLI tree that takes a number."""
    import click

    from orchestrator.cli import root

    found: list[tuple[tuple[str, ...], str]] = []

    ctx = click.Context(root)

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None:
                    walk(sub, (*path, name))
        for param in command.params:
            kind = param.type
            numeric = (isinstance(kind, click.types.FloatParamType | click.types.IntParamType)
                       or kind.name in {"number", "integer"})
            if isinstance(param, click.Option) and numeric and not param.is_flag:
                found.append((path, max(param.opts, key=len)))
    walk(root, ())
    return found


def state_snapshot(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


NUMERIC = numeric_options()


def test_the_table_covers_the_numeric_options_of_every_command_family():
    families = {path[0] for path, _ in NUMERIC}
    assert {"predict", "migrate", "calibrate", "simulate", "locate", "scenario",
            "lab", "vm", "app"} <= families
    assert len(NUMERIC) >= 46
    assert {(("vm", "create"), "--memory"), (("vm", "create"), "--vcpus"),
            (("vm", "create"), "--wait"), (("app", "install"), "--fog-capacity"),
            (("app", "event"), "--fog-capacity"), (("app", "event"), "--max-distance"),
            (("vm", "workload"), "--rate"), (("vm", "workload"), "--working-set")} <= set(NUMERIC)


@pytest.mark.parametrize(("path", "option"), NUMERIC,
                         ids=[" ".join(p) + " " + o for p, o in NUMERIC])
def test_hostile_numbers_are_one_line_exit_2_and_change_nothing(cli, tmp_path, path, option):
    state = tmp_path / "state"
    before = state_snapshot(state)
    for value in HOSTILE_NUMBERS:
        result = cli(*path, option, value)
        line = one_line_error(result)
        assert option in line or "Invalid value" in line or "is not" in line, (value, line)
        assert state_snapshot(state) == before, value


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e999", "[1, -1e999]"])
def test_app_query_refuses_a_non_finite_number_in_one_line(cli, tmp_path, value):
    state = tmp_path / "state"
    before = state_snapshot(state)
    line = one_line_error(cli("app", "query", "park", "request", f"lat={value}"))
    assert f"lat={value}" in line and "not a finite number" in line
    assert state_snapshot(state) == before


def test_an_unexpected_exception_is_one_line_exit_1_and_debug_shows_it(cli, monkeypatch):
    import orchestrator.commands.predict as predict_command

    def broken(*_args, **_kwargs):
        raise RuntimeError("a surprise\nover two lines")

    monkeypatch.setattr(predict_command, "predict", broken)
    args = ("predict", "--memory", "64", "--dirty-rate", "0", "--bandwidth", "10")
    line = one_line_error(cli(*args), ExitStatus.ERROR)
    assert "unexpected RuntimeError: a surprise over two lines" in line
    debug = cli("--debug", *args)
    assert debug.status == ExitStatus.ERROR and "Traceback" in debug.err
    monkeypatch.setenv("EDGEIOT_DEBUG", "1")
    assert "Traceback" in cli(*args).err
