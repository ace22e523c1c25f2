"""edgeIoT guest agent: control server, live counter and memory dirtier inside a VM.

Why it exists: the orchestrator needs proof that a VM survived a live migration (same boot
id, a counter that kept increasing) and a controllable dirty-page rate to calibrate its
pre-copy predictor. Issue 3's proxy-VM services (device streams, semantic models) plug into
the same `Agent` as further services.

Runs under the guest's minimal Python: standard library only, every import at module top
level (images/build.py discovers the stdlib modules to ship by importing `.app`).
"""

from .wire import CONTROL_PORT as DEFAULT_PORT

__version__ = "0.1.0"
__all__ = ["DEFAULT_PORT", "__version__"]
