"""Entry point: `python3 -m edgeiot_agent [--port 7070] [--name NAME]`; /init runs it."""

from .app import main

if __name__ == "__main__":
    raise SystemExit(main())
