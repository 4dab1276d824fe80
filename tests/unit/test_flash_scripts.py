"""The flash gate's Lua scripts, read from chalicelib/adapters/lua/: each keeps the
Redis 7 shebang that decides whether a full state store refuses it (docs/design.md,
section 12), on its first line, where Redis reads flags, also when shared functions
are put in."""
from chalicelib.adapters import flash_gate

# Scripts that add to the store: refused whole when it is full.
REFUSED_WHEN_FULL = ("_ADMIT", "_START", "_RESTORE", "_RESYNC")
# Scripts that give units back, move a record on or lower a gate: run all the same.
EVEN_WHEN_FULL = ("_CONFIRM", "_RELEASE", "_SWEEP", "_SETTLE", "_CAP", "_RETURN")


def test_each_script_keeps_its_flags_on_its_first_line():
    for name in REFUSED_WHEN_FULL:
        assert getattr(flash_gate, name).split("\n", 1)[0] == "#!lua", name
    for name in EVEN_WHEN_FULL:
        assert getattr(flash_gate, name).split("\n", 1)[0] == "#!lua flags=allow-oom", name
    assert not flash_gate._STOP.startswith("#!")
    assert sum(getattr(flash_gate, n).count("#!") for n in REFUSED_WHEN_FULL + EVEN_WHEN_FULL) == 10


def test_shared_functions_come_after_the_shebang():
    for name in ("_ADMIT", "_RELEASE", "_SWEEP"):
        source = getattr(flash_gate, name)
        assert source.index("local function give_back") > source.index("\n")
        assert "local function sweep" in source

