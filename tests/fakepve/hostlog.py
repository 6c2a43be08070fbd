"""Fake PVE routes for the node's own logs and HA state: journal, syslog, HA status (registered into ROUTES)."""
