"""Code that runs away from the orchestrator: in guest VMs (`guest/`) and on fog nodes (`host/`).

Kept importable from the project root so the host-side test suite can exercise the same
sources that the guest image ships.
"""
