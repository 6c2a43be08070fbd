"""The README's backend table is the registry's (issue 12: the docs come from the registry)."""

from __future__ import annotations

from pathlib import Path

from pvepstore.backends import registry

README = Path(__file__).resolve().parents[2] / "README.md"


def backend_table() -> str:
    rows = ["| backend | what | Proxmox side | a stopped VM's records |", "|---|---|---|---|"]
    rows += [f"| `{b.name}` | {b.summary} | {b.proxmox_side} | {b.stopped_records} |"
             for b in (registry.get(n) for n in registry.names())]
    return "\n".join(rows)


def test_readme_has_the_registry_table():
    assert backend_table() in README.read_text(), "regenerate: python -c 'from tests.backends.test_docs " \
                                                  "import backend_table; print(backend_table())'"
