"""The lab core's OpenFlow 1.3 controller: an os-ken app plus a small JSON API.

What it does (rules as plain data in `rules.py`; this module only speaks OpenFlow):
  * on switch connect: clear our tables, add the migration meter, install the per-class
    classification rules and the proactive forwarding rules for every registered fog node;
  * counters: flow stats of table 0 (per class) and port stats (per fog-node link), read
    from the switch when asked;
  * migration-aware moves: pin a VM's MAC to its new node's port for `rules.MOVE_HOLD_S`
    and send a RARP "from" the VM into the switch from that port, so MAC learning in OVS
    and in every node's br-vm follows at once instead of at the VM's next broadcast;
  * MME location updates arriving at the controller (`api.LocationRelay`) are kept (last
    1000) and forwarded to the orchestrator's line-JSON `locate --serve` endpoint once one
    is set (`orchestrator core relay ADDR:PORT`, or `locate_endpoint` in the config).

The JSON API (HTTP on the configured loopback/gateway address) is in `api.py`; its
handlers call the methods of `CoreController` from their own threads (os-ken's native hub).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib.packet import arp, ethernet, packet
from os_ken.ofproto import ofproto_v1_3

from orchestrator.lab.controller import rules
from orchestrator.lab.controller.api import (
    LocationRelay,
    RelayAuth,
    load_relay_key,
    relay_key_file,
    serve_api,
)

CONFIG_ENV = "EDGEIOT_SDN_CONFIG"
STATS_TIMEOUT_S = 5.0


class CoreController(app_manager.OSKenApp):  # type: ignore[misc]
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        with open(os.environ[CONFIG_ENV]) as f:
            self.config: dict[str, Any] = json.load(f)
        self.nodes: dict[str, dict[str, Any]] = {}  # name -> {port, mac}
        self.moves: dict[str, tuple[str, float]] = {}  # VM MAC -> (node, pin's end)
        gateway = self.config.get("gateway")
        # <lab root>/ovs/<prefix>-controller.json: the relay key is in <lab root>.
        key_file = relay_key_file(Path(os.environ[CONFIG_ENV]).resolve().parent.parent)
        self.relay = LocationRelay(self.config.get("locate_endpoint"),
                                   {str(gateway)} if gateway else set(),
                                   auth=RelayAuth(load_relay_key(key_file)))
        self.locations = self.relay.updates
        self.datapath: Any = None
        self.lock = threading.Lock()
        self.pending: dict[int, tuple[list[Any], threading.Event]] = {}
        self.api = serve_api(self, self.config["api_host"], int(self.config["api_port"]))

    # --- switch life cycle ----------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)  # type: ignore[misc]
    def _switch_features(self, ev: Any) -> None:
        dp = ev.msg.datapath
        self.datapath = dp
        parser, ofp = dp.ofproto_parser, dp.ofproto
        dp.send_msg(parser.OFPFlowMod(dp, command=ofp.OFPFC_DELETE, table_id=ofp.OFPTT_ALL,
                                      out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY))
        rate = self.config.get("migration_mbit")
        if rate:
            kbps, burst = rules.meter_band(float(rate))
            dp.send_msg(parser.OFPMeterMod(dp, command=ofp.OFPMC_DELETE,
                                           meter_id=rules.MIGRATION_METER_ID))
            dp.send_msg(parser.OFPMeterMod(
                dp, command=ofp.OFPMC_ADD, flags=ofp.OFPMF_KBPS | ofp.OFPMF_BURST,
                meter_id=rules.MIGRATION_METER_ID,
                bands=[parser.OFPMeterBandDrop(rate=kbps, burst_size=burst)]))
        for flow in rules.classification_flows(metered=bool(rate)):
            self.install(flow)
        self._install_forwarding()
        now = time.monotonic()
        for mac, (node, until) in self._live_moves().items():
            self.install(rules.move_flow(mac, int(self.nodes[node]["port"]),
                                         max(1, math.ceil(until - now))))

    def _live_moves(self) -> dict[str, tuple[str, float]]:
        """Moves whose pin has not ended yet (the switch drops it by itself)."""
        now = time.monotonic()
        return {mac: m for mac, m in list(self.moves.items()) if m[1] > now}

    def _install_forwarding(self) -> None:
        node_ports = {n["mac"]: int(n["port"]) for n in self.nodes.values()}
        for flow in rules.forwarding_flows(node_ports, self.config.get("gateway_mac")):
            self.install(flow)

    def install(self, flow: rules.Flow) -> None:
        dp = self.datapath
        if dp is None:
            return
        parser, ofp = dp.ofproto_parser, dp.ofproto
        inst = []
        if flow.meter is not None:
            inst.append(parser.OFPInstructionMeter(flow.meter, ofp.OFPIT_METER))
        if flow.output is not None:
            port = {"NORMAL": ofp.OFPP_NORMAL, "LOCAL": ofp.OFPP_LOCAL}.get(
                str(flow.output), flow.output)
            inst.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS,
                                                     [parser.OFPActionOutput(int(port))]))
        if flow.goto is not None:
            inst.append(parser.OFPInstructionGotoTable(flow.goto))
        dp.send_msg(parser.OFPFlowMod(
            dp, cookie=flow.cookie, table_id=flow.table, priority=flow.priority,
            idle_timeout=flow.idle_timeout, hard_timeout=flow.hard_timeout,
            match=parser.OFPMatch(**dict(flow.match)),
            instructions=inst))

    # --- API operations (called from API threads) -------------------------------------------

    def add_node(self, name: str, port: int, mac: str) -> dict[str, Any]:
        mac = rules.check_mac(mac)
        with self.lock:
            self.nodes[name] = {"port": int(port), "mac": mac}
        self._install_forwarding()
        return {"node": name, "port": int(port), "mac": mac}

    def move(self, mac: str, node: str) -> dict[str, Any]:
        """Pin the VM's MAC to the node's port and announce it there (see module doc)."""
        mac = rules.check_mac(mac)
        if node not in self.nodes:
            raise KeyError(f"unknown fog node {node!r}")
        port = int(self.nodes[node]["port"])
        flow = rules.move_flow(mac, port)
        self.install(flow)
        self.moves[mac] = (node, time.monotonic() + flow.hard_timeout)
        self._announce(mac, port)
        return {"mac": mac, "node": node, "port": port, "hold_s": flow.hard_timeout}

    def _announce(self, mac: str, port: int) -> None:
        """A RARP request from the VM's MAC, injected as if received on its new port and
        handed to NORMAL: OVS and the node bridges all learn the new location."""
        dp = self.datapath
        if dp is None:
            return
        pkt = packet.Packet()
        pkt.add_protocol(ethernet.ethernet(dst="ff:ff:ff:ff:ff:ff", src=mac, ethertype=0x8035))
        pkt.add_protocol(arp.arp(opcode=3, src_mac=mac, src_ip="0.0.0.0", dst_mac=mac,
                                 dst_ip="0.0.0.0"))
        pkt.serialize()
        parser, ofp = dp.ofproto_parser, dp.ofproto
        dp.send_msg(parser.OFPPacketOut(dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=port,
                                        actions=[parser.OFPActionOutput(ofp.OFPP_NORMAL)],
                                        data=pkt.data))

    def stats(self) -> dict[str, Any]:
        dp = self.datapath
        if dp is None:
            return {"connected": False, "classes": {}, "links": {}}
        parser, ofp = dp.ofproto_parser, dp.ofproto
        flows = self._request(parser.OFPFlowStatsRequest(dp, table_id=rules.CLASSIFY_TABLE))
        ports = self._request(parser.OFPPortStatsRequest(dp, 0, ofp.OFPP_ANY))
        flow_entries = [{"cookie": s.cookie, "byte_count": s.byte_count, "table_id": s.table_id,
                         "packet_count": s.packet_count} for s in flows]
        port_entries = [{"port_no": s.port_no, "rx_bytes": s.rx_bytes, "tx_bytes": s.tx_bytes,
                         "rx_packets": s.rx_packets, "tx_packets": s.tx_packets,
                         "rx_dropped": s.rx_dropped, "tx_dropped": s.tx_dropped}
                        for s in ports]
        names = {int(n["port"]): name for name, n in self.nodes.items()}
        return {"connected": True, "classes": rules.class_totals(flow_entries),
                "links": rules.link_totals(port_entries, names),
                "migration_mbit": self.config.get("migration_mbit"),
                "moves": {mac: node for mac, (node, _) in self._live_moves().items()}}

    def _request(self, msg: Any) -> list[Any]:
        """Send a multipart request and wait for all its reply parts."""
        done = threading.Event()
        parts: list[Any] = []
        dp = self.datapath
        dp.set_xid(msg)
        self.pending[msg.xid] = (parts, done)
        dp.send_msg(msg)
        try:
            if not done.wait(STATS_TIMEOUT_S):
                raise TimeoutError("the switch did not answer a stats request")
        finally:
            self.pending.pop(msg.xid, None)
        return parts

    @set_ev_cls([ofp_event.EventOFPFlowStatsReply, ofp_event.EventOFPPortStatsReply],
                MAIN_DISPATCHER)  # type: ignore[misc]
    def _stats_reply(self, ev: Any) -> None:
        waiting = self.pending.get(ev.msg.xid)
        if waiting is None:
            return
        waiting[0].extend(ev.msg.body)
        if not ev.msg.flags & ev.msg.datapath.ofproto.OFPMPF_REPLY_MORE:
            waiting[1].set()

    def locate(self, update: dict[str, Any]) -> dict[str, Any]:
        """An MME location update: kept, and forwarded to the orchestrator if it listens."""
        return self.relay.locate(update)

    def locate_endpoint(self) -> dict[str, Any]:
        return self.relay.describe()

    def set_locate_endpoint(self, endpoint: str | None) -> dict[str, Any]:
        return self.relay.set_endpoint(endpoint)
