"""Host agent for a fog node: this host's load and its domains, as Prometheus metrics.

Deployed by the fog_node playbook and scraped by Prometheus. Self-contained (psutil,
prometheus-client, libvirt-python; nothing from the orchestrator package), so the playbook
copies just this directory. Every value is read at scrape time by a custom Collector; a
scrape never raises, and a libvirt it cannot reach shows as `edgeiot_host_libvirt_up 0`.
"""
