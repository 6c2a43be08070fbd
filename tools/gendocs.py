#!/usr/bin/env python3
"""Write what is generated from the CLI: docs/pvepstore.1 and contrib/pvepstore.bash-completion
(run after changing a command or an option; tests/cli/test_manpage.py keeps them current)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pvepstore.cli.manpage import bash_completion, page  # noqa: E402

(ROOT / "docs" / "pvepstore.1").write_text(page())
(ROOT / "contrib" / "pvepstore.bash-completion").write_text(bash_completion())
