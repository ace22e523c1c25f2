"""A refused `lab up` never tears down a lab it did not create (issue 13), against a
scripted kernel: another `lab up` that holds the host's lock while it builds, then leaves
its lab behind, is waited for and then refused — without a single deletion."""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.errors import UserError
from orchestrator.lab import state
from orchestrator.lab.builder import Lab
from orchestrator.lab.topology import LabSpec
from tests.unit.test_lab_builder import ScriptedKernel, no_image


def test_a_lab_up_racing_another_is_refused_after_it_and_deletes_nothing(tmp_path):
    lock = tmp_path / "up.lock"
    spec = LabSpec(prefix="erace", subnet="10.73.0.0/16")
    kernel = ScriptedKernel()  # what the first lab up has made so far: nothing yet
    paths = state.LabPaths(tmp_path, "erace")
    building = threading.Event()

    def first_lab_up() -> None:
        with state.up_lock(lock):
            building.set()
            time.sleep(0.3)  # it builds: state file, namespaces, core bridge, route
            state.save(paths, {"status": "up", "spec": {}, "nodes": [{"name": "fog1"}]})
            kernel.netns.append("erace-fog1")
            kernel.links.append("erace-core")
            kernel.routes.append({"dst": "10.73.0.0/16", "dev": "erace-core"})

    other = threading.Thread(target=first_lab_up)
    other.start()
    assert building.wait(5)
    second = Lab(spec, tmp_path, runner=kernel, image=no_image(tmp_path))
    second.up_lock_path = lock
    started = time.monotonic()
    with pytest.raises(UserError, match="already up"):
        second.up()  # passed the unlocked check (nothing yet), waited, then refused
    other.join()
    assert time.monotonic() - started >= 0.2
    assert kernel.changes() == []
    assert kernel.netns == ["erace-fog1"] and kernel.links == ["erace-core"]
    assert state.load(paths)["status"] == "up"


def test_another_labs_subnet_taken_meanwhile_is_refused_without_deletions(tmp_path):
    lock = tmp_path / "up.lock"
    kernel = ScriptedKernel()

    def other_prefix_same_subnet() -> None:
        with state.up_lock(lock):
            time.sleep(0.2)
            kernel.links.append("eoth-core")
            kernel.routes.append({"dst": "10.72.0.0/16", "dev": "eoth-core"})

    other = threading.Thread(target=other_prefix_same_subnet)
    other.start()
    time.sleep(0.05)
    lab = Lab(LabSpec(prefix="emine", subnet="10.72.0.0/16"), tmp_path, runner=kernel,
              image=no_image(tmp_path))
    lab.up_lock_path = lock
    with pytest.raises(UserError, match="already routed"):
        lab.up()
    other.join()
    assert kernel.changes() == [] and kernel.links == ["eoth-core"]
    assert state.load(state.LabPaths(tmp_path, "emine")) is None


def test_a_lab_up_that_cannot_get_the_lock_is_refused_having_done_nothing(tmp_path):
    lock = tmp_path / "up.lock"
    kernel = ScriptedKernel()
    with state.up_lock(lock):
        with pytest.raises(UserError, match="another 'lab up'"):
            with state.up_lock(lock, wait_s=0.2):
                pass
    assert kernel.changes() == []
