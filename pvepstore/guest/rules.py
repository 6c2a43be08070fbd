"""The rules every backend shares: pstore's single slot, the problems common to all, the checks of verify.

A backend's guest module adds its own rules around these (``blk_wishes``, ``ramoops_wishes``).
"""

from __future__ import annotations

from typing import Callable

from .changes import VerifyResult
from .kernels import measured_labels
from .probe import KMOD_EFI, Capability, Problem, ProbeReport
from .scripts import MANIFEST

Add = Callable[..., None]  # add(code, severity, message, fix="")
CheckAdd = Callable[..., None]  # add(name, ok, detail="")
CAPTURES = ("oops", "panic", "shutdown", "emergency_restart", "console", "pmsg")


def assess(r: ProbeReport, *, target: str, configured: Callable[[ProbeReport], bool],
           capabilities: Callable[[ProbeReport], dict[str, Capability]],
           problems: Callable[[ProbeReport], list[Problem]],
           costs: Callable[[ProbeReport], list[str]]) -> ProbeReport:
    """Fill the report's verdict for one backend (the facts stay as probed)."""
    r.target = target
    r.configured = configured(r)
    r.capabilities = capabilities(r)
    r.costs = costs(r)
    r.problems = problems(r)
    return r


def none_captured(note: str) -> dict[str, Capability]:
    no = Capability("no", note)
    return {k: no for k in CAPTURES}


def frontend_caps(r: ProbeReport, caps: dict[str, Capability], lags: str) -> None:
    for front in ("console", "pmsg"):
        built = r.frontends.get(front)
        if built is None:
            caps[front] = Capability("unknown", "kernel config not readable; pvepstore does not enable it")
        elif built:
            lag = f" ({lags})" if front == "console" and lags else \
                " (synchronous: a reboot reason written to /dev/pmsg0 survives)" if front == "pmsg" else ""
            caps[front] = Capability("yes", f"kernel has PSTORE_{front.upper()}{lag}")
        else:
            caps[front] = Capability("no", f"kernel built without PSTORE_{front.upper()}")


def problems_with(r: ProbeReport, specific: Callable[[ProbeReport, Add], None], *,
                  oops_must_not_panic: bool = False) -> list[Problem]:
    """The probe's own problem, the backend's (``specific``), then those of every backend."""
    out: list[Problem] = []
    add = lambda *a: out.append(Problem(*a))  # noqa: E731
    if r.incomplete:
        add("probe-incomplete", "blocker", "the probe did not finish (output cut or script failed)",
            "check the guest's shell tools (coreutils, util-linux, kmod)")
    specific(r, add)
    common_problems(r, add, oops_must_not_panic=oops_must_not_panic)
    return out


def slot_problems(r: ProbeReport, ours: str, add: Add, *, erst_hint: str) -> None:
    """pstore takes a single backend: what holds the slot (or may take it) other than ``ours``.

    Each backend handles the slot holders it can take over itself before calling this.
    """
    if r.backend and r.backend != ours:
        if r.backend == "erst":
            add("backend-erst", "blocker", "the built-in ACPI ERST backend holds pstore's single slot", erst_hint)
        elif r.backend.startswith("efi"):
            add("backend-efi", "fix", f"efi_pstore holds pstore's single slot (backend {r.backend})",
                "options efi_pstore pstore_disable=Y; takes effect at the next reboot")
        else:
            add("backend-other", "warning", f"backend {r.backend} holds pstore's single slot", "")
    elif r.efi and r.efi_pstore_available and not r.efi_pstore_kept_out:
        add("efi-pstore-competes", "fix", "UEFI guest: efi_pstore can win the race for pstore's single slot "
            "(systemd-pstore.service pulls it in)", "options efi_pstore pstore_disable=Y")


def registration_problems(r: ProbeReport, add: Add, *, module_present: bool, ours: str,
                          other_params: tuple[str, str, str], unregistered: tuple[str, str, str]) -> None:
    """The backend's module exists but is not registered on pvepstore's target: apply (re)loads it.

    ``other_params``/``unregistered``: (code, message, fix) when ``ours`` holds the slot with other
    parameters, or does not hold it.
    """
    if module_present and not r.configured:
        code, message, fix = other_params if r.backend == ours else unregistered
        add(code, "fix", message, fix)


def common_problems(r: ProbeReport, add: Add, *, oops_must_not_panic: bool = False) -> None:
    """``oops_must_not_panic``: the backend loses Oopses that panic_on_oops turns into panics."""
    if not r.measured and r.kernel:
        who = f"{r.distro or r.distro_id or 'an unknown distribution'}, kernel {r.kernel}"
        if r.kconfig_read:
            add("kernel-not-measured", "info", f"{who}: not a kernel pvepstore was measured on "
                f"({measured_labels()}); what it captures here is read from this kernel's config and "
                "modules, not tested", "")
        else:
            add("kernel-not-measured", "warning", f"{who}: not a kernel pvepstore was measured on "
                f"({measured_labels()}), and its config is not readable: which pstore options it has "
                "is unknown", f"install /boot/config-{r.kernel} (the kernel package's) or enable "
                "CONFIG_IKCONFIG_PROC")
    if r.efi_pstore_available and KMOD_EFI in r.builtin_modules and not r.efi_pstore_disabled:
        add("efi-pstore-builtin", "warning", "efi_pstore is built into this kernel: modprobe.d cannot keep it "
            "out of pstore's slot", "add efi_pstore.pstore_disable=1 to the kernel command line")
    sp = r.systemd_pstore
    if sp.get("present") and sp.get("enabled") != "masked" and sp.get("unlink") and sp.get("storage") != "none":
        add("systemd-pstore-unlinks", "fix", "systemd-pstore erases every record at boot (Unlink=yes)",
            "drop-in /etc/systemd/pstore.conf.d/99-pvepstore.conf with Unlink=no")
    if r.pstorefs != "pstore":
        add("pstorefs-unmounted", "warning", "/sys/fs/pstore is not mounted: the guest cannot list records "
            "(pstore_blk writes nothing then)", "mount -t pstore pstore /sys/fs/pstore (systemd normally does)")
    for item in r.legacy:
        add("legacy-config", "consent", f"{item['path']}: old ramoops/pstore setup ({item['summary']})",
            "remove it (--remove-legacy; backed up, undo restores it)")
    if r.cmdline_legacy:
        add("legacy-cmdline", "warning", "this boot runs with " + " ".join(r.cmdline_legacy[:4]),
            "gone after the boot configuration is cleaned and the guest reboots")
    if r.panic_on_oops and oops_must_not_panic:
        add("panic-on-oops", "warning", "kernel.panic_on_oops=1: Oopses become panics and are never recorded",
            "sysctl kernel.panic_on_oops=0 (pvepstore does not change it)")
    if r.kdump_loaded:
        add("kdump", "info", "a kdump kernel is loaded: panics go to kdump"
            + ("" if r.crash_kexec_post_notifiers else " (crash_kexec_post_notifiers is off)"), "")
    if r.manifest_error:
        add("manifest-invalid", "blocker", f"the guest's pvepstore manifest is unusable: {r.manifest_error}",
            "inspect /var/lib/pvepstore on the guest")


def verify_with(r: ProbeReport, specific: Callable[[ProbeReport, dict, CheckAdd], None], *, boot_link: str,
                service: dict[str, str], service_name: str, efi_kept_out: bool = True) -> VerifyResult:
    """verify: the manifest, the backend's checks (``specific`` with the manifest's settings), then
    the checks every backend shares; ``boot_link`` is the unit's enable link, ``service`` its state.
    ``efi_kept_out``: the backend competes with efi_pstore for pstore's slot, so efi_pstore must be
    kept out of it (False for efi_pstore itself, which is that slot's holder)."""
    m = r.manifest or {}
    s = m.get("settings", {})
    checks: list[tuple[str, bool, str]] = []
    add = lambda name, ok, detail="": checks.append((name, bool(ok), detail))  # noqa: E731
    add("manifest", bool(m), MANIFEST if m else "pvepstore has not configured this guest")
    specific(r, s, add)
    add("pstorefs", r.pstorefs == "pstore", "/sys/fs/pstore mounted" if r.pstorefs == "pstore" else "not mounted")
    sp = r.systemd_pstore
    keeps = not sp.get("present") or sp.get("enabled") == "masked" or not sp.get("unlink") \
        or sp.get("storage") == "none"
    add("systemd-pstore keeps records", keeps, f"Unlink={'yes' if sp.get('unlink') else 'no'}")
    if efi_kept_out:
        add("efi_pstore kept out", r.efi_pstore_kept_out,
            "cannot take the backend slot at the next boot" if r.efi_pstore_kept_out
            else "efi_pstore can take the backend slot at the next boot")
    for e in m.get("files", []):
        cur = r.files.get(e["path"])
        cur_sha = cur.sha256 if cur else "-"
        add(f"file {e['path']}", cur_sha == e.get("sha256_after"), "as applied" if cur_sha == e.get("sha256_after")
            else "changed since apply")
    if any(e["path"] == boot_link and e.get("sha256_after") != "-" for e in m.get("files", [])):
        add("boot unit", service.get("enabled") == "enabled" and service.get("active") == "active",
            f"{service_name} {service.get('enabled')}, {service.get('active')}"
            + (f" ({service['result']})" if service.get("result") else ""))
    problems = [f"{n}: {d}" if d else n for n, ok, d in checks if not ok]
    return VerifyResult(ok=not problems, checks=checks, problems=problems)
