"""edgeIoT orchestrator: proxy VMs for mobile edge computing, live-migrated over libvirt."""

__version__ = "0.1.0"
