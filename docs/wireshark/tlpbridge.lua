-- Wireshark dissector for tlpbridge captures (tlpbridge run --pcap FILE).
--
-- Interface 0 of a tlpbridge capture is LINKTYPE_USER0 (147): one TLP per record behind a 16-byte
-- pseudo-header. Interface 1 is LINKTYPE_USER1 (148): one vfio-user message per record behind an
-- 8-byte pseudo-header. Layouts: docs/capture-format.md. Install: docs/wireshark/README.md.
--
-- Decodes the pseudo-headers, every TLP kind and field (Completion Status: SC 0, UR 1, CRS 2,
-- CA 4), marks malformed TLPs, matches completions to requests by (direction, Requester ID, Tag)
-- with latency on the link clock, and matches vfio-user replies to commands by (socket, id).
-- The matching rules are the ones `tlpbridge pcap show` uses, so both agree field by field.

local tlpbridge = Proto("tlpbridge", "tlpbridge TLP record")
local vfu = Proto("tlpbridge_vfu", "tlpbridge vfio-user record")

-- Integer helpers on plain Lua numbers (exact for 32-bit values), independent of which bit
-- library this Wireshark's Lua has.
local function bits(value, hi, lo)
    return math.floor(value / 2 ^ lo) % 2 ^ (hi - lo + 1)
end

local function bit_set(value, n)
    return bits(value, n, n) == 1
end

local function routing_id(v)
    return string.format("%02x:%02x.%x", bits(v, 15, 8), bits(v, 7, 3), bits(v, 2, 0))
end

-- ---------------------------------------------------------------------------------------------
-- Fields
-- ---------------------------------------------------------------------------------------------

local direction_names = { [1] = "in (to the bridge)", [2] = "out (from the bridge)" }
local status_names = { [0] = "SC", [1] = "UR", [2] = "CRS", [4] = "CA" }
local routing_names = {
    [0] = "to-rc", [1] = "by-addr", [2] = "by-id", [3] = "broadcast", [4] = "local", [5] = "gather",
}
local message_names = {
    [0x00] = "Unlock", [0x01] = "Invalidate_Request", [0x02] = "Invalidate_Completion",
    [0x04] = "Page_Request", [0x05] = "PRG_Response", [0x10] = "LTR", [0x12] = "OBFF",
    [0x14] = "PM_Active_State_Nak", [0x18] = "PM_PME", [0x19] = "PME_Turn_Off", [0x1b] = "PME_TO_Ack",
    [0x20] = "Assert_INTA", [0x21] = "Assert_INTB", [0x22] = "Assert_INTC", [0x23] = "Assert_INTD",
    [0x24] = "Deassert_INTA", [0x25] = "Deassert_INTB", [0x26] = "Deassert_INTC",
    [0x27] = "Deassert_INTD", [0x30] = "ERR_COR", [0x31] = "ERR_NONFATAL", [0x33] = "ERR_FATAL",
    [0x50] = "Set_Slot_Power_Limit", [0x52] = "PTM_Request", [0x53] = "PTM_Response",
    [0x7e] = "Vendor_Defined_Type0", [0x7f] = "Vendor_Defined_Type1",
}

local F = {
    version = ProtoField.uint8("tlpbridge.version", "Format version", base.DEC),
    header_len = ProtoField.uint8("tlpbridge.header_len", "Pseudo-header length", base.DEC),
    direction = ProtoField.uint8("tlpbridge.direction", "Direction", base.DEC, direction_names),
    dir = ProtoField.string("tlpbridge.dir", "Direction name"),
    link_id = ProtoField.uint8("tlpbridge.link_id", "Link id", base.DEC),
    flags = ProtoField.uint16("tlpbridge.flags", "Flags", base.HEX),
    malformed = ProtoField.bool("tlpbridge.flags.malformed", "Malformed (dropped by the bridge)", 16, nil, 0x0001),
    poisoned = ProtoField.bool("tlpbridge.flags.poisoned", "Poisoned (EP)", 16, nil, 0x0002),
    retransmitted = ProtoField.bool("tlpbridge.flags.retransmitted", "Retransmitted", 16, nil, 0x0004),
    simulated = ProtoField.bool("tlpbridge.flags.simulated_time", "Link time is simulated", 16, nil, 0x0008),
    link_time = ProtoField.uint64("tlpbridge.link_time", "Link time (ps)", base.DEC),

    prefix = ProtoField.uint32("tlpbridge.tlp.prefix", "TLP prefix", base.HEX),
    fmt = ProtoField.uint8("tlpbridge.tlp.fmt", "Fmt", base.DEC),
    type = ProtoField.uint8("tlpbridge.tlp.type", "Type", base.HEX),
    kind = ProtoField.string("tlpbridge.tlp.kind", "Kind"),
    tc = ProtoField.uint8("tlpbridge.tlp.tc", "Traffic Class", base.DEC),
    ido = ProtoField.bool("tlpbridge.tlp.ido", "ID-Based Ordering"),
    ro = ProtoField.bool("tlpbridge.tlp.ro", "Relaxed Ordering"),
    ns = ProtoField.bool("tlpbridge.tlp.ns", "No Snoop"),
    ln = ProtoField.bool("tlpbridge.tlp.ln", "Lightweight Notification"),
    th = ProtoField.bool("tlpbridge.tlp.th", "TLP Hints"),
    td = ProtoField.bool("tlpbridge.tlp.td", "TLP Digest present"),
    ep = ProtoField.bool("tlpbridge.tlp.ep", "Poisoned (EP)"),
    at = ProtoField.uint8("tlpbridge.tlp.at", "Address Type", base.DEC),
    length = ProtoField.uint16("tlpbridge.tlp.length", "Length (DW)", base.DEC),
    requester = ProtoField.string("tlpbridge.tlp.requester", "Requester ID"),
    tag = ProtoField.uint16("tlpbridge.tlp.tag", "Tag", base.HEX),
    first_be = ProtoField.uint8("tlpbridge.tlp.first_be", "First DW BE", base.HEX),
    last_be = ProtoField.uint8("tlpbridge.tlp.last_be", "Last DW BE", base.HEX),
    address = ProtoField.uint64("tlpbridge.tlp.address", "Address", base.HEX),
    ph = ProtoField.uint8("tlpbridge.tlp.ph", "Processing Hint", base.DEC),
    target = ProtoField.string("tlpbridge.tlp.target", "Config target (bus:dev.fn)"),
    register = ProtoField.uint16("tlpbridge.tlp.register", "Config register", base.HEX),
    completer = ProtoField.string("tlpbridge.tlp.completer", "Completer ID"),
    status = ProtoField.uint8("tlpbridge.tlp.status", "Completion Status", base.DEC, status_names),
    status_name = ProtoField.string("tlpbridge.tlp.status_name", "Completion Status name"),
    bcm = ProtoField.bool("tlpbridge.tlp.bcm", "Byte Count Modified"),
    byte_count = ProtoField.uint16("tlpbridge.tlp.byte_count", "Byte Count", base.DEC),
    lower_address = ProtoField.uint8("tlpbridge.tlp.lower_address", "Lower Address", base.HEX),
    msg_code = ProtoField.uint8("tlpbridge.tlp.msg_code", "Message Code", base.HEX, message_names),
    msg_routing = ProtoField.string("tlpbridge.tlp.msg_routing", "Message routing"),
    msg_fields = ProtoField.bytes("tlpbridge.tlp.msg_fields", "Message header bytes 8..16"),
    payload = ProtoField.bytes("tlpbridge.tlp.payload", "Data payload"),
    digest = ProtoField.uint32("tlpbridge.tlp.digest", "ECRC digest", base.HEX),
    request_in = ProtoField.framenum("tlpbridge.request_in", "Request in frame", base.NONE, frametype.REQUEST),
    latency = ProtoField.uint64("tlpbridge.latency_ns", "Latency since the request (ns, link clock)", base.DEC),
}
tlpbridge.fields = F

local E = {
    malformed = ProtoExpert.new("tlpbridge.malformed.expert", "Malformed TLP",
        expert.group.MALFORMED, expert.severity.ERROR),
    poisoned = ProtoExpert.new("tlpbridge.poisoned.expert", "Poisoned TLP",
        expert.group.PROTOCOL, expert.severity.WARN),
}
tlpbridge.experts = { E.malformed, E.poisoned }

local command_names = {
    [1] = "VERSION", [2] = "DMA_MAP", [3] = "DMA_UNMAP", [4] = "DEVICE_GET_INFO",
    [5] = "DEVICE_GET_REGION_INFO", [6] = "DEVICE_GET_REGION_IO_FDS", [7] = "DEVICE_GET_IRQ_INFO",
    [8] = "DEVICE_SET_IRQS", [9] = "REGION_READ", [10] = "REGION_WRITE", [11] = "DMA_READ",
    [12] = "DMA_WRITE", [13] = "DEVICE_RESET", [14] = "DIRTY_PAGES", [15] = "REGION_WRITE_MULTI",
    [16] = "DEVICE_FEATURE", [17] = "MIG_DATA_READ", [18] = "MIG_DATA_WRITE",
}

local V = {
    version = ProtoField.uint8("tlpbridge_vfu.version", "Format version", base.DEC),
    header_len = ProtoField.uint8("tlpbridge_vfu.header_len", "Pseudo-header length", base.DEC),
    direction = ProtoField.uint8("tlpbridge_vfu.direction", "Direction", base.DEC,
        { [1] = "in (server to bridge)", [2] = "out (bridge to server)" }),
    dir = ProtoField.string("tlpbridge_vfu.dir", "Direction name"),
    socket = ProtoField.string("tlpbridge_vfu.socket", "Socket"),
    fds = ProtoField.uint8("tlpbridge_vfu.fds", "File descriptors passed (not captured)", base.DEC),
    id = ProtoField.uint16("tlpbridge_vfu.id", "Message id", base.DEC),
    command = ProtoField.uint16("tlpbridge_vfu.command", "Command", base.DEC, command_names),
    command_name = ProtoField.string("tlpbridge_vfu.command_name", "Command name"),
    size = ProtoField.uint32("tlpbridge_vfu.size", "Message size", base.DEC),
    flags = ProtoField.uint32("tlpbridge_vfu.flags", "Flags", base.HEX),
    type = ProtoField.string("tlpbridge_vfu.type", "Message type"),
    no_reply = ProtoField.bool("tlpbridge_vfu.no_reply", "No reply wanted"),
    error = ProtoField.uint32("tlpbridge_vfu.error", "Error (errno)", base.DEC),
    region = ProtoField.uint32("tlpbridge_vfu.region", "Region", base.DEC),
    offset = ProtoField.uint64("tlpbridge_vfu.offset", "Offset", base.HEX),
    count = ProtoField.uint64("tlpbridge_vfu.count", "Count", base.DEC),
    address = ProtoField.uint64("tlpbridge_vfu.address", "DMA address", base.HEX),
    data = ProtoField.bytes("tlpbridge_vfu.data", "Payload"),
    request_in = ProtoField.framenum("tlpbridge_vfu.request_in", "Command in frame", base.NONE, frametype.REQUEST),
    latency = ProtoField.uint64("tlpbridge_vfu.latency_ns", "Latency since the command (ns, capture clock)", base.DEC),
}
vfu.fields = V

local VE = {
    malformed = ProtoExpert.new("tlpbridge_vfu.malformed.expert", "Malformed vfio-user message",
        expert.group.MALFORMED, expert.severity.ERROR),
}
vfu.experts = { VE.malformed }

local f_frame_time = Field.new("frame.time_epoch")

-- ---------------------------------------------------------------------------------------------
-- Matching state (first pass fills it in frame order; later passes read `matches`)
-- ---------------------------------------------------------------------------------------------

local outstanding = {}   -- "dir requester tag" -> { frame, time (UInt64 ps) }
local matches = {}       -- frame -> { request frame, latency (UInt64 ns) }
local vfu_outstanding = {} -- "socket dir id" -> { frame, secs, nsecs }
local vfu_matches = {}     -- frame -> { command frame, latency ns }

function tlpbridge.init()
    outstanding, matches = {}, {}
end

function vfu.init()
    vfu_outstanding, vfu_matches = {}, {}
end

-- ---------------------------------------------------------------------------------------------
-- TLP
-- ---------------------------------------------------------------------------------------------

-- Kind name from Fmt and Type, as tlp::Tlp::kind_name names it; nil for reserved encodings.
local function kind_of(fmt, typ)
    local data = fmt == 2 or fmt == 3
    if typ == 0x00 then return data and "MWr" or "MRd", data end
    if typ == 0x01 and not data then return "MRdLk", data end
    if typ == 0x02 and fmt == 0 then return "IORd", data end
    if typ == 0x02 and fmt == 2 then return "IOWr", data end
    if typ == 0x04 and fmt == 0 then return "CfgRd0", data end
    if typ == 0x04 and fmt == 2 then return "CfgWr0", data end
    if typ == 0x05 and fmt == 0 then return "CfgRd1", data end
    if typ == 0x05 and fmt == 2 then return "CfgWr1", data end
    if typ == 0x0a and fmt == 0 then return "Cpl", data end
    if typ == 0x0a and fmt == 2 then return "CplD", data end
    if typ == 0x0b and fmt == 0 then return "CplLk", data end
    if typ == 0x0b and fmt == 2 then return "CplDLk", data end
    if typ >= 0x10 and typ <= 0x15 and fmt == 1 then return "Msg", data end
    if typ >= 0x10 and typ <= 0x15 and fmt == 3 then return "MsgD", data end
    if typ == 0x0c and data then return "FetchAdd", data end
    if typ == 0x0d and data then return "Swap", data end
    if typ == 0x0e and data then return "CAS", data end
    return nil, data
end

local non_posted = {
    MRd = true, MRdLk = true, IORd = true, IOWr = true, CfgRd0 = true, CfgWr0 = true,
    CfgRd1 = true, CfgWr1 = true, FetchAdd = true, Swap = true, CAS = true,
}

local function opposite(dir)
    return dir == 1 and 2 or 1
end

local function malformed(tree, pinfo, text)
    tree:add_proto_expert_info(E.malformed, text)
    pinfo.cols.info:append(" [Malformed: " .. text .. "]")
end

-- Decodes the TLP in `tvb` from `at`; returns nothing. `hdr` has direction, link_time, frame.
local function dissect_tlp(tvb, pinfo, tree, at, hdr)
    local total = tvb:len()
    -- TLP prefixes: DWs with Fmt = 100b.
    while at + 4 <= total and bits(tvb(at, 1):uint(), 7, 5) == 4 do
        tree:add(F.prefix, tvb(at, 4))
        at = at + 4
    end
    if at + 4 > total then
        malformed(tree, pinfo, "shorter than a TLP header DW")
        return
    end
    local dw0 = tvb(at, 4):uint()
    local fmt, typ = bits(dw0, 31, 29), bits(dw0, 28, 24)
    local kind, has_data = kind_of(fmt, typ)
    local four_dw = fmt == 1 or fmt == 3
    local header_len = four_dw and 16 or 12
    local t = tree:add(tlpbridge, tvb(at), "TLP: " .. (kind or "reserved Fmt/Type"))
    t:add(F.fmt, tvb(at, 1), fmt)
    t:add(F.type, tvb(at, 1), typ)
    if not kind then
        malformed(t, pinfo, string.format("reserved Fmt/Type %d/0x%02x", fmt, typ))
        return
    end
    t:add(F.kind, tvb(at, 1), kind)
    if at + header_len > total then
        malformed(t, pinfo, string.format("%s needs a %d-byte header, %d bytes present", kind, header_len, total - at))
        return
    end
    local length_raw = bits(dw0, 9, 0)
    local is_cpl = kind:sub(1, 3) == "Cpl"
    local is_msg = kind:sub(1, 3) == "Msg"
    -- Length is a DW count (0 = 1024) except for Cpl/CplLk/Msg, where it is reserved: raw value.
    local length = length_raw
    if has_data or not (is_cpl or is_msg) then
        if length_raw == 0 then length = 1024 end
    end
    t:add(F.tc, tvb(at + 1, 1), bits(dw0, 22, 20))
    t:add(F.ido, tvb(at + 1, 1), bit_set(dw0, 18))
    t:add(F.ln, tvb(at + 1, 1), bit_set(dw0, 17))
    t:add(F.th, tvb(at + 1, 1), bit_set(dw0, 16))
    t:add(F.td, tvb(at + 2, 1), bit_set(dw0, 15))
    local ep = bit_set(dw0, 14)
    t:add(F.ep, tvb(at + 2, 1), ep)
    if ep then t:add_proto_expert_info(E.poisoned) end
    t:add(F.ro, tvb(at + 2, 1), bit_set(dw0, 13))
    t:add(F.ns, tvb(at + 2, 1), bit_set(dw0, 12))
    t:add(F.at, tvb(at + 2, 1), bits(dw0, 11, 10))
    t:add(F.length, tvb(at + 2, 2), length)
    local tag_high = bits(dw0, 23, 23) * 512 + bits(dw0, 19, 19) * 256

    local requester, tag
    local info = kind
    if is_cpl then
        local completer = routing_id(tvb(at + 4, 2):uint())
        local dw1 = tvb(at + 4, 4):uint()
        local status = bits(dw1, 15, 13)
        local byte_count = bits(dw1, 11, 0)
        if byte_count == 0 then byte_count = 4096 end
        requester = routing_id(tvb(at + 8, 2):uint())
        tag = tag_high + tvb(at + 10, 1):uint()
        local lower = bits(tvb(at + 11, 1):uint(), 6, 0)
        t:add(F.completer, tvb(at + 4, 2), completer)
        t:add(F.status, tvb(at + 6, 1), status)
        local sname = status_names[status] or string.format("Reserved(%d)", status)
        t:add(F.status_name, tvb(at + 6, 1), sname)
        t:add(F.bcm, tvb(at + 6, 1), bit_set(dw1, 12))
        t:add(F.byte_count, tvb(at + 6, 2), byte_count)
        t:add(F.requester, tvb(at + 8, 2), requester)
        t:add(F.tag, tvb(at + 10, 1), tag)
        t:add(F.lower_address, tvb(at + 11, 1), lower)
        info = string.format("%s %s→%s tag=0x%x %s bc=%d la=0x%x", kind, completer, requester, tag, sname,
            byte_count, lower)
        -- Match to the request sent the other way; the last completion ends it.
        if not pinfo.visited then
            local key = string.format("%d %s %d", opposite(hdr.direction), requester, tag)
            local request = outstanding[key]
            if request then
                local latency = UInt64(0)
                if hdr.link_time >= request.time then
                    latency = (hdr.link_time - request.time) / 1000
                end
                matches[hdr.frame] = { request.frame, latency }
            end
            local final = status ~= 0 or not has_data
                or length * 4 >= math.floor((lower % 4 + byte_count + 3) / 4) * 4
            if final then outstanding[key] = nil end
        end
    else
        requester = routing_id(tvb(at + 4, 2):uint())
        tag = tag_high + tvb(at + 6, 1):uint()
        t:add(F.requester, tvb(at + 4, 2), requester)
        t:add(F.tag, tvb(at + 6, 1), tag)
        if is_msg then
            local code = tvb(at + 7, 1):uint()
            local routing = typ - 0x10
            t:add(F.msg_code, tvb(at + 7, 1), code)
            t:add(F.msg_routing, tvb(at, 1), routing_names[routing])
            t:add(F.msg_fields, tvb(at + 8, 8))
            if routing == 1 then
                t:add(F.address, tvb(at + 8, 8), tvb(at + 8, 8):uint64())
            end
            info = string.format("%s %s %s", kind, message_names[code] or string.format("code 0x%02x", code),
                routing_names[routing])
        else
            local be = tvb(at + 7, 1):uint()
            t:add(F.last_be, tvb(at + 7, 1), bits(be, 7, 4))
            t:add(F.first_be, tvb(at + 7, 1), bits(be, 3, 0))
            if kind:sub(1, 3) == "Cfg" then
                local b9 = tvb(at + 9, 1):uint()
                local target = string.format("%02x:%02x.%x", tvb(at + 8, 1):uint(), bits(b9, 7, 3), bits(b9, 2, 0))
                local register = bits(tvb(at + 10, 1):uint(), 3, 0) * 256 + bits(tvb(at + 11, 1):uint(), 7, 2) * 4
                t:add(F.target, tvb(at + 8, 2), target)
                t:add(F.register, tvb(at + 10, 2), register)
                info = string.format("%s %s tag=0x%x %s reg=0x%03x", kind, requester, tag, target, register)
            else
                local address, ph
                if four_dw then
                    local raw = tvb(at + 8, 8):uint64()
                    ph = bits(tvb(at + 15, 1):uint(), 1, 0)
                    address = raw - ph
                    t:add(F.address, tvb(at + 8, 8), address)
                else
                    local raw = tvb(at + 8, 4):uint()
                    ph = bits(raw, 1, 0)
                    address = UInt64(raw - ph)
                    t:add(F.address, tvb(at + 8, 4), address)
                end
                if kind:sub(1, 2) ~= "IO" then
                    t:add(F.ph, tvb(at + header_len - 1, 1), ph)
                end
                info = string.format("%s %s tag=0x%x addr=0x%s len=%d", kind, requester, tag,
                    address:tohex():gsub("^0+(.)", "%1"), length)
            end
        end
        if non_posted[kind] and not pinfo.visited then
            outstanding[string.format("%d %s %d", hdr.direction, requester, tag)] =
                { frame = hdr.frame, time = hdr.link_time }
        end
    end

    local body = at + header_len
    if has_data then
        local bytes = length * 4
        if body + bytes > total then
            malformed(t, pinfo, string.format("Length %d DW but %d payload bytes", length, total - body))
            return
        end
        t:add(F.payload, tvb(body, bytes))
        body = body + bytes
    end
    if bit_set(dw0, 15) then
        if body + 4 > total then
            malformed(t, pinfo, "TD set but no ECRC digest")
            return
        end
        t:add(F.digest, tvb(body, 4))
        body = body + 4
    end
    if body ~= total then
        malformed(t, pinfo, string.format("%d bytes after the TLP", total - body))
    end

    local m = matches[hdr.frame]
    if m then
        local r = t:add(F.request_in, m[1])
        r:set_generated()
        local l = t:add(F.latency, m[2])
        l:set_generated()
        info = info .. string.format(" [request in %d, %s ns]", m[1], tostring(m[2]))
    end
    pinfo.cols.info:set(info)
end

function tlpbridge.dissector(tvb, pinfo, tree)
    pinfo.cols.protocol:set("TLP")
    local root = tree:add(tlpbridge, tvb(), "tlpbridge TLP record")
    if tvb:len() < 16 then
        malformed(root, pinfo, "shorter than the 16-byte pseudo-header")
        return
    end
    local version = tvb(0, 1):uint()
    local header_len = tvb(1, 1):uint()
    root:add(F.version, tvb(0, 1))
    root:add(F.header_len, tvb(1, 1))
    if version ~= 1 or header_len < 16 or header_len > tvb:len() then
        malformed(root, pinfo, string.format("pseudo-header version %d length %d", version, header_len))
        return
    end
    local direction = tvb(2, 1):uint()
    root:add(F.direction, tvb(2, 1))
    root:add(F.dir, tvb(2, 1), direction == 1 and "in" or (direction == 2 and "out" or "?"))
    root:add(F.link_id, tvb(3, 1))
    local flags_tree = root:add(F.flags, tvb(4, 2))
    flags_tree:add(F.malformed, tvb(4, 2))
    flags_tree:add(F.poisoned, tvb(4, 2))
    flags_tree:add(F.retransmitted, tvb(4, 2))
    flags_tree:add(F.simulated, tvb(4, 2))
    local link_time = tvb(8, 8):uint64()
    root:add(F.link_time, tvb(8, 8))
    local flags = tvb(4, 2):uint()
    pinfo.cols.src:set(direction == 1 and "root port" or "bridge")
    pinfo.cols.dst:set(direction == 1 and "bridge" or "root port")
    local hdr = { direction = direction, link_time = link_time, frame = pinfo.number }
    dissect_tlp(tvb, pinfo, root, header_len, hdr)
    if bit_set(flags, 0) then
        malformed(root, pinfo, "the bridge rejected this TLP")
    end
end

-- ---------------------------------------------------------------------------------------------
-- vfio-user
-- ---------------------------------------------------------------------------------------------

function vfu.dissector(tvb, pinfo, tree)
    pinfo.cols.protocol:set("vfio-user")
    local root = tree:add(vfu, tvb(), "tlpbridge vfio-user record")
    if tvb:len() < 8 then
        root:add_proto_expert_info(VE.malformed, "shorter than the 8-byte pseudo-header")
        return
    end
    local version, header_len = tvb(0, 1):uint(), tvb(1, 1):uint()
    root:add(V.version, tvb(0, 1))
    root:add(V.header_len, tvb(1, 1))
    if version ~= 1 or header_len < 8 or header_len > tvb:len() then
        root:add_proto_expert_info(VE.malformed, "unknown pseudo-header version or length")
        return
    end
    local direction = tvb(2, 1):uint()
    local socket = tvb(3, 1):uint() == 1 and "twin" or "main"
    root:add(V.direction, tvb(2, 1))
    root:add(V.dir, tvb(2, 1), direction == 1 and "in" or (direction == 2 and "out" or "?"))
    root:add(V.socket, tvb(3, 1), socket)
    root:add(V.fds, tvb(4, 1))
    pinfo.cols.src:set(direction == 1 and "server" or "bridge")
    pinfo.cols.dst:set(direction == 1 and "bridge" or "server")
    local at = header_len
    if tvb:len() - at < 16 then
        root:add_proto_expert_info(VE.malformed, "shorter than the 16-byte vfio-user header")
        return
    end
    local id = tvb(at, 2):le_uint()
    local command = tvb(at + 2, 2):le_uint()
    local size = tvb(at + 4, 4):le_uint()
    local flags = tvb(at + 8, 4):le_uint()
    local msg_type = bits(flags, 3, 0)
    local name = command_names[command] or string.format("UNKNOWN(%d)", command)
    local m = root:add(vfu, tvb(at), "vfio-user " .. name)
    m:add_le(V.id, tvb(at, 2))
    m:add_le(V.command, tvb(at + 2, 2))
    m:add(V.command_name, tvb(at + 2, 2), name)
    m:add_le(V.size, tvb(at + 4, 4))
    m:add_le(V.flags, tvb(at + 8, 4))
    if msg_type > 1 then
        m:add_proto_expert_info(VE.malformed, string.format("message type %d is neither command nor reply", msg_type))
        return
    end
    local type_name = msg_type == 0 and "command" or "reply"
    m:add(V.type, tvb(at + 8, 1), type_name)
    local no_reply = bit_set(flags, 4)
    m:add(V.no_reply, tvb(at + 8, 1), no_reply)
    local has_error = bit_set(flags, 5)
    if has_error then m:add_le(V.error, tvb(at + 12, 4)) end
    local info = string.format("%s %s id=%d size=%d", name, type_name, id, size)
    local payload = at + 16
    local rest = tvb:len() - payload
    if not has_error and rest >= 16 then
        if command == 9 or command == 10 then
            m:add_le(V.offset, tvb(payload, 8))
            m:add_le(V.region, tvb(payload + 8, 4))
            m:add_le(V.count, tvb(payload + 12, 4), UInt64(tvb(payload + 12, 4):le_uint()))
            info = info .. string.format(" region=%d offset=0x%s count=%d", tvb(payload + 8, 4):le_uint(),
                tvb(payload, 8):le_uint64():tohex():gsub("^0+(.)", "%1"), tvb(payload + 12, 4):le_uint())
        elseif command == 11 or command == 12 then
            m:add_le(V.address, tvb(payload, 8))
            m:add_le(V.count, tvb(payload + 8, 8))
            info = info .. string.format(" address=0x%s count=%s",
                tvb(payload, 8):le_uint64():tohex():gsub("^0+(.)", "%1"), tostring(tvb(payload + 8, 8):le_uint64()))
        end
    end
    if rest > 0 then m:add(V.data, tvb(payload, rest)) end

    if not pinfo.visited then
        local t = f_frame_time().value
        if msg_type == 0 and not no_reply then
            vfu_outstanding[string.format("%s %d %d", socket, direction, id)] =
                { frame = pinfo.number, secs = t.secs, nsecs = t.nsecs }
        elseif msg_type == 1 then
            local key = string.format("%s %d %d", socket, opposite(direction), id)
            local c = vfu_outstanding[key]
            if c then
                local latency = (t.secs - c.secs) * 1000000000 + (t.nsecs - c.nsecs)
                if latency < 0 then latency = 0 end
                vfu_matches[pinfo.number] = { c.frame, latency }
                vfu_outstanding[key] = nil
            end
        end
    end
    local match = vfu_matches[pinfo.number]
    if match then
        m:add(V.request_in, match[1]):set_generated()
        m:add(V.latency, UInt64(match[2])):set_generated()
        info = info .. string.format(" [command in %d, %d ns]", match[1], match[2])
    end
    pinfo.cols.info:set(socket .. " " .. info)
end

local wtap_encap = DissectorTable.get("wtap_encap")
wtap_encap:add(wtap.USER0, tlpbridge)
wtap_encap:add(wtap.USER1, vfu)
