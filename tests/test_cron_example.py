"""The cron example is a valid /etc/cron.d file that finds the packaged and the source-installed program."""

from pathlib import Path

CRON = Path(__file__).resolve().parents[1] / "contrib" / "pvepstore.cron"


def test_the_cron_example_runs_the_sweep_as_root_every_five_minutes():
    lines = [ln for ln in CRON.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    env = dict(ln.split("=", 1) for ln in lines if "=" in ln.split()[0])
    jobs = [ln.split(None, 6) for ln in lines if "=" not in ln.split()[0]]
    assert {"/usr/bin", "/usr/local/bin"} <= set(env["PATH"].split(":"))
    assert jobs == [["*/5", "*", "*", "*", "*", "root", "pvepstore sweep --quiet"]]
