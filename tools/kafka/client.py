#!/usr/bin/env python3
"""Kafka clients for weir's demo, tests and benchmarks.

Two client families, so the mesh is not tuned to one client's habits:
`confluent` (confluent-kafka, librdkafka) and `kafka-python` (pure Python).

Every record's value starts with its zero-padded sequence number, so a
consumer can tell exactly which records are missing or duplicated. Results
are printed as one JSON object on stdout; progress goes to stderr.

  client.py produce  --bootstrap HOST:PORT --topic T --count N [--size B] [--acks all]
                     [--first-seq S]   (sequence numbers S..S+N-1; default 0)
  client.py consume  --bootstrap HOST:PORT --topic T --count N [--group G] [--timeout S]
  client.py latency  --bootstrap HOST:PORT --topic T --count N   (one record at a time, acks=all)
  client.py metadata --bootstrap HOST:PORT                       (brokers as the cluster advertises them)
  client.py admin    --bootstrap HOST:PORT [--create-topic T]... [--alter-configs T]...
                     [--delete-records T]... [--create-acl]
                     (confluent only: create topics (1 partition, replication 1), set
                     retention.ms on topics, delete partition 0's records before offset 0,
                     create one ACL; prints each outcome's Kafka error name)

Every op takes --tls-ca CA.pem (TLS, host names verified) and, for mutual
TLS, --tls-cert CERT.pem --tls-key KEY.pem.
"""

import argparse
import json
import sys
import time

SEQ_WIDTH = 12


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def value_for(seq, size):
    head = b"%0*d" % (SEQ_WIDTH, seq)
    return head + b"x" * max(0, size - len(head))


def percentiles(samples_ms):
    if not samples_ms:
        return {}
    s = sorted(samples_ms)

    def pct(p):
        return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]

    return {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": s[-1], "n": len(s)}


# ---------------------------------------------------------------- confluent-kafka

def confluent_conf(args, extra=None):
    conf = {
        "bootstrap.servers": args.bootstrap,
        "client.id": args.client_id,
        "socket.connection.setup.timeout.ms": 10000,
    }
    if args.debug:
        conf["debug"] = args.debug
    if args.tls_ca:
        # TLS with host-name verification: the SNI and the certificate check
        # use the host names the cluster (or a gateway) advertises.
        conf["security.protocol"] = "ssl"
        conf["ssl.ca.location"] = args.tls_ca
        conf["ssl.endpoint.identification.algorithm"] = "https"
        if args.tls_cert:
            conf["ssl.certificate.location"] = args.tls_cert
            conf["ssl.key.location"] = args.tls_key
    conf.update(extra or {})
    return conf


def confluent_produce(args):
    from confluent_kafka import Producer

    p = Producer(confluent_conf(args, {
        "acks": args.acks,
        "enable.idempotence": args.idempotent,
        "linger.ms": args.linger_ms,
        "message.send.max.retries": 1000000,
        "retry.backoff.ms": 100,
        "delivery.timeout.ms": int(args.timeout * 1000),
        "queue.buffering.max.messages": 1000000,
        "queue.buffering.max.kbytes": 1048576,
    }))
    acked, errors, lat = [0], [], []

    def on_delivery(err, msg, sent_at=None):
        if err is not None:
            errors.append(str(err))
        else:
            acked[0] += 1
            if sent_at is not None:
                lat.append((time.perf_counter() - sent_at) * 1000.0)

    start = time.perf_counter()
    for seq in range(args.count):
        v = value_for(args.first_seq + seq, args.size)
        while True:
            try:
                t = time.perf_counter()
                p.produce(args.topic, v, key=b"%d" % (seq % 64),
                          on_delivery=lambda err, msg, t=t: on_delivery(err, msg, t))
                break
            except BufferError:
                p.poll(0.05)
        if seq % 1000 == 0:
            p.poll(0)
        if args.progress and seq and seq % args.progress == 0:
            log(f"produced {seq}/{args.count}, acked {acked[0]}")
    remaining = p.flush(args.timeout)
    return finish("produce", args, start, sent=args.count, acked=acked[0], errors=errors,
                  unacked=remaining, latency=lat)


def confluent_latency(args):
    from confluent_kafka import Producer

    p = Producer(confluent_conf(args, {"acks": "all", "linger.ms": 0}))
    lat, errors = [], []
    start = time.perf_counter()
    for seq in range(args.warmup + args.count):
        done = []
        t = time.perf_counter()
        p.produce(args.topic, value_for(seq, args.size), on_delivery=lambda e, m: done.append(e))
        while not done:
            p.poll(1.0)
            if time.perf_counter() - t > args.timeout:
                errors.append("timeout")
                break
        if done and done[0] is not None:
            errors.append(str(done[0]))
        elif seq >= args.warmup:
            lat.append((time.perf_counter() - t) * 1000.0)
    return finish("latency", args, start, sent=args.count, acked=len(lat), errors=errors, latency=lat)


def confluent_consume(args):
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

    group = args.group or f"weir-{args.client_id}-{int(time.time() * 1000)}"
    c = Consumer(confluent_conf(args, {
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": bool(args.group),
    }))
    if args.group:
        c.subscribe([args.topic])
    else:
        md = c.list_topics(args.topic, timeout=args.timeout)
        parts = md.topics[args.topic].partitions if args.topic in md.topics else {0: None}
        c.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in parts])
    seen = Seen(args.count)
    start = time.perf_counter()
    deadline = start + args.timeout
    while seen.unique < args.count and time.perf_counter() < deadline:
        msgs = c.consume(num_messages=1000, timeout=0.5)
        for m in msgs:
            if m.error():
                seen.errors.append(str(m.error()))
                continue
            seen.add(m.value())
        if args.progress and msgs:
            log(f"consumed {seen.unique}/{args.count}")
    c.close()
    return seen.result(args, start)


def confluent_metadata(args):
    from confluent_kafka.admin import AdminClient

    a = AdminClient(confluent_conf(args))
    md = a.list_topics(timeout=args.timeout)
    brokers = sorted((b.id, b.host, b.port) for b in md.brokers.values())
    return {"op": "metadata", "client": args.client,
            "brokers": [{"id": i, "host": h, "port": p} for i, h, p in brokers],
            "controller": md.controller_id, "topics": sorted(md.topics)}


def confluent_admin(args):
    """Admin requests, each answered with Kafka's error name ("NONE" when it
    succeeded): what an operator's tooling sees through the mesh or a gateway."""
    from confluent_kafka import KafkaException, TopicPartition
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient,
                                       AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic,
                                       ResourcePatternType, ResourceType)

    a = AdminClient(confluent_conf(args))

    def outcome(future):
        try:
            future.result(timeout=args.timeout)
            return "NONE"
        except KafkaException as e:
            return e.args[0].name() if e.args else repr(e)
        except Exception as e:  # timeouts and the like
            return f"{type(e).__name__}: {e}"

    results = {}
    if args.create_topic:
        new = [NewTopic(t, 1, 1) for t in args.create_topic]
        for t, f in a.create_topics(new, operation_timeout=args.timeout).items():
            results[f"create_topics:{t}"] = outcome(f)
    for t in args.alter_configs:
        entry = ConfigEntry("retention.ms", "86400000", incremental_operation=AlterConfigOpType.SET)
        res = ConfigResource("topic", t, incremental_configs=[entry])
        for f in a.incremental_alter_configs([res]).values():
            results[f"alter_configs:{t}"] = outcome(f)
    for t in args.delete_records:
        for f in a.delete_records([TopicPartition(t, 0, 0)]).values():
            results[f"delete_records:{t}"] = outcome(f)
    if args.create_acl:
        acl = AclBinding(ResourceType.TOPIC, "orders", ResourcePatternType.LITERAL, "User:weir",
                         "*", AclOperation.READ, AclPermissionType.ALLOW)
        for f in a.create_acls([acl]).values():
            results["create_acls"] = outcome(f)
    return {"op": "admin", "client": args.client, "results": results}


# ---------------------------------------------------------------- kafka-python

def kp_common(args):
    conf = {"bootstrap_servers": args.bootstrap.split(","), "client_id": args.client_id,
            "request_timeout_ms": 30000}
    if args.tls_ca:
        conf.update(security_protocol="SSL", ssl_cafile=args.tls_ca, ssl_check_hostname=True)
        if args.tls_cert:
            conf.update(ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key)
    return conf


def kp_produce(args):
    from kafka import KafkaProducer

    acks = {"all": "all", "-1": "all", "1": 1, "0": 0}[str(args.acks)]
    p = KafkaProducer(acks=acks, retries=1000000, retry_backoff_ms=100,
                      linger_ms=args.linger_ms, max_in_flight_requests_per_connection=1,
                      **kp_common(args))
    acked, errors, lat = [0], [], []

    def ok(t, _md):  # kafka-python passes add_callback's args first
        acked[0] += 1
        lat.append((time.perf_counter() - t) * 1000.0)

    start = time.perf_counter()
    for seq in range(args.count):
        t = time.perf_counter()
        f = p.send(args.topic, value=value_for(args.first_seq + seq, args.size),
                   key=b"%d" % (seq % 64))
        f.add_callback(ok, t)
        f.add_errback(lambda e: errors.append(repr(e)))
        if args.progress and seq and seq % args.progress == 0:
            log(f"produced {seq}/{args.count}, acked {acked[0]}")
    p.flush(timeout=args.timeout)
    p.close(timeout=5)
    return finish("produce", args, start, sent=args.count, acked=acked[0], errors=errors, latency=lat)


def kp_consume(args):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(group_id=args.group, auto_offset_reset="earliest",
                      enable_auto_commit=bool(args.group), consumer_timeout_ms=1000,
                      **kp_common(args))
    if args.group:
        c.subscribe([args.topic])
    else:
        parts = c.partitions_for_topic(args.topic) or {0}
        tps = [TopicPartition(args.topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
    seen = Seen(args.count)
    start = time.perf_counter()
    deadline = start + args.timeout
    while seen.unique < args.count and time.perf_counter() < deadline:
        batch = c.poll(timeout_ms=500, max_records=1000)
        for records in batch.values():
            for r in records:
                seen.add(r.value)
        if args.progress and batch:
            log(f"consumed {seen.unique}/{args.count}")
    c.close()
    return seen.result(args, start)


def kp_metadata(args):
    from kafka import KafkaAdminClient

    a = KafkaAdminClient(**kp_common(args))
    cluster = a.describe_cluster()
    a.close()
    brokers = sorted((b["node_id"], b["host"], b["port"]) for b in cluster["brokers"])
    return {"op": "metadata", "client": args.client,
            "brokers": [{"id": i, "host": h, "port": p} for i, h, p in brokers],
            "controller": cluster.get("controller_id"), "topics": []}


# ---------------------------------------------------------------- results

class Seen:
    def __init__(self, expected):
        self.expected = expected
        self.seqs = bytearray(expected)
        self.unique = 0
        self.total = 0
        self.duplicates = 0
        self.bytes = 0
        self.foreign = 0
        self.errors = []

    def add(self, value):
        self.total += 1
        self.bytes += len(value or b"")
        try:
            seq = int(value[:SEQ_WIDTH])
        except (TypeError, ValueError):
            self.foreign += 1
            return
        if 0 <= seq < self.expected:
            if self.seqs[seq]:
                self.duplicates += 1
            else:
                self.seqs[seq] = 1
                self.unique += 1
        else:
            self.foreign += 1

    def result(self, args, start):
        missing = [i for i in range(self.expected) if not self.seqs[i]]
        secs = time.perf_counter() - start
        return {"op": "consume", "client": args.client, "expected": self.expected,
                "received": self.total, "unique": self.unique, "duplicates": self.duplicates,
                "foreign": self.foreign, "missing": len(missing), "missing_first": missing[:20],
                "bytes": self.bytes, "seconds": secs,
                "mb_per_s": self.bytes / secs / 1e6 if secs else 0,
                "records_per_s": self.total / secs if secs else 0,
                "errors": self.errors[:20]}


def finish(op, args, start, sent, acked, errors, latency=(), unacked=0):
    secs = time.perf_counter() - start
    nbytes = acked * args.size
    return {"op": op, "client": args.client, "sent": sent, "acked": acked, "unacked": unacked,
            "errors": errors[:20], "error_count": len(errors), "seconds": secs,
            "mb_per_s": nbytes / secs / 1e6 if secs else 0,
            "records_per_s": acked / secs if secs else 0,
            "latency_ms": percentiles(list(latency))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("op", choices=["produce", "consume", "latency", "metadata", "admin"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", default="weir-demo")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--first-seq", type=int, default=0,
                    help="produce: number the records from this sequence number (a consumer "
                         "with --count C expects 0..C-1), so a second run adds new records")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--size", type=int, default=100, help="record value size in bytes")
    ap.add_argument("--acks", default="all")
    ap.add_argument("--idempotent", action="store_true")
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--group", default=None, help="consumer group (default: assign all partitions)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds")
    ap.add_argument("--client", choices=["confluent", "kafka-python"], default="confluent")
    ap.add_argument("--client-id", default="weir-client")
    ap.add_argument("--progress", type=int, default=0, help="log progress every N records")
    ap.add_argument("--debug", default=None, help="librdkafka debug contexts")
    ap.add_argument("--tls-ca", default=None, help="connect over TLS, trusting this CA (PEM file)")
    ap.add_argument("--tls-cert", default=None, help="client certificate (PEM) for mutual TLS")
    ap.add_argument("--tls-key", default=None, help="client private key (PEM) for mutual TLS")
    ap.add_argument("--create-topic", action="append", default=[], metavar="TOPIC",
                    help="admin: create TOPIC (CreateTopics)")
    ap.add_argument("--alter-configs", action="append", default=[], metavar="TOPIC",
                    help="admin: set retention.ms on TOPIC (IncrementalAlterConfigs)")
    ap.add_argument("--delete-records", action="append", default=[], metavar="TOPIC",
                    help="admin: delete TOPIC partition 0's records before offset 0 (DeleteRecords)")
    ap.add_argument("--create-acl", action="store_true", help="admin: create one ACL (CreateAcls)")
    args = ap.parse_args()
    ops = {
        ("confluent", "produce"): confluent_produce,
        ("confluent", "consume"): confluent_consume,
        ("confluent", "latency"): confluent_latency,
        ("confluent", "metadata"): confluent_metadata,
        ("confluent", "admin"): confluent_admin,
        ("kafka-python", "produce"): kp_produce,
        ("kafka-python", "consume"): kp_consume,
        ("kafka-python", "metadata"): kp_metadata,
    }
    fn = ops.get((args.client, args.op))
    if fn is None:
        print(json.dumps({"error": f"{args.op} is not implemented for {args.client}"}))
        return 2
    try:
        result = fn(args)
    except Exception as e:  # report, don't trace back: callers parse stdout
        print(json.dumps({"op": args.op, "client": args.client, "error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
