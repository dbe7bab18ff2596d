"""A UDP sink that never wakes: bench voice-calls --sink quiet.

It binds 127.0.0.1:0 with the smallest receive buffer and does not read until
its stdin closes. The kernel queues the first packets and drops every later
one at the socket (counted in /proc/net/udp), before any reader would be
woken. So a sender on the same host does not wake a reader for each packet
in its own sendmsg(), as a NIC's far end would not. On stdin's close it
drains what is queued and prints the packets received: queued + dropped.
"""
import socket
import sys

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
s.bind(('127.0.0.1', 0))
port = s.getsockname()[1]
print(port, flush=True)
sys.stdin.read()
s.setblocking(False)
queued = 0
while True:
    try:
        s.recv(2048)
        queued += 1
    except BlockingIOError:
        break
drops = 0
with open('/proc/net/udp') as f:
    for line in f.readlines()[1:]:
        cols = line.split()
        if cols[1].endswith(':%04X' % port):
            drops = int(cols[-1])
print(queued + drops, flush=True)
