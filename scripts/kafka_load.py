#!/usr/bin/env python3
"""Kafka-protocol load for `scripts/bench-kafka`, with librdkafka (confluent-kafka).

Modes:
  create   create TOPIC with PARTITIONS partitions through the admin API
           (for brokers whose topics are not made with their own CLI)
  produce  RECORDS records of SIZE bytes, round-robin over the partitions,
           acks=all, no idempotence, linger.ms=5, librdkafka's batching
           defaults; at most INFLIGHT records produced and not yet reported.
           Latency is per record, from the produce() call to its delivery
           report. Prints {"count", "msgs_per_sec", "mb_per_sec", "p50_ms",
           "p99_ms", ...} as one JSON line.
  consume  every partition from the first offset until RECORDS records were
           read; prints {"count", "msgs_per_sec", "mb_per_sec", ...}.

Timing starts after the connection is up and the topic's metadata is read
(both modes), so it measures the data path, not the handshake. MB is 10^6
bytes of record values. Any delivery error, a missing partition or a run
past --timeout exits 1 with the reason on stderr.
"""

import argparse
import json
import math
import os
import resource
import struct
import sys
import time
import uuid

from confluent_kafka import KafkaException, OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

METADATA_TIMEOUT_S = 30
CONSUME_BATCH = 10000
# Produce calls between two polls for delivery reports (a poll per record
# cost the load client more than the records did).
POLL_EVERY = 64


def die(msg):
    print(f"kafka_load: {msg}", file=sys.stderr)
    sys.exit(1)


def base_conf(a):
    c = {"bootstrap.servers": a.bootstrap, "security.protocol": a.security}
    if a.security == "SASL_SSL":
        c.update({
            "sasl.mechanisms": "PLAIN",
            "sasl.username": a.user,
            "sasl.password": open(a.password_file).read().strip(),
            "ssl.ca.location": a.ca,
        })
    return c


def wait_partitions(client, topic, want):
    """The topic's partition count once the broker reports all `want`."""
    deadline = time.monotonic() + METADATA_TIMEOUT_S
    last = "no metadata"
    while time.monotonic() < deadline:
        try:
            md = client.list_topics(topic, timeout=5)
            t = md.topics.get(topic)
            if t is not None and t.error is None and len(t.partitions) >= want:
                return len(t.partitions)
            last = f"{t.error if t is not None else 'absent'}, {len(t.partitions) if t else 0} partition(s)"
        except KafkaException as e:
            last = str(e)
        time.sleep(0.2)
    die(f"topic {topic}: wanted {want} partition(s), broker says: {last}")


def create(a):
    admin = AdminClient(base_conf(a))
    fut = admin.create_topics([NewTopic(a.topic, num_partitions=a.partitions, replication_factor=1)])
    try:
        fut[a.topic].result(METADATA_TIMEOUT_S)
    except KafkaException as e:
        die(f"create topic {a.topic}: {e}")
    wait_partitions(admin, a.topic, a.partitions)
    print(json.dumps({"topic": a.topic, "partitions": a.partitions}))


def cpu_s():
    """CPU seconds of this process, all threads (the client library's too)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    # Nearest rank: the smallest value with at least q of all at or below it.
    i = min(len(sorted_values), max(1, math.ceil(q * len(sorted_values)))) - 1
    return sorted_values[i]


def produce(a):
    conf = base_conf(a)
    conf.update({
        "acks": "all",
        "enable.idempotence": False,
        "linger.ms": 5,
        # Room for every record in flight: the window below is the bound.
        "queue.buffering.max.messages": max(100000, a.inflight * 2),
    })
    p = Producer(conf)
    wait_partitions(p, a.topic, a.partitions)
    value = os.urandom(a.size)
    n = a.records
    started = [0.0] * n
    latency_s = [0.0] * n
    state = {"done": 0, "errors": 0, "first_error": None, "last": 0.0}

    def report(err, msg):
        now = time.perf_counter()
        i = struct.unpack(">Q", msg.key())[0]
        if err is not None:
            state["errors"] += 1
            state["first_error"] = state["first_error"] or str(err)
        latency_s[i] = now - started[i]
        state["done"] += 1
        state["last"] = now

    deadline = time.monotonic() + a.timeout
    cpu0 = cpu_s()
    t0 = time.perf_counter()
    for i in range(n):
        while i - state["done"] >= a.inflight:
            p.poll(0.001)
            if time.monotonic() > deadline:
                die(f"timeout: {state['done']} of {n} records reported after {a.timeout} s")
        started[i] = time.perf_counter()
        while True:
            try:
                p.produce(a.topic, value=value, key=struct.pack(">Q", i),
                          partition=i % a.partitions, on_delivery=report)
                break
            except BufferError:
                p.poll(0.001)
        if i % POLL_EVERY == 0:
            p.poll(0)  # delivery reports; one call serves all that are ready
    while state["done"] < n:
        p.poll(0.01)
        if time.monotonic() > deadline:
            die(f"timeout: {state['done']} of {n} records reported after {a.timeout} s")
    elapsed = state["last"] - t0
    cpu_used_s = cpu_s() - cpu0
    if state["errors"]:
        die(f"{state['errors']} of {n} records failed, first: {state['first_error']}")
    lat_ms = sorted(x * 1000 for x in latency_s)
    print(json.dumps({
        "count": n,
        "partitions": a.partitions,
        "record_bytes": a.size,
        "inflight_max": a.inflight,
        "seconds": round(elapsed, 3),
        "msgs_per_sec": round(n / elapsed, 1),
        "mb_per_sec": round(n * a.size / elapsed / 1e6, 2),
        "p50_ms": round(percentile(lat_ms, 0.50), 3),
        "p99_ms": round(percentile(lat_ms, 0.99), 3),
        "max_ms": round(lat_ms[-1], 3),
        "client_cpu_s": round(cpu_used_s, 3),
    }))


def consume(a):
    conf = base_conf(a)
    conf.update({
        "group.id": f"bench-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "auto.offset.reset": "earliest",
    })
    c = Consumer(conf)
    parts = wait_partitions(c, a.topic, a.partitions)
    n = a.records
    got = 0
    value_bytes = 0
    deadline = time.monotonic() + a.timeout
    cpu0 = cpu_s()
    t0 = time.perf_counter()
    c.assign([TopicPartition(a.topic, i, OFFSET_BEGINNING) for i in range(parts)])
    while got < n:
        if time.monotonic() > deadline:
            die(f"timeout: read {got} of {n} records after {a.timeout} s")
        # consume() returns early only once it has num_messages: ask for
        # no more than are left, or the last call waits out its timeout.
        for m in c.consume(num_messages=min(CONSUME_BATCH, n - got), timeout=0.5):
            if m.error() is not None:
                die(f"consume: {m.error()}")
            got += 1
            value_bytes += len(m.value() or b"")
    elapsed = time.perf_counter() - t0
    c.close()
    print(json.dumps({
        "count": got,
        "partitions": parts,
        "seconds": round(elapsed, 3),
        "msgs_per_sec": round(got / elapsed, 1),
        "mb_per_sec": round(value_bytes / elapsed / 1e6, 2),
        "client_cpu_s": round(cpu_s() - cpu0, 3),
    }))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["create", "produce", "consume"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--records", type=int, default=int(os.environ.get("BENCH_RECORDS", "100000")))
    ap.add_argument("--size", type=int, default=1024, help="record value bytes")
    ap.add_argument("--inflight", type=int, default=int(os.environ.get("BENCH_INFLIGHT", "10000")),
                    help="records produced and not yet reported, at most")
    ap.add_argument("--security", choices=["PLAINTEXT", "SASL_SSL"], default="PLAINTEXT")
    ap.add_argument("--user", default="admin")
    ap.add_argument("--password-file", help="SASL PLAIN password, read from this file")
    ap.add_argument("--ca", help="CA certificate file for SASL_SSL")
    ap.add_argument("--timeout", type=float, default=600, help="seconds for the whole run")
    a = ap.parse_args()
    if a.partitions < 1 or a.records < 1 or a.size < 1 or a.inflight < 1:
        die("partitions, records, size and inflight must be at least 1")
    if a.security == "SASL_SSL" and not (a.password_file and a.ca):
        die("SASL_SSL needs --password-file and --ca")
    {"create": create, "produce": produce, "consume": consume}[a.mode](a)


if __name__ == "__main__":
    main()
