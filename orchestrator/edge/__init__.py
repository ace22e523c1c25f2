"""The data plane as the orchestrator sees it: VMs, devices, mobility, migrations."""
