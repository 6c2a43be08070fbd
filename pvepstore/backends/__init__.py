"""Capture backends: one module per backend behind :class:`.base.Backend`, found through :mod:`.registry`.

A backend says what it needs in the guest (its guest rule module), on the Proxmox side
(provision/undo/status), and how the host opens its records for a VM in each state.
Everything above (pipeline, CLI, config) asks the registry and never compares names.
"""
