"""Orchestration above the transports: provisioning, reading, collecting, archiving, forwarding."""
