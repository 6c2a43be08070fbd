"""satyr compatibility: frame parsing and duphash values pinned by satyr's own tests."""

from __future__ import annotations

import pytest

from pvepstore.analysis.frame import parse_frame, parse_trace
from pvepstore.analysis.logline import split_lines
from pvepstore.analysis.signature import duphash, duphash_text, normalize_frames, short_signature
from pvepstore.analysis.taint import satyr_taint_names, taint_letters

from .corpus import expected, needs_corpus, read

SATYR = expected("satyr")
PARSE_CASES = sorted(k for k, v in SATYR.items() if isinstance(v.get("koops_stacktrace_parse"), dict))


@needs_corpus
@pytest.mark.parametrize("name", PARSE_CASES)
def test_satyr_stacktrace_parse(name):
    want = SATYR[name]["koops_stacktrace_parse"]
    text = read(f"satyr/kerneloopses/{name}")
    trace = parse_trace(split_lines(text)[0])
    first = trace.frames[0] if trace.frames else None
    last = trace.frames[-1] if trace.frames else None
    got = {
        "first_function_name": first and first.function,
        "last_function_name": last and last.function,
        "frame_count": len(trace.frames),
        "taint_count": len(satyr_taint_names(taint_letters(text))),
        "module_count": len(trace.modules or []),
        "first_frame_special_stack": first and first.special_stack,
        "last_frame_special_stack": last and last.special_stack,
    }
    assert got == want


@needs_corpus
def test_satyr_python_duphash_values():
    want = SATYR["rhbz-827868"]["python_koops"]
    frames = parse_trace(split_lines(read("satyr/kerneloopses/rhbz-827868"))[0]).frames
    assert len(frames) == want["frame_count"]
    assert duphash_text(frames, nframes=3, compat=False, normalize=True) == want["duphash_plain_3_frames"]
    assert duphash(frames, nframes=0, compat=False, normalize=True) == want["duphash"]
    assert duphash_text(frames, nframes=6, compat=True, normalize=True) == \
        want["duphash_koops_compat_plain_6_frames"]
    assert duphash(frames, nframes=6, compat=True, normalize=True) == want["duphash_koops_compat_6_frames"]
    first = want["first_frame"]
    assert frames[0].function == first["function_name"] and frames[0].reliable is first["reliable"]
    assert hex(frames[0].address) == first["address"] and hex(frames[0].offset) == first["function_offset"]


@needs_corpus
def test_satyr_taint_flag_names():
    want = set(SATYR["rhbz-827868-modified"]["taint_flags_true"])
    assert satyr_taint_names(taint_letters(read("satyr/kerneloopses/rhbz-827868-modified"))) == want


def test_abrt_duphash_is_six_reliable_unnormalised_frames():
    lines = [" [<c0a878b6>] dump_stack+0x41/0x52", " [<c0466c1b>] warn_slowpath_common+0x8b/0xc0",
             " [<c0712794>] ? __list_del_entry+0xf4/0x100", " [<c0466c8e>] warn_slowpath_fmt+0x3e/0x60",
             " [<c0712794>] __list_del_entry+0xf4/0x100", " [<c04e8a63>] cgroup_exit+0x33/0x100",
             " [<c0469208>] do_exit+0x2b8/0x950", " [<c0469917>] do_group_exit+0x37/0xa0"]
    frames = [parse_frame(x) for x in lines]
    assert duphash_text(frames) == ("dump_stack\nwarn_slowpath_common\nwarn_slowpath_fmt\n"
                                    "__list_del_entry\ncgroup_exit\ndo_exit\n")
    assert [f.function for f in normalize_frames(frames)][:2] == ["__list_del_entry", "__list_del_entry"]
    assert duphash([frames[2]]) is None  # only an unreliable frame: ABRT finds nothing to hash


def test_short_signature_shape_and_sensitivity():
    a = [parse_frame(" ext4_xattr_get+0x1/0x2 [ext4]"), parse_frame(" vfs_getxattr+0x1/0x2")]
    b = [parse_frame(" ext4_xattr_get+0x1/0x2 [ext4]"), parse_frame(" do_sys_open+0x1/0x2")]
    sa, sb = short_signature(a), short_signature(b)
    assert sa.startswith("kernel-ext4_xattr_get-") and len(sa.rsplit("-", 1)[1]) == 8
    assert sa != sb
    assert short_signature([]) == "kernel-UnspecifiedStackSignature"


@pytest.mark.parametrize("line,function,reliable,module", [
    (" [<ffffffffa04fdceb>] btrfs_tree_read_lock+0x6b/0x140 [btrfs]", "btrfs_tree_read_lock", True, "btrfs"),
    (" [<ffffffff81317f38>] ? crypto_shash_update+0x38/0x100", "crypto_shash_update", False, None),
    (" ? __list_del_entry+0xf4/0x100", "__list_del_entry", False, None),
    ("[<c0014318>] (dump_backtrace_log_lvl) from [<c001457c>] (show_stack+0x24/0x2c)", "dump_backtrace_log_lvl",
     True, None),
    ("[c0000000fe8bbb00] [c0000000000170f8] .show_stack+0x80/0x1b0 (unreliable)", "show_stack", False, None),
])
def test_frame_line_forms(line, function, reliable, module):
    f = parse_frame(line)
    assert (f.function, f.reliable, f.module) == (function, reliable, module)


def test_not_frames():
    for line in ("Code: 66 31 d2 09", "Hardware name: Dell", "RIP: 0010:dev_watchdog+0x254/0x260", "Call Trace:"):
        assert parse_frame(line) is None
