"""Fake PVE routes for cluster configuration: HA resources and replication jobs (registered into ROUTES)."""
