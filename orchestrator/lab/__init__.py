"""Lab-in-a-box: fog nodes as network namespaces on this machine, each with its own libvirtd.

The lab only manufactures fog nodes (`orchestrator.fog.node.FogNode`); nothing above this
package knows whether a node is a namespace or a real host.
"""
