"""`python -m agent.devices SPEC.json` runs the devices a spec describes (see emulator.py)."""

from agent.devices.emulator import main

if __name__ == "__main__":
    raise SystemExit(main())
