"""Exit 0 when SERVER answers an A query for NAME with at least one record (cluster-up's check
that CoreDNS serves the cluster; no dig on the host). Usage: dnsprobe.py SERVER NAME"""

import socket
import struct
import sys

server, name = sys.argv[1], sys.argv[2]
labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
query = (
    struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack(">HH", 1, 1)
)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(1.0)
    s.sendto(query, (server, 53))
    reply = s.recv(512)
answers = struct.unpack(">H", reply[6:8])[0]
sys.exit(0 if reply[:2] == b"\x12\x34" and answers > 0 else 1)
