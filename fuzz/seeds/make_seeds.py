#!/usr/bin/env python3
"""Builds the fuzz seed corpora (fuzz/corpus/TARGET/) from a capture of real traffic.

Usage: tlpbridge pcap show --json CAPTURE.pcapng | python3 fuzz/seeds/make_seeds.py CAPTURE.pcapng fuzz/corpus

The capture is `tlpbridge run --pcap` over the sim link with the sample device and the
reference root complex running the DMA-copy script (docs/reliability.md, "Seed corpora").
Each seed is a few hundred bytes at most; the capture seeds are its first 4 KiB (a cut file,
as a killed writer leaves it) and its first blocks up to the first TLP record.
"""
import json
import os
import struct
import sys
import zlib


def cobs(data):
    out, block = bytearray(), bytearray()
    for b in data:
        if b == 0:
            out += bytes([len(block) + 1]) + block
            block = bytearray()
        else:
            block.append(b)
            if len(block) == 254:
                out += bytes([255]) + block
                block = bytearray()
    out += bytes([len(block) + 1]) + block
    return bytes(out)


def fpga_frame(body):
    return cobs(body + struct.pack("<I", zlib.crc32(body))) + b"\x00"


def sim_frame(kind, payload):
    return b"TS" + bytes([kind, 0]) + struct.pack("<I", len(payload)) + payload


def vfio(id_, command, reply, payload, error=None):
    flags = (1 if reply else 0) | (0x20 if error is not None else 0)
    return struct.pack("<HHIII", id_, command, 16 + len(payload), flags, error or 0) + payload


def main():
    capture, out = sys.argv[1], sys.argv[2]
    records = [json.loads(line) for line in sys.stdin]

    def write(target, name, data):
        os.makedirs(os.path.join(out, target), exist_ok=True)
        with open(os.path.join(out, target, name), "wb") as f:
            f.write(data)

    tlps, seen = [], set()
    for r in records:
        if r["interface"] == "tlp" and (r["kind"], r["direction"]) not in seen:
            seen.add((r["kind"], r["direction"]))
            tlps.append(bytes.fromhex(r["bytes"]))
    for i, t in enumerate(tlps):
        write("tlp_parse", f"real-{i:02}", t)
        write("fpga_frame", f"real-tlp-{i:02}", bytes([7]) + fpga_frame(bytes([0x02, 0, i]) + t))
        write("sim_frame", f"real-tlp-{i:02}", sim_frame(0x02, struct.pack("<Q", 1000 * i) + t))
    stream = b"".join(fpga_frame(bytes([0x02, 0, i]) + t) for i, t in enumerate(tlps))
    write("fpga_frame", "real-stream", bytes([len(stream) // 2 % 256]) + stream)
    hello = struct.pack("<HBBIHHHHII", 1, 1, 0, 1000, 128, 512, 64, 3, 100, 0)
    write("sim_frame", "hello-time-tlps", sim_frame(0x01, hello) + sim_frame(0x03, struct.pack("<Q", 5))
          + b"".join(sim_frame(0x02, struct.pack("<Q", 7) + t) for t in tlps[:4]) + sim_frame(0x06, b""))
    write("sim_frame", "event-error", sim_frame(0x05, struct.pack("<QB3x", 9, 3))
          + sim_frame(0x07, struct.pack("<HH", 2, 0) + b"bad frame"))
    # DLL operation scripts: sends, deliveries, a damaged frame, drops, time, a reset.
    write("fpga_dll", "handshake-and-traffic", bytes([3] + [40, 41] * 6 + [0, 1, 2, 40, 41, 40, 41] * 8 + [150] * 4))
    write("fpga_dll", "faults", bytes([1] + [40, 41] * 6 + [0, 2, 4, 120, 9, 130, 41, 40, 200, 150, 242, 40, 41] * 6))

    vfio_msgs, seen = [], set()
    for r in records:
        if r["interface"] == "vfio-user":
            key = (r["kind"], r["vfio_user"]["type"])
            if key not in seen:
                seen.add(key)
                vfio_msgs.append((r["kind"], r["vfio_user"]["type"], bytes.fromhex(r["bytes"])))
    for kind, ty, data in vfio_msgs:
        write("vfio_user_message", f"real-{kind.lower()}-{ty}", data)
    replies = {kind: data[16:] for kind, ty, data in vfio_msgs if ty == "reply"}
    commands = {kind: data[16:] for kind, ty, data in vfio_msgs if ty == "command"}
    read_reply = struct.pack("<QII", 0x10, 0, 8) + bytes(range(8))
    answers = (vfio(0, 9, True, read_reply) + vfio(1, 4, True, replies.get("DEVICE_GET_INFO", b""))
               + vfio(2, 5, True, replies.get("DEVICE_GET_REGION_INFO", b""))
               + vfio(3, 6, True, replies.get("DEVICE_GET_IRQ_INFO", b"")))
    write("vfio_user_client", "real-replies", answers)
    write("vfio_user_client", "dma-commands", vfio(7, 11, False, commands.get("DMA_READ", b""))
          + vfio(8, 12, False, commands.get("DMA_WRITE", b"")) + answers)
    write("vfio_user_client", "error-and-unknown-id", vfio(1, 4, True, b"", error=22) + vfio(99, 9, True, read_reply))

    with open(capture, "rb") as f:
        raw = f.read()
    write("capture_read", "real-head-4k", raw[:4096])
    # Section header, interface descriptions and the first few records.
    offset, blocks = 0, 0
    while offset + 12 <= len(raw) and blocks < 8:
        offset += struct.unpack_from("<I", raw, offset + 4)[0]
        blocks += 1
    write("capture_read", "real-first-blocks", raw[:offset])


main()
