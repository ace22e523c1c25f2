"""In-guest software for proxy and application VMs.

`edgeiot_agent` is copied verbatim into the guest image (see images/build.py), where it runs
as a top-level package under Debian's minimal Python 3.11; here it is importable as
`agent.guest.edgeiot_agent` for unit tests. It therefore uses only relative imports and the
standard library modules that the image ships.
"""
