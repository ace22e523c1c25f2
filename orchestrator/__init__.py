"""edgeIoT orchestrator: proxy VMs for mobile edge computing, placed and live-migrated over libvirt."""

__version__ = "0.1.0"
