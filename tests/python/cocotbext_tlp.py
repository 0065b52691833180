#!/usr/bin/env python3
"""cocotbext-pcie's TLP model, speaking tlpbridge's JSON field names (docs/tlp-json.md).

This is the independent side of the differential test in tests/tests/cocotbext_diff.rs. It maps
cocotbext-pcie `Tlp` attributes to our field names and formats and does nothing else: every bit of
packing and unpacking is cocotbext-pcie's own.

Modes (one JSON object per output line):

  gen N SEED   N random TLPs of every kind cocotbext-pcie can pack, built from a
               `random.Random(SEED)`: {"hex": <Tlp.pack() as hex>, "fields": {...}}
  unpack       for every hex line on stdin, `Tlp.unpack` of those bytes:
               {"fields": {...}} or {"error": "<exception>"} when cocotbext-pcie cannot unpack it
  msgcodes     cocotbext-pcie's message code table: {"<MsgType name>": <code>, ...}

Exit status 0 on success, 1 when a generated TLP fails cocotbext-pcie's own `check()`, 2 on bad usage.
"""

import contextlib
import json
import random
import sys

from cocotbext.pcie.core.tlp import CplStatus, MsgType, Tlp, TlpAt, TlpAttr, TlpFmt, TlpTc, TlpType
from cocotbext.pcie.core.utils import PcieId

KIND_OF_TYPE = {
    TlpType.MEM_READ: "MRd",
    TlpType.MEM_READ_64: "MRd",
    TlpType.MEM_READ_LOCKED: "MRdLk",
    TlpType.MEM_READ_LOCKED_64: "MRdLk",
    TlpType.MEM_WRITE: "MWr",
    TlpType.MEM_WRITE_64: "MWr",
    TlpType.IO_READ: "IORd",
    TlpType.IO_WRITE: "IOWr",
    TlpType.CFG_READ_0: "CfgRd0",
    TlpType.CFG_WRITE_0: "CfgWr0",
    TlpType.CFG_READ_1: "CfgRd1",
    TlpType.CFG_WRITE_1: "CfgWr1",
    TlpType.CPL: "Cpl",
    TlpType.CPL_DATA: "CplD",
    TlpType.CPL_LOCKED: "CplLk",
    TlpType.CPL_LOCKED_DATA: "CplDLk",
    TlpType.FETCH_ADD: "FetchAdd",
    TlpType.FETCH_ADD_64: "FetchAdd",
    TlpType.SWAP: "Swap",
    TlpType.SWAP_64: "Swap",
    TlpType.CAS: "CAS",
    TlpType.CAS_64: "CAS",
}

ADDRESSED_KINDS = {"MRd", "MRdLk", "MWr", "FetchAdd", "Swap", "CAS"}
IO_KINDS = {"IORd", "IOWr"}
CFG_KINDS = {"CfgRd0", "CfgWr0", "CfgRd1", "CfgWr1"}
CPL_KINDS = {"Cpl", "CplD", "CplLk", "CplDLk"}


def address_hex(address, four_dw):
    """Our `address` format: 8 hex digits for a 3DW header, 16 for a 4DW header."""
    return f"0x{address:016x}" if four_dw else f"0x{address:08x}"


def fields_of(tlp):
    """The cocotbext-pcie TLP's attributes under our JSON field names and types."""
    kind = KIND_OF_TYPE[tlp.fmt_type]
    four_dw = tlp.fmt in (TlpFmt.FOUR_DW, TlpFmt.FOUR_DW_DATA)
    attr = int(tlp.attr)
    fields = {
        "kind": kind,
        "fmt": int(tlp.fmt),
        "type": int(tlp.type),
        "tc": int(tlp.tc),
        "attr": {
            "ro": bool(attr & TlpAttr.RO),
            "ns": bool(attr & TlpAttr.NS),
            "ido": bool(attr & TlpAttr.IDO),
        },
        "ln": bool(tlp.ln),
        "th": bool(tlp.th),
        "td": bool(tlp.td),
        "ep": bool(tlp.ep),
        "at": int(tlp.at),
        "length_dw": int(tlp.length),
    }
    if kind in CPL_KINDS:
        fields.update(
            completer_id=str(tlp.completer_id),
            status=CplStatus(tlp.status).name,
            bcm=bool(tlp.bcm),
            byte_count=int(tlp.byte_count),
            requester_id=str(tlp.requester_id),
            tag=int(tlp.tag),
            lower_address=int(tlp.lower_address),
        )
    else:
        fields.update(
            requester_id=str(tlp.requester_id),
            tag=int(tlp.tag),
            first_be=int(tlp.first_be),
            last_be=int(tlp.last_be),
        )
        if kind in CFG_KINDS:
            fields.update(
                bus=tlp.completer_id.bus,
                device=tlp.completer_id.device,
                function=tlp.completer_id.function,
                register=int(tlp.address),
            )
        elif kind in IO_KINDS:
            fields["address"] = address_hex(tlp.address, False)
            # An I/O request has no PH; show cocotbext's value only if it found bits there, so
            # that a disagreement about address bits [1:0] is visible rather than dropped.
            if tlp.ph:
                fields["ph"] = int(tlp.ph)
        else:
            fields.update(address=address_hex(tlp.address, four_dw), ph=int(tlp.ph))
    if tlp.has_data() or len(tlp.data) > 0:
        fields["payload"] = bytes(tlp.data).hex()
    return fields


# ---- random TLPs, each valid by the spec and within what cocotbext-pcie represents ----------------


def random_id(rng):
    return PcieId.from_int(rng.getrandbits(16))


def random_length_dw(rng, max_dw):
    """Mostly short TLPs, some up to the maximum, including exactly the maximum."""
    r = rng.random()
    if r < 0.05:
        return max_dw
    if r < 0.5:
        return rng.randint(1, min(4, max_dw))
    if r < 0.85:
        return rng.randint(1, min(64, max_dw))
    return rng.randint(1, max_dw)


def random_data(rng, length_dw):
    return bytearray(rng.getrandbits(8) for _ in range(length_dw * 4))


def random_byte_enables(rng, length_dw, address):
    """First/Last DW BE that obey §2.2.5 for this length and address."""
    if length_dw == 1:
        return rng.randrange(16), 0
    if length_dw == 2 and address % 8 == 0:
        # Non-contiguous enables are allowed for a QW-aligned 2-DW request.
        return rng.randrange(1, 16), rng.randrange(1, 16)
    return rng.choice((0xF, 0xE, 0xC, 0x8)), rng.choice((0x1, 0x3, 0x7, 0xF))


def random_memory_address(rng, size_bytes, four_dw, align=4):
    """An address whose request of `size_bytes` does not cross a 4 KiB boundary, >= 4 GiB exactly
    when the header is 4DW (§2.2.4.1: addresses below 4 GiB must use the 3DW format)."""
    offset = rng.randrange(0, 0x1000 - size_bytes + 1)
    offset -= offset % align
    page = rng.randrange(1 << 20, 1 << 52) if four_dw else rng.randrange(0, 1 << 20)
    return (page << 12) | offset


def random_header_bits(rng, tlp, *, tc_attr=True):
    if tc_attr:
        tlp.tc = TlpTc(rng.randrange(8))
        tlp.attr = TlpAttr(rng.getrandbits(3))
    tlp.requester_id = random_id(rng)
    tlp.tag = rng.randrange(1024)


def random_processing_hint(rng, tlp):
    tlp.th = rng.random() < 0.3
    tlp.ph = rng.randrange(4) if tlp.th else 0


def make_memory(rng, kind):
    tlp = Tlp()
    four_dw = rng.random() < 0.5
    tlp.fmt_type = {
        ("MRd", False): TlpType.MEM_READ,
        ("MRd", True): TlpType.MEM_READ_64,
        ("MRdLk", False): TlpType.MEM_READ_LOCKED,
        ("MRdLk", True): TlpType.MEM_READ_LOCKED_64,
        ("MWr", False): TlpType.MEM_WRITE,
        ("MWr", True): TlpType.MEM_WRITE_64,
    }[(kind, four_dw)]
    random_header_bits(rng, tlp)
    tlp.length = random_length_dw(rng, 1024)
    tlp.address = random_memory_address(rng, tlp.length * 4, four_dw)
    tlp.first_be, tlp.last_be = random_byte_enables(rng, tlp.length, tlp.address)
    if kind != "MRdLk":
        tlp.ln = rng.random() < 0.2
        random_processing_hint(rng, tlp)
        tlp.at = rng.choice((TlpAt.DEFAULT, TlpAt.TRANSLATED))
    if kind == "MWr":
        tlp.data = random_data(rng, tlp.length)
        tlp.ep = rng.random() < 0.1
    return tlp


def make_io(rng, kind):
    tlp = Tlp()
    tlp.fmt_type = TlpType.IO_WRITE if kind == "IOWr" else TlpType.IO_READ
    # §2.2.7: I/O requests have TC 0, Attr 0, Length 1, Last BE 0.
    random_header_bits(rng, tlp, tc_attr=False)
    tlp.length = 1
    tlp.first_be = rng.randrange(1, 16)
    tlp.last_be = 0
    tlp.address = rng.getrandbits(32) & ~3
    if kind == "IOWr":
        tlp.data = random_data(rng, 1)
        tlp.ep = rng.random() < 0.1
    return tlp


def make_config(rng, kind):
    tlp = Tlp()
    tlp.fmt_type = {
        "CfgRd0": TlpType.CFG_READ_0,
        "CfgWr0": TlpType.CFG_WRITE_0,
        "CfgRd1": TlpType.CFG_READ_1,
        "CfgWr1": TlpType.CFG_WRITE_1,
    }[kind]
    # §2.2.7: configuration requests have TC 0, Attr 0, Length 1, Last BE 0.
    random_header_bits(rng, tlp, tc_attr=False)
    tlp.length = 1
    tlp.first_be = rng.randrange(1, 16)
    tlp.last_be = 0
    tlp.completer_id = random_id(rng)  # the target bus/device/function
    tlp.address = rng.randrange(1024) * 4  # register byte offset, extended register number included
    if kind.startswith("CfgWr"):
        tlp.data = random_data(rng, 1)
        tlp.ep = rng.random() < 0.1
    return tlp


def make_completion(rng, kind):
    tlp = Tlp()
    tlp.fmt_type = {
        "Cpl": TlpType.CPL,
        "CplD": TlpType.CPL_DATA,
        "CplLk": TlpType.CPL_LOCKED,
        "CplDLk": TlpType.CPL_LOCKED_DATA,
    }[kind]
    random_header_bits(rng, tlp)
    tlp.completer_id = random_id(rng)
    tlp.lower_address = rng.randrange(128)
    tlp.bcm = rng.random() < 0.1
    if kind in ("CplD", "CplDLk"):
        # §2.2.9: a completion with data has status SC, and its payload fits within
        # Lower Address[1:0] + Byte Count rounded up to whole DWs.
        tlp.status = CplStatus.SC
        tlp.length = random_length_dw(rng, 1024)
        tlp.data = random_data(rng, tlp.length)
        tlp.ep = rng.random() < 0.1
        low = max(1, tlp.length * 4 - (tlp.lower_address & 3) - 3)
        tlp.byte_count = rng.randint(low, 4096)
    else:
        tlp.status = rng.choice((CplStatus.SC, CplStatus.UR, CplStatus.CRS, CplStatus.CA))
        tlp.length = 0
        if tlp.status in (CplStatus.SC, CplStatus.CRS):
            # §2.2.9: a successful (or retry) completion without data answers an I/O or
            # configuration write: Byte Count 4, Lower Address 0.
            tlp.byte_count = 4
            tlp.lower_address = 0
        else:
            tlp.byte_count = rng.randint(1, 4096)
    if kind in ("Cpl", "CplD"):
        tlp.ln = rng.random() < 0.2
    return tlp


def make_atomic(rng, kind):
    tlp = Tlp()
    four_dw = rng.random() < 0.5
    tlp.fmt_type = {
        ("FetchAdd", False): TlpType.FETCH_ADD,
        ("FetchAdd", True): TlpType.FETCH_ADD_64,
        ("Swap", False): TlpType.SWAP,
        ("Swap", True): TlpType.SWAP_64,
        ("CAS", False): TlpType.CAS,
        ("CAS", True): TlpType.CAS_64,
    }[(kind, four_dw)]
    random_header_bits(rng, tlp)
    # §6.15: FetchAdd/Swap carry one 32- or 64-bit operand, CAS two of 32, 64 or 128 bits; the
    # address is naturally aligned to the operand size.
    operand_bytes = rng.choice((4, 8, 16)) if kind == "CAS" else rng.choice((4, 8))
    payload_bytes = operand_bytes * 2 if kind == "CAS" else operand_bytes
    tlp.length = payload_bytes // 4
    tlp.address = random_memory_address(rng, payload_bytes, four_dw, align=operand_bytes)
    random_processing_hint(rng, tlp)
    # §2.2.7.1: an AtomicOp's byte-enable fields are reserved, or carry ST[7:0] when TH is set.
    if tlp.th:
        tlp.first_be, tlp.last_be = rng.randrange(16), rng.randrange(16)
    tlp.at = rng.choice((TlpAt.DEFAULT, TlpAt.TRANSLATED))
    tlp.data = random_data(rng, tlp.length)
    tlp.ep = rng.random() < 0.1
    return tlp


MAKERS = [
    ("MRd", make_memory),
    ("MRdLk", make_memory),
    ("MWr", make_memory),
    ("IORd", make_io),
    ("IOWr", make_io),
    ("CfgRd0", make_config),
    ("CfgWr0", make_config),
    ("CfgRd1", make_config),
    ("CfgWr1", make_config),
    ("Cpl", make_completion),
    ("CplD", make_completion),
    ("CplLk", make_completion),
    ("CplDLk", make_completion),
    ("FetchAdd", make_atomic),
    ("Swap", make_atomic),
    ("CAS", make_atomic),
]


def cocotbext_check(tlp):
    """cocotbext-pcie's own validation; its messages go to stderr, not into our JSON lines."""
    with contextlib.redirect_stdout(sys.stderr):
        return tlp.check()


def gen(count, seed):
    rng = random.Random(seed)
    for kind, make in MAKERS:
        for _ in range(count):
            tlp = make(rng, kind)
            if not cocotbext_check(tlp):
                print(f"generated {kind} fails cocotbext-pcie's check(): {tlp!r}", file=sys.stderr)
                return 1
            print(json.dumps({"hex": bytes(tlp.pack()).hex(), "fields": fields_of(tlp)}))
    return 0


def unpack(lines):
    for line in lines:
        text = "".join(line.split())
        if not text:
            continue
        try:
            fields = fields_of(Tlp.unpack(bytes.fromhex(text)))
        except Exception as exc:  # report, per line, anything cocotbext-pcie cannot unpack
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        else:
            print(json.dumps({"fields": fields}))
        sys.stdout.flush()
    return 0


def msgcodes():
    print(json.dumps({code.name: int(code) for code in MsgType}))
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "gen":
        return gen(int(argv[2]), int(argv[3]))
    if len(argv) == 2 and argv[1] == "unpack":
        return unpack(sys.stdin)
    if len(argv) == 2 and argv[1] == "msgcodes":
        return msgcodes()
    print(f"usage: {argv[0]} gen N SEED | unpack | msgcodes", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
