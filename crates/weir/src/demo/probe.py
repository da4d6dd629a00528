#!/usr/bin/env python3
"""Plaintext probes for weir demo, run inside a network namespace.

  probe.py kafka HOST PORT       send a Kafka ApiVersions request, report what happened
  probe.py http HOST PORT PATH   HTTP GET, report the status

Prints one JSON object: {"outcome": "answered"|"reset"|"closed"|"refused"|"timeout"|"http"|"error", ...}
"""
import http.client
import json
import socket
import struct
import sys


def kafka(host, port):
    cid = b"monitoring"
    body = struct.pack(">hhih", 18, 0, 1, len(cid)) + cid  # ApiVersions v0
    req = struct.pack(">i", len(body)) + body
    try:
        s = socket.create_connection((host, port), timeout=5)
    except ConnectionRefusedError:
        return {"outcome": "refused"}
    except ConnectionResetError:
        # The proxy may reset before connect() returns.
        return {"outcome": "reset"}
    except socket.timeout:
        return {"outcome": "timeout"}
    except OSError as e:
        return {"outcome": "error", "detail": str(e)}
    try:
        s.sendall(req)
        data = s.recv(65536)
        if data:
            return {"outcome": "answered", "bytes": len(data)}
        return {"outcome": "closed"}
    except (ConnectionResetError, BrokenPipeError):
        return {"outcome": "reset"}
    except socket.timeout:
        return {"outcome": "timeout"}
    except OSError as e:
        return {"outcome": "error", "detail": str(e)}


def get(host, port, path):
    try:
        c = http.client.HTTPConnection(host, port, timeout=5)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read().decode(errors="replace")
        lines = [l for l in body.splitlines() if l and not l.startswith("#")]
        return {"outcome": "http", "status": r.status, "bytes": len(body),
                "sample": lines[0] if lines else ""}
    except ConnectionRefusedError:
        return {"outcome": "refused"}
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
        return {"outcome": "reset"}
    except socket.timeout:
        return {"outcome": "timeout"}
    except OSError as e:
        return {"outcome": "error", "detail": str(e)}


if __name__ == "__main__":
    op = sys.argv[1]
    if op == "kafka":
        res = kafka(sys.argv[2], int(sys.argv[3]))
    else:
        res = get(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    print(json.dumps(res), flush=True)
