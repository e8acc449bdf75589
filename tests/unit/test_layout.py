"""vrift/vdir/layout.py must say exactly what vrift/native/vrift_vdir.h says (the one layout)."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from vrift.vdir import layout, native
from vrift.vdir.entry import Entry
from vrift.vdir.shm_format import pack_entry

NATIVE = Path(native.__file__).resolve().parent.parent / "native"


def c_fields() -> dict[str, tuple[int, int]]:
    out, i = {}, 0
    name, off, size = ctypes.c_char_p(), ctypes.c_size_t(), ctypes.c_size_t()
    while native.lib().vrift_layout_field(i, ctypes.byref(name), ctypes.byref(off), ctypes.byref(size)):
        out[name.value.decode()] = (off.value, size.value)
        i += 1
    return out


def test_every_field_matches_the_c_header():
    fields = c_fields()
    mirrors = {"vrift_header": layout.HEADER_FIELDS, "vrift_entry": layout.ENTRY_FIELDS,
               "vrift_slot": (("entry_plus1", "I"), ("hash_hi", "I"))}
    checked = set()
    for struct_name, py_fields in mirrors.items():
        for name, (off, size) in layout.field_offsets(py_fields).items():
            key = f"{struct_name}.{name}"
            assert fields.get(key) == (off, size), f"{key}: python {(off, size)} != C {fields.get(key)}"
            checked.add(key)
    assert checked == set(fields), f"C fields without a Python mirror: {set(fields) - checked}"
    assert layout.field_offsets(layout.ENTRY_FIELDS)["flags"][0] == layout.RECORD_OFFSET


@pytest.mark.parametrize("name,value", [
    ("VRIFT_VDIR_MAGIC", layout.MAGIC), ("VRIFT_VDIR_VERSION", layout.VERSION),
    ("VRIFT_HEADER_SIZE", layout.HEADER_SIZE), ("VRIFT_ROOT_OFFSET", layout.ROOT_OFFSET),
    ("VRIFT_ROOT_MAX", layout.ROOT_MAX), ("VRIFT_REL_MAX", layout.REL_MAX),
    ("VRIFT_BLOOM_BYTES", layout.BLOOM_BYTES), ("VRIFT_BLOOM_MASK", layout.BLOOM_MASK),
    ("VRIFT_ENTRY_SIZE", layout.ENTRY_SIZE), ("VRIFT_SLOT_SIZE", layout.SLOT_SIZE),
    ("VRIFT_MAX_LOAD_NUM", layout.MAX_LOAD_NUM), ("VRIFT_MAX_LOAD_DEN", layout.MAX_LOAD_DEN),
    ("VRIFT_F_DIRTY", layout.F_DIRTY), ("VRIFT_F_DELETED", layout.F_DELETED),
    ("VRIFT_F_SYMLINK", layout.F_SYMLINK), ("VRIFT_F_DIR", layout.F_DIR),
    ("VRIFT_F_COMPLETE_DIR", layout.F_COMPLETE_DIR), ("VRIFT_H_RETIRED", layout.H_RETIRED), ("VRIFT_H_DEAD", layout.H_DEAD),
    ("VRIFT_HEARTBEAT_STALE_MS", layout.HEARTBEAT_STALE_MS), ("VRIFT_HEARTBEAT_EVERY", layout.HEARTBEAT_EVERY),
    ("VRIFT_RECORD_OFFSET", layout.RECORD_OFFSET), ("VRIFT_RECORD_SIZE", layout.RECORD_SIZE),
])
def test_constants_match_the_c_header(name, value):
    assert native.lib().vrift_layout_constant(name.encode()) == value


def test_unknown_constant_is_reported_as_such():
    assert native.lib().vrift_layout_constant(b"VRIFT_NO_SUCH_THING") == 0xFFFFFFFF


def test_struct_sizes():
    assert layout.HEADER.size <= layout.ROOT_OFFSET
    assert layout.ENTRY.size == layout.ENTRY_SIZE
    assert layout.SLOT.size == layout.SLOT_SIZE
    assert layout.RECORD.size == layout.RECORD_SIZE


@pytest.mark.parametrize("data", [b"", b"a", b"src/main.c", bytes(range(1, 256)), b"\xff\xfe spaces and \x01"])
def test_hash_is_the_same_in_python_and_c(data):
    assert layout.fnv1a64(data) == native.path_hash(data)


def test_fast_entry_packing_equals_entry_pack_entry():
    e = Entry(b"dir/\xffname", 0o100755, 2**63 + 5, 2**64 - 1, 3, 1000, 1001, 2**62, 17,
              -1_500_000_000, 1_700_000_000_999_999_999, bytes(range(32)), layout.F_DIRTY | layout.F_SYMLINK)
    assert pack_entry(e, 0x1234_5678_9ABC_DEF0, 77) == e.pack_entry(0x1234_5678_9ABC_DEF0, 77)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
@pytest.mark.parametrize("source", ["vdir_native.c", "vrift_vdir.h"])
def test_c_sources_compile_without_warnings(source):
    proc = subprocess.run(["gcc", "-x", "c", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                           f"-I{NATIVE}", str(NATIVE / source)], capture_output=True, text=True)
    assert proc.returncode == 0, f"{source}:\n{proc.stderr}"


def test_tool_state_names_agree_between_c_and_python():
    """The preload library writes these straight through; the ingester must never index them."""
    import re
    from pathlib import Path

    from vrift.ingest import TOOL_STATE

    src = (Path(__file__).resolve().parents[2] / "vrift" / "preload" / "write.c").read_text()
    table = re.search(r"tool_state\[\] = \{([^}]*)\}", src).group(1)
    assert tuple(n.encode() for n in re.findall(r'"([^"]+)"', table)) == TOOL_STATE
