"""Fixtures shared by the unit tests."""

import pytest


@pytest.fixture
def isolated_state(tmp_path, monkeypatch):
    """The CLI's state in a fresh directory, lab 'eunit', no inventory from the environment."""
    monkeypatch.setenv("EDGEIOT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("EDGEIOT_LAB", "eunit")
    monkeypatch.delenv("EDGEIOT_INVENTORY", raising=False)
