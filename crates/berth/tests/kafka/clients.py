#!/usr/bin/env python3
"""Real Kafka clients against a Berth node, for the `kafka` integration tests.

Usage: clients.py CHECK BOOTSTRAP CA_FILE USER PASSWORD TOPIC

Every check exits 0 when the broker behaved as Kafka does, and 1 with a one
line reason otherwise. Checks:
  confluent   librdkafka (confluent-kafka): keyed records with headers in all
              four compression codecs and none, produced with acks=all, read
              back in order from the first offset with a plain assign()
  kafka-python  the same with kafka-python (gzip and none)
  aiokafka    the same with aiokafka (gzip and none)
  denied-produce  producing must fail with TOPIC_AUTHORIZATION_FAILED
  bad-login   connecting must fail SASL authentication
  crash-produce  produce r0, r1, ... with acks=all (idempotent) forever,
              printing "offset value" for every acknowledged record; stops
              when killed
  dump        print "offset value" of every record of partition 0 up to
              its end, then exit
  group       three consumers in one group on TOPIC (6 partitions, made
              by the test): every record is consumed, no partition is held by
              two members at once, one member leaves and partitions are
              added (to 8) while they consume, and the others take over
  group-commit   a group member reads 30 records of partition 0 and commits
              (synchronously) after them; prints the committed offset
  group-resume   a new member of the same group starts at the committed
              offset; prints the first offset it reads
  compact     produce a1 b1 a2 c1 b2 a3 d1 (key = first letter, one batch
              each) to a compacted stream; once the broker's compaction sweep
              ran, reading from the first offset gives exactly the records
              whose key has no later record, in order, across the offset
              gaps: c1 b2 a3 d1
  subscribe   env KAFKA_CLIENT (confluent, kafka-python or aiokafka) and
              KAFKA_GROUP: produce 20 records with acks=all, then a member of
              the group subscribes to TOPIC, reads all 20 from the earliest
              offset and commits them; the group's committed offsets must
              add up to 20. KAFKA_CLIENT=kafka-python also checks that a
              metadata request for all topics lists TOPIC.
  group-error  a librdkafka member of group env KAFKA_GROUP subscribes to
              TOPIC; some consumer error must contain env EXPECT (the
              broker's message), within 30 s
  idempotent-drops  BOOTSTRAP is a proxy this check runs (env PROXY_LISTEN
              port, forwarding to env PROXY_TARGET host:port) that cuts
              connections after a random number of bytes while an idempotent
              producer writes 3000 records with acks=all; then every record
              must be in partition 0 exactly once, in order
"""

import asyncio
import os
import sys
import time

CHECK, BOOTSTRAP, CA, USER, PASSWORD, TOPIC = sys.argv[1:7]
# SASL mechanism for the librdkafka checks: PLAIN (default), SCRAM-SHA-256,
# SCRAM-SHA-512 or OAUTHBEARER (PASSWORD is then the token: a ticket).
MECHANISM = os.environ.get("KAFKA_SASL_MECHANISM", "PLAIN")
N = 20  # records per codec
DEADLINE_S = 60


def fail(msg):
    print(f"FAIL {CHECK}: {msg}")
    sys.exit(1)


def records(codec):
    for i in range(N):
        yield (f"k{i}".encode(), f"{codec}-value-{i}".encode() * 10, [("h", f"{i}".encode())])


def check_order(got, codecs):
    want = [(k, v, h) for c in codecs for (k, v, h) in records(c)]
    if len(got) != len(want):
        fail(f"read {len(got)} records, wanted {len(want)}")
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            fail(f"record {i}: got {g!r}, wanted {w!r}")


# --- confluent-kafka (librdkafka) -------------------------------------------

def confluent_conf(extra=None):
    c = {
        "bootstrap.servers": BOOTSTRAP,
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": MECHANISM,
        "ssl.ca.location": CA,
        "enable.idempotence": False,
    }
    if MECHANISM == "OAUTHBEARER":
        c["oauth_cb"] = lambda _config: (PASSWORD, time.time() + 3600)
    else:
        c["sasl.username"] = USER
        c["sasl.password"] = PASSWORD
    c.update(extra or {})
    return c


def probe_group():
    """A group in the topic's own stream (librdkafka looks up a coordinator
    for any group.id, and using a group needs the consume right on its
    stream)."""
    stream, sep, _ = TOPIC.rpartition(":")
    return f"{stream}:probe" if sep else "probe"


def confluent():
    from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING

    codecs = ["none", "gzip", "snappy", "lz4", "zstd"]
    offsets = []
    for codec in codecs:
        p = Producer(confluent_conf({"compression.type": codec, "acks": "all", "linger.ms": 5}))
        errors = []

        def done(err, msg):
            if err is not None:
                errors.append(str(err))
            else:
                offsets.append(msg.offset())

        for k, v, h in records(codec):
            p.produce(TOPIC, key=k, value=v, headers=h, partition=0, on_delivery=done)
        if p.flush(DEADLINE_S) != 0:
            fail(f"{codec}: records still undelivered after {DEADLINE_S} s")
        if errors:
            fail(f"{codec}: delivery failed: {errors[0]}")
    if offsets != sorted(offsets) or len(set(offsets)) != len(offsets):
        fail(f"offsets not increasing: {offsets}")
    c = Consumer(confluent_conf({"group.id": probe_group(), "enable.auto.commit": False}))
    c.assign([TopicPartition(TOPIC, 0, OFFSET_BEGINNING)])
    got = []
    end = time.time() + DEADLINE_S
    while len(got) < N * len(codecs) and time.time() < end:
        m = c.poll(1.0)
        if m is None:
            continue
        if m.error():
            fail(f"consume: {m.error()}")
        got.append((m.key(), m.value(), [(k, v) for k, v in (m.headers() or [])]))
    c.close()
    check_order(got, codecs)


def denied_produce():
    from confluent_kafka import KafkaError, Producer

    p = Producer(confluent_conf({"acks": "all", "message.timeout.ms": 10000}))
    errors = []
    p.produce(TOPIC, value=b"x", partition=0, on_delivery=lambda err, msg: errors.append(err))
    p.flush(30)
    if not errors or errors[0] is None:
        fail("a denied produce was acknowledged")
    if errors[0].code() != KafkaError.TOPIC_AUTHORIZATION_FAILED:
        fail(f"wanted TOPIC_AUTHORIZATION_FAILED, got {errors[0]}")


def bad_login():
    from confluent_kafka import KafkaError, Producer

    errors = []
    p = Producer(confluent_conf({"error_cb": lambda e: errors.append(e)}))
    end = time.time() + 30
    while time.time() < end:
        p.poll(0.5)
        if any(e.code() == KafkaError._AUTHENTICATION for e in errors):
            return
    fail(f"no SASL authentication failure reported; errors: {[str(e) for e in errors]}")


# --- kafka-python -----------------------------------------------------------

def kafka_python_common():
    return dict(
        bootstrap_servers=BOOTSTRAP,
        security_protocol="SASL_SSL",
        sasl_mechanism=MECHANISM,
        sasl_plain_username=USER,
        sasl_plain_password=PASSWORD,
        ssl_cafile=CA,
    )


def kafka_python():
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    common = kafka_python_common()
    codecs = ["none", "gzip"]
    for codec in codecs:
        p = KafkaProducer(acks="all", compression_type=None if codec == "none" else codec,
                          enable_idempotence=False, **common)
        futures = [p.send(TOPIC, key=k, value=v, headers=[(hk, hv) for hk, hv in h], partition=0)
                   for k, v, h in records(codec)]
        for f in futures:
            f.get(timeout=DEADLINE_S)
        p.close()
    c = KafkaConsumer(consumer_timeout_ms=5000, auto_offset_reset="earliest",
                      enable_auto_commit=False, group_id=None, **common)
    tp = TopicPartition(TOPIC, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    got = []
    end = time.time() + DEADLINE_S
    while len(got) < N * len(codecs) and time.time() < end:
        for _, msgs in c.poll(timeout_ms=1000).items():
            for m in msgs:
                got.append((m.key, m.value, [(k, v) for k, v in m.headers]))
    c.close()
    check_order(got, codecs)


# --- aiokafka ---------------------------------------------------------------

def aiokafka_common():
    from aiokafka.helpers import create_ssl_context

    return dict(
        bootstrap_servers=BOOTSTRAP,
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_plain_username=USER,
        sasl_plain_password=PASSWORD,
        ssl_context=create_ssl_context(cafile=CA),
    )


async def aiokafka_check():
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    common = aiokafka_common()
    codecs = ["none", "gzip"]
    for codec in codecs:
        p = AIOKafkaProducer(acks="all", compression_type=None if codec == "none" else codec,
                             **common)
        await p.start()
        try:
            for k, v, h in records(codec):
                await p.send_and_wait(TOPIC, key=k, value=v, headers=h, partition=0)
        finally:
            await p.stop()
    c = AIOKafkaConsumer(auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
                         **common)
    await c.start()
    got = []
    try:
        tp = TopicPartition(TOPIC, 0)
        c.assign([tp])
        await c.seek_to_beginning(tp)
        end = time.time() + DEADLINE_S
        while len(got) < N * len(codecs) and time.time() < end:
            batch = await c.getmany(timeout_ms=1000)
            for msgs in batch.values():
                for m in msgs:
                    got.append((m.key, m.value, [(k, v) for k, v in m.headers]))
    finally:
        await c.stop()
    check_order(got, codecs)


def crash_produce():
    from confluent_kafka import Producer

    p = Producer(confluent_conf({"acks": "all", "enable.idempotence": True, "linger.ms": 2,
                                 "message.timeout.ms": 600000}))

    def done(err, msg):
        if err is None:
            print(f"{msg.offset()} {msg.value().decode()}", flush=True)

    i = 0
    while True:
        try:
            p.produce(TOPIC, value=f"r{i}".encode(), partition=0, on_delivery=done)
            i += 1
        except BufferError:
            pass
        p.poll(0.001 if i % 50 else 0.01)


def dump():
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

    c = Consumer(confluent_conf({"group.id": probe_group(), "enable.auto.commit": False}))
    _, high = c.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=DEADLINE_S)
    c.assign([TopicPartition(TOPIC, 0, OFFSET_BEGINNING)])
    n = 0
    end = time.time() + DEADLINE_S
    while n < high and time.time() < end:
        m = c.poll(1.0)
        if m is None:
            continue
        if m.error():
            fail(f"consume: {m.error()}")
        print(f"{m.offset()} {m.value().decode()}")
        n += 1
    c.close()
    if n < high:
        fail(f"read {n} of {high} records")


def group():
    import threading
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewPartitions

    per_partition = 50

    def produce(parts, tag):
        p = Producer(confluent_conf({"acks": "all", "linger.ms": 5}))
        for part in parts:
            for i in range(per_partition):
                p.produce(TOPIC, key=f"{part}".encode(), value=f"{tag}-{part}-{i}".encode(),
                          partition=part)
        if p.flush(DEADLINE_S) != 0:
            fail("records still undelivered")
        return {f"{tag}-{part}-{i}" for part in parts for i in range(per_partition)}

    want = produce(range(6), "a")
    lock = threading.Lock()
    holder = {}  # partition -> member name
    seen = set()
    problems = []
    stop = {"all": False}

    def member(name, leave_after):
        c = Consumer(confluent_conf({
            "group.id": "g3", "auto.offset.reset": "earliest",
            "enable.auto.commit": True, "auto.commit.interval.ms": 200,
            "session.timeout.ms": 10000, "heartbeat.interval.ms": 500,
            "topic.metadata.refresh.interval.ms": 1000,
            "partition.assignment.strategy": "range",
        }))

        def on_assign(consumer, parts):
            with lock:
                for tp in parts:
                    other = holder.get(tp.partition)
                    if other is not None and other != name:
                        problems.append(f"partition {tp.partition} given to {name} "
                                        f"while {other} holds it")
                    holder[tp.partition] = name

        def on_revoke(consumer, parts):
            # Commit what was read before giving partitions up.
            try:
                consumer.commit(asynchronous=False)
            except Exception:
                pass
            with lock:
                for tp in parts:
                    if holder.get(tp.partition) == name:
                        del holder[tp.partition]

        c.subscribe([TOPIC], on_assign=on_assign, on_revoke=on_revoke)
        got = 0
        end = time.time() + 3 * DEADLINE_S  # the test ends them (stop) sooner
        while not stop["all"] and time.time() < end:
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            with lock:
                seen.add(m.value().decode())
            got += 1
            if leave_after and got >= leave_after:
                break
        c.close()  # LeaveGroup: the others rebalance

    threads = [threading.Thread(target=member, args=(f"m{i}", 40 if i == 0 else 0))
               for i in range(3)]
    for t in threads:
        t.start()
    # Once the leaver has left and the rest rebalanced, add partitions and
    # fill them: the group must pick them up.
    end = time.time() + DEADLINE_S
    while time.time() < end:
        with lock:
            if len(seen) >= 200 and not threads[0].is_alive():
                break
        time.sleep(0.2)
    admin = AdminClient(confluent_conf())
    fs = admin.create_partitions([NewPartitions(TOPIC, 8)])
    for f in fs.values():
        f.result(30)
    want |= produce(range(6, 8), "b")
    end = time.time() + DEADLINE_S
    while time.time() < end:
        with lock:
            if want <= seen:
                break
        time.sleep(0.2)
    stop["all"] = True
    for t in threads:
        t.join(30)
    if problems:
        fail(problems[0])
    missing = want - seen
    if missing:
        fail(f"{len(missing)} records never consumed, e.g. {sorted(missing)[:3]}")


def group_member(commit_after):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(confluent_conf({
        "group.id": "resume", "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "session.timeout.ms": 10000,
    }))
    c.subscribe([TOPIC])
    end = time.time() + DEADLINE_S
    got = []
    while time.time() < end:
        m = c.poll(0.5)
        if m is None or m.error() or m.partition() != 0:
            continue
        got.append(m)
        if commit_after is None or len(got) >= commit_after:
            break
    if not got:
        fail("no record read")
    if commit_after is None:
        print(got[0].offset())
    else:
        c.commit(message=got[-1], asynchronous=False)
        committed = c.committed([TopicPartition(TOPIC, 0)], timeout=10)[0].offset
        print(committed)
    c.close()


def idempotent_drops():
    import random
    import socket
    import threading
    from confluent_kafka import Producer

    listen = int(os.environ["PROXY_LISTEN"])
    host, port = os.environ["PROXY_TARGET"].rsplit(":", 1)
    dropping = {"on": True, "cuts": 0}
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", listen))
    srv.listen(64)

    def pump(src, dst, budget):
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if budget is not None and dropping["on"] and sent + len(data) > budget:
                    # Forward part of it, then cut both ways mid-request.
                    dst.sendall(data[: max(0, budget - sent)])
                    dropping["cuts"] += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def accept():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            u = socket.create_connection((host, int(port)))
            budget = random.randint(6_000, 40_000)
            threading.Thread(target=pump, args=(c, u, budget), daemon=True).start()
            threading.Thread(target=pump, args=(u, c, None), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    n = 3000
    PAD = b"." * 200
    p = Producer(confluent_conf({"acks": "all", "enable.idempotence": True, "linger.ms": 5,
                                 "batch.num.messages": 50, "message.timeout.ms": 120000,
                                 "reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 100}))
    errors = []

    def done(err, msg):
        if err is not None:
            errors.append(str(err))

    for i in range(n):
        while True:
            try:
                p.produce(TOPIC, value=f"r{i}".encode() + PAD, partition=0, on_delivery=done)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    if p.flush(DEADLINE_S * 2) != 0:
        fail("records still undelivered")
    if errors:
        fail(f"delivery failed: {errors[0]}")
    cuts = dropping["cuts"]
    dropping["on"] = False
    if cuts == 0:
        fail("the proxy cut no connection: nothing was tested")
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

    c = Consumer(confluent_conf({"group.id": probe_group(), "enable.auto.commit": False}))
    c.assign([TopicPartition(TOPIC, 0, OFFSET_BEGINNING)])
    got = []
    end = time.time() + DEADLINE_S
    while len(got) < n and time.time() < end:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        got.append(m.value().decode().rstrip("."))
    # Anything past n would be a duplicate.
    more = c.poll(2.0)
    c.close()
    want = [f"r{i}" for i in range(n)]
    if got != want or (more is not None and not more.error()):
        dup = len(got) - len(set(got))
        fail(f"read {len(got)} records ({dup} duplicates), first difference at "
             f"{next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(got))}")
    print(f"{cuts} connections cut")


def compact():
    """Needs a compacted stream with a short delete retention (seconds)."""
    from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING

    p = Producer(confluent_conf({"acks": "all", "linger.ms": 0}))
    for k, v in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("c", "c1"), ("b", "b2"),
                 ("a", "a3"), ("d", "d1")]:
        p.produce(TOPIC, key=k.encode(), value=v.encode(), partition=0)
        if p.flush(DEADLINE_S) != 0:  # one batch per record
            fail("record undelivered")
    # One lz4 batch with superseded records and a tombstone: compaction
    # rewrites it (compressed again) rather than keeping or deleting it
    # whole; the tombstone goes after the delete retention.
    p = Producer(confluent_conf({"acks": "all", "linger.ms": 200, "compression.type": "lz4"}))
    for k, v in [("a", "a4"), ("e", "e1"), ("e", "e2"), ("b", None)]:
        p.produce(TOPIC, key=k.encode(), value=None if v is None else v.encode(), partition=0)
    if p.flush(DEADLINE_S) != 0:
        fail("record undelivered")
    p.produce(TOPIC, key=b"f", value=b"f1", partition=0)  # the active batch
    if p.flush(DEADLINE_S) != 0:
        fail("record undelivered")
    want = ["c1", "d1", "a4", "e2", "f1"]
    end = time.time() + DEADLINE_S
    got = []
    while time.time() < end:
        c = Consumer(confluent_conf({"group.id": probe_group(), "enable.auto.commit": False}))
        c.assign([TopicPartition(TOPIC, 0, OFFSET_BEGINNING)])
        got = []
        quiet = 0
        while quiet < 3:
            m = c.poll(0.5)
            if m is None:
                quiet += 1
                continue
            if m.error():
                fail(f"consume: {m.error()}")
            got.append(None if m.value() is None else m.value().decode())
        c.close()
        if got == want:
            return
        time.sleep(0.5)  # the sweep has not run yet
    fail(f"after compaction read {got}, wanted {want}")


# --- one consumer group, any of the three clients ---------------------------

def subscribe():
    client = os.environ["KAFKA_CLIENT"]
    group_id = os.environ["KAFKA_GROUP"]
    values = [f"{client}-{i}".encode() for i in range(N)]
    if client == "confluent":
        subscribe_confluent(group_id, values)
    elif client == "kafka-python":
        subscribe_kafka_python(group_id, values)
    elif client == "aiokafka":
        asyncio.run(subscribe_aiokafka(group_id, values))
    else:
        fail(f"unknown KAFKA_CLIENT {client}")


def check_values(got, values):
    if sorted(got) != sorted(values):
        fail(f"the group read {len(got)} records, wanted {len(values)}: {got[:5]}...")


def subscribe_confluent(group_id, values):
    from confluent_kafka import Consumer, Producer

    p = Producer(confluent_conf({"acks": "all"}))
    errors = []
    for v in values:
        p.produce(TOPIC, value=v, on_delivery=lambda err, _m: err and errors.append(str(err)))
    if p.flush(DEADLINE_S) != 0 or errors:
        fail(f"produce: {errors or 'undelivered'}")
    c = Consumer(confluent_conf({"group.id": group_id, "auto.offset.reset": "earliest",
                                 "enable.auto.commit": False}))
    c.subscribe([TOPIC])
    got = []
    end = time.time() + DEADLINE_S
    while len(got) < len(values) and time.time() < end:
        m = c.poll(1.0)
        if m is None:
            continue
        if m.error():
            fail(f"consume: {m.error()}")
        got.append(m.value())
    check_values(got, values)
    c.commit(asynchronous=False)
    committed = c.committed(c.assignment(), timeout=DEADLINE_S)
    c.close()
    total = sum(max(tp.offset, 0) for tp in committed)
    if total != len(values):
        fail(f"committed offsets add up to {total}, wanted {len(values)}")


def subscribe_kafka_python(group_id, values):
    from kafka import KafkaConsumer, KafkaProducer

    common = kafka_python_common()
    p = KafkaProducer(acks="all", enable_idempotence=False, **common)
    for f in [p.send(TOPIC, value=v) for v in values]:
        f.get(timeout=DEADLINE_S)
    p.close()
    c = KafkaConsumer(group_id=group_id, auto_offset_reset="earliest",
                      enable_auto_commit=False, **common)
    if TOPIC not in c.topics():
        fail(f"{TOPIC} is not among all topics: {sorted(c.topics())}")
    c.subscribe([TOPIC])
    got = []
    end = time.time() + DEADLINE_S
    while len(got) < len(values) and time.time() < end:
        for _, msgs in c.poll(timeout_ms=1000).items():
            got.extend(m.value for m in msgs)
    check_values(got, values)
    c.commit()
    total = sum(c.committed(tp) or 0 for tp in c.assignment())
    c.close()
    if total != len(values):
        fail(f"committed offsets add up to {total}, wanted {len(values)}")


async def subscribe_aiokafka(group_id, values):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    common = aiokafka_common()
    p = AIOKafkaProducer(acks="all", **common)
    await p.start()
    try:
        for v in values:
            await p.send_and_wait(TOPIC, value=v)
    finally:
        await p.stop()
    c = AIOKafkaConsumer(TOPIC, group_id=group_id, auto_offset_reset="earliest",
                         enable_auto_commit=False, **common)
    await c.start()
    got = []
    try:
        end = time.time() + DEADLINE_S
        while len(got) < len(values) and time.time() < end:
            batch = await c.getmany(timeout_ms=1000)
            for msgs in batch.values():
                got.extend(m.value for m in msgs)
        check_values(got, values)
        await c.commit()
        total = 0
        for tp in c.assignment():
            total += await c.committed(tp) or 0
    finally:
        await c.stop()
    if total != len(values):
        fail(f"committed offsets add up to {total}, wanted {len(values)}")


def group_error():
    from confluent_kafka import Consumer

    import logging

    expect = os.environ["EXPECT"]
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    log = logging.getLogger("group-error")
    log.addHandler(Keep())
    log.setLevel(logging.DEBUG)
    # librdkafka retries a coordinator that is not available without telling
    # the application; its group debug log shows the broker's reason.
    c = Consumer(confluent_conf({"group.id": os.environ["KAFKA_GROUP"],
                                 "auto.offset.reset": "earliest", "debug": "cgrp"}),
                 logger=log)
    c.subscribe([TOPIC])
    end = time.time() + 30
    try:
        while time.time() < end:
            m = c.poll(0.5)
            if m is not None and m.error():
                seen.append(str(m.error()))
            if any(expect in line for line in seen):
                return
    finally:
        c.close()
    fail(f"no consumer error or log line containing {expect!r}; saw "
         f"{[line for line in seen if 'oordinator' in line][:5]}")


CHECKS = {
    "group-error": group_error,
    "subscribe": subscribe,
    "compact": compact,
    "idempotent-drops": idempotent_drops,
    "group": group,
    "group-commit": lambda: group_member(30),
    "group-resume": lambda: group_member(None),
    "crash-produce": crash_produce,
    "dump": dump,
    "confluent": confluent,
    "kafka-python": kafka_python,
    "aiokafka": lambda: asyncio.run(aiokafka_check()),
    "denied-produce": denied_produce,
    "bad-login": bad_login,
}

if __name__ == "__main__":
    try:
        CHECKS[CHECK]()
    except SystemExit:
        raise
    except Exception as e:  # one line, whatever the client raised
        fail(f"{type(e).__name__}: {e}")
    print(f"ok {CHECK}")
