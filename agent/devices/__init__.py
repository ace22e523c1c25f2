"""Device emulators: processes behind a base station (in the lab, a fog node's devices namespace).

They produce realistic streams at a configurable rate and speak the proxy's stream protocol
(agent/guest/edgeiot_agent/codec.py): register with `hello`, learn the proxy's address from
the orchestrator's directory file, resend what was not acknowledged after a reconnect.
"""
