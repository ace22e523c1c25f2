"""Per-node migration slots: at most N migrations touch a node at once, across processes."""

import threading
import time

import pytest

from orchestrator.edge.migrate import node_slots, vm_lock
from orchestrator.errors import OrchestratorError, UserError


def test_a_third_migration_waits_for_a_slot(tmp_path):
    inside, peak, lock = [0], [0], threading.Lock()

    def migrate(nodes):
        with node_slots(tmp_path, nodes, limit=2):
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.3)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=migrate, args=(["fog1", f"fog{i + 2}"],))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2  # fog1 is in every migration: never more than its limit at once


def test_no_slot_within_the_wait_is_an_error(tmp_path):
    now = [0.0]
    with node_slots(tmp_path, ["fog1"], limit=1):
        with pytest.raises(OrchestratorError, match="no free migration slot on fog1"):
            with node_slots(tmp_path, ["fog1"], limit=1, wait_s=1.0, clock=lambda: now[0],
                            sleep=lambda s: now.__setitem__(0, now[0] + s)):
                pass


def test_slots_are_released(tmp_path):
    with node_slots(tmp_path, ["fog1", "fog2"], limit=1):
        pass
    with node_slots(tmp_path, ["fog2", "fog1"], limit=1, wait_s=0.0):
        pass


def test_bad_limit_and_double_migration_are_refused(tmp_path):
    with pytest.raises(UserError, match="--max-per-node"):
        with node_slots(tmp_path, ["fog1"], limit=0):
            pass
    with vm_lock(tmp_path, "vm"):
        with pytest.raises(UserError, match="already running"):
            with vm_lock(tmp_path, "vm"):
                pass
