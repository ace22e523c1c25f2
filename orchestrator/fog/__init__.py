"""libvirt adapters: fog nodes, their hypervisor connections, domains and migrations."""
