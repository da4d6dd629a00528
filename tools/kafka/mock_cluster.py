#!/usr/bin/env python3
"""A multi-broker Kafka cluster for tests: librdkafka's mock cluster.

librdkafka (bundled with confluent-kafka) runs several real Kafka-protocol
brokers in one process, each listening on a loopback port. This tool makes
each of them reachable the way a real cluster's brokers are: broker N is
advertised in Metadata as ADDR_N:PORT and, with --netns, a relay thread
listens on 0.0.0.0:PORT *inside network namespace NETNS_N* (the broker's
"pod") and forwards to the mock broker's loopback port. So a client that
bootstraps on one broker discovers and dials the others at their own
addresses, and a mesh node proxy serving those namespaces sees one broker
workload per address.

  mock_cluster.py --broker 1=198.18.0.31:9092@kafka-0 --broker 2=198.18.0.32:9092@kafka-1 \\
                  --topic orders:3 [--topic ...]

Or, with --loopback N, N brokers (ids 1..N) advertised at their own
loopback listeners (no relays, no namespaces):

  mock_cluster.py --loopback 3 --topic orders:3

Prints one JSON line ({"brokers": [...]}) when ready, then serves until
stdin closes or SIGTERM. Commands on stdin:
  add ID=ADDR:PORT@NETNS   add a broker to the running cluster
  add ID                   (--loopback) add broker ID at its loopback listener
  leader TOPIC PARTITION ID  make broker ID the partition's leader
"""

import argparse
import ctypes
import ctypes.util
import glob
import json
import os
import signal
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000


def load_librdkafka():
    import confluent_kafka

    base = os.path.dirname(confluent_kafka.__file__)
    libs = glob.glob(os.path.join(base, "..", "confluent_kafka.libs", "librdkafka*.so*"))
    lib = ctypes.CDLL(libs[0] if libs else "librdkafka.so.1")
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
    lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_broker_set_host_port.restype = None
    lib.rd_kafka_mock_broker_set_host_port.argtypes = [ctypes.c_void_p, ctypes.c_int32,
                                                       ctypes.c_char_p, ctypes.c_int]
    lib.rd_kafka_mock_topic_create.restype = ctypes.c_int
    lib.rd_kafka_mock_topic_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                               ctypes.c_int]
    lib.rd_kafka_mock_broker_add.restype = ctypes.c_int
    lib.rd_kafka_mock_broker_add.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    lib.rd_kafka_mock_partition_set_leader.restype = ctypes.c_int
    lib.rd_kafka_mock_partition_set_leader.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32]
    return lib


LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def setns(fd):
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def loopback_listeners():
    """Ports listening on 127.0.0.1 in this process's network namespace.

    A broker added to a running mock cluster listens on a new loopback port
    that rd_kafka_mock_cluster_bootstraps() does not report; comparing the
    listening sockets before and after the add finds it."""
    ports = set()
    with open("/proc/self/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr, port = local.split(":")
            if state == "0A" and addr == "0100007F":
                ports.add(int(port, 16))
    return ports


def listen_in_netns(netns, port):
    """A listening socket created inside /var/run/netns/NETNS (sockets keep
    their namespace); the calling thread returns to its own namespace."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        setns(target)
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(128)
            return s
        finally:
            setns(own)
    finally:
        os.close(own)
        os.close(target)


def pump(src, dst):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            dst.sendall(b)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def relay(listener, upstream_port):
    while True:
        try:
            c, _ = listener.accept()
        except OSError:
            return
        try:
            u = socket.create_connection(("127.0.0.1", upstream_port), timeout=10)
            u.settimeout(None)
        except OSError:
            c.close()
            continue
        for a, b in ((c, u), (u, c)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()


def parse_broker(spec):
    # ID=ADDR:PORT[@NETNS]
    bid, rest = spec.split("=", 1)
    netns = None
    if "@" in rest:
        rest, netns = rest.split("@", 1)
    host, port = rest.rsplit(":", 1)
    return int(bid), host, int(port), netns


class Cluster:
    def __init__(self, lib, n):
        self.lib = lib
        errstr = ctypes.create_string_buffer(512)
        conf = lib.rd_kafka_conf_new()
        # The handle only hosts the mock cluster; it never connects anywhere.
        lib.rd_kafka_conf_set(conf, b"bootstrap.servers", b"", errstr, 512)
        self.rk = lib.rd_kafka_new(0, conf, errstr, 512)
        if not self.rk:
            raise RuntimeError(errstr.value.decode())
        self.mc = lib.rd_kafka_mock_cluster_new(self.rk, n)
        if not self.mc:
            raise RuntimeError("rd_kafka_mock_cluster_new failed")
        self.brokers = []

    def loopback_ports(self):
        boots = self.lib.rd_kafka_mock_cluster_bootstraps(self.mc).decode()
        return [int(b.rsplit(":", 1)[1]) for b in boots.split(",")]

    def expose(self, bid, host, port, netns, loop_port):
        self.lib.rd_kafka_mock_broker_set_host_port(self.mc, bid, host.encode(), port)
        info = {"id": bid, "advertised": f"{host}:{port}", "loopback": f"127.0.0.1:{loop_port}"}
        if netns:
            l = listen_in_netns(netns, port)
            threading.Thread(target=relay, args=(l, loop_port), daemon=True).start()
            info["netns"] = netns
        self.brokers.append(info)
        return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", action="append", default=[], help="ID=ADDR:PORT[@NETNS]")
    ap.add_argument("--loopback", type=int, default=0,
                    help="N brokers advertised at their own loopback listeners (instead of --broker)")
    ap.add_argument("--topic", action="append", default=[], help="NAME[:PARTITIONS]")
    args = ap.parse_args()
    if bool(args.broker) == bool(args.loopback):
        ap.error("give either --broker (one or more) or --loopback N")
    specs = [parse_broker(b) for b in args.broker]
    lib = load_librdkafka()
    cluster = Cluster(lib, len(specs) or args.loopback)
    ports = cluster.loopback_ports()
    if args.loopback:
        for bid, loop_port in enumerate(ports, start=1):
            cluster.brokers.append({"id": bid, "advertised": f"127.0.0.1:{loop_port}",
                                    "loopback": f"127.0.0.1:{loop_port}"})
    for (bid, host, port, netns), loop_port in zip(sorted(specs), ports):
        cluster.expose(bid, host, port, netns, loop_port)
    for t in args.topic:
        name, _, parts = t.partition(":")
        err = lib.rd_kafka_mock_topic_create(cluster.mc, name.encode(), int(parts or 1), 1)
        if err:
            raise SystemExit(f"creating topic {name} failed: error {err}")
    print(json.dumps({"brokers": cluster.brokers}), flush=True)

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    for line in sys.stdin:
        cmd = line.split()
        if len(cmd) == 2 and cmd[0] == "add" and args.loopback and cmd[1].isdigit():
            bid = int(cmd[1])
            known = loopback_listeners()
            err = lib.rd_kafka_mock_broker_add(cluster.mc, bid)
            if err:
                print(json.dumps({"error": f"adding broker {bid} failed: error {err}"}), flush=True)
                continue
            new = sorted(loopback_listeners() - known)
            if not new:
                print(json.dumps({"error": f"broker {bid} added but its listener is not known "
                                           "(this librdkafka does not list it in the bootstraps)"}), flush=True)
                continue
            info = {"id": bid, "advertised": f"127.0.0.1:{new[0]}", "loopback": f"127.0.0.1:{new[0]}"}
            cluster.brokers.append(info)
            print(json.dumps({"added": info}), flush=True)
        elif len(cmd) == 2 and cmd[0] == "add":
            bid, host, port, netns = parse_broker(cmd[1])
            known = loopback_listeners()
            err = lib.rd_kafka_mock_broker_add(cluster.mc, bid)
            if err:
                print(json.dumps({"error": f"adding broker {bid} failed: error {err}"}), flush=True)
                continue
            new = sorted(loopback_listeners() - known)
            if not new:
                print(json.dumps({"error": f"broker {bid} added but no new loopback listener was found"}), flush=True)
                continue
            info = cluster.expose(bid, host, port, netns, new[0])
            print(json.dumps({"added": info}), flush=True)
        elif len(cmd) == 4 and cmd[0] == "leader" and cmd[2].isdigit() and cmd[3].isdigit():
            topic, part, bid = cmd[1], int(cmd[2]), int(cmd[3])
            err = lib.rd_kafka_mock_partition_set_leader(cluster.mc, topic.encode(), part, bid)
            if err:
                print(json.dumps({"error": f"setting the leader of {topic}/{part} failed: error {err}"}), flush=True)
                continue
            print(json.dumps({"leader": {"topic": topic, "partition": part, "id": bid}}), flush=True)
        elif cmd:
            print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
