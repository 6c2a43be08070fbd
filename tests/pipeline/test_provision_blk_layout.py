"""provision records the pstore_blk layout the guest's kernel will really use.

pmsg and console zones exist only where the kernel has those frontends, and
``psz_alloc_zones()`` puts them *before* the dmesg zones: an offline read with the
layout of a kernel without them would see every dmesg record one zone off.
"""

from __future__ import annotations

import base64

import pytest

from pvepstore.guest import connect
from pvepstore.guest.testing import FakeTransport, Recorded, reply
from pvepstore.pipeline import provision as prov
from pvepstore.pve import state
from tests.guest.conftest import probe_reply

PMSG_KERNEL = ("CONFIG_PSTORE=y\nCONFIG_PSTORE_BLK=m\nCONFIG_PSTORE_PMSG=y\nCONFIG_PSTORE_CONSOLE=y\n"
               "# CONFIG_PSTORE_FTRACE is not set\n")


@pytest.mark.parametrize("kconfig,front", [(None, 0), (PMSG_KERNEL, 64)])
def test_recorded_layout_follows_the_guest_kernels_frontends(fakepve, kconfig, front):
    fakepve.add_vm(101, running=True)
    cfg = fakepve.load_config(vms={101: {"ssh": {"host": "192.0.2.10"}}})
    transport = FakeTransport([probe_reply(kconfig=kconfig), Recorded("apply", 0, reply()),
                               probe_reply(kconfig=kconfig)], repeat=True)
    ctx = prov.make_context(cfg, guest_connect=lambda target: connect(target, transport=transport))
    prov.provision(ctx, 101)
    params = state.recorded_params(cfg, 101)
    assert (params.kmsg_size, params.pmsg_size, params.console_size) == (64, front, front)
    # the guest was told the same sizes
    (apply,) = [c for c in transport.calls if c.name == "apply"]
    text = " ".join(base64.b64decode(a.split(":", 1)[1]).decode("utf-8", "replace")
                    for a in apply.args if ":" in a and a.split(":", 1)[0].isdigit())
    assert f"pmsg_size={front} console_size={front}" in text, text[:300]
