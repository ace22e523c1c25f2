"""OpenFlow 1.3 controller of the lab's SDN core (os-ken app, rules, JSON API)."""
