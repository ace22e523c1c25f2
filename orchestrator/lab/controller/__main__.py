"""`python -m orchestrator.lab.controller CONFIG.json`: run the lab core's controller.

os-ken 4 ships no `osken-manager`; this is the few lines of it we need: set the OpenFlow
listen address from the config (loopback only) and run the app with os-ken's OpenFlow
handler until killed.
"""

from __future__ import annotations

import json
import logging
import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m orchestrator.lab.controller CONFIG.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        config = json.load(f)
    os.environ["EDGEIOT_SDN_CONFIG"] = os.path.abspath(argv[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from os_ken import cfg
    from os_ken.base.app_manager import AppManager
    from os_ken.controller import controller  # noqa: F401 - registers the ofp-* options

    cfg.CONF(args=["--ofp-listen-host", str(config["ofp_host"]),
                   "--ofp-tcp-listen-port", str(config["ofp_port"])], project="os_ken")
    AppManager.run_apps(["os_ken.controller.ofp_handler", "orchestrator.lab.controller.app"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
