"""The ``fakepve`` pytest fixture: a fake Proxmox node under a temporary ``host_root``.

Registered for the whole suite by one import line in ``tests/conftest.py``.
``fakepve.config(**overrides)`` writes a pvepstore config pointing at it
(API endpoint, token, CA under host_root, state dir) and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .server import FakePve


class FakePveFixture(FakePve):
    def __init__(self, tmp: Path, **kwargs):
        super().__init__(tmp / "host", **kwargs)
        self.tmp = tmp
        self.state_dir = tmp / "state"

    def config_data(self, **overrides) -> dict:
        data = {
            "host_root": str(self.host_root),
            "state_dir": str(self.state_dir),
            "api": {"host": "127.0.0.1", "port": self.port, "user": self.user,
                    "token_name": self.token_name, "token_value": self.token_value,
                    "verify_ssl": "proxmox", "timeout": 30},  # the CA under host_root
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return data

    def config_file(self, name: str = "config.yaml", **overrides) -> Path:
        path = self.tmp / name
        path.write_text(yaml.safe_dump(self.config_data(**overrides)))
        path.chmod(0o600)
        return path

    def load_config(self, **overrides):
        from pvepstore.config import parse_config
        return parse_config(self.config_data(**overrides))


@pytest.fixture
def fakepve(tmp_path):
    fake = FakePveFixture(tmp_path).start()
    try:
        yield fake
    finally:
        fake.stop()
