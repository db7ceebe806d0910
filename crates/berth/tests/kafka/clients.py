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
"""

import asyncio
import sys
import time

CHECK, BOOTSTRAP, CA, USER, PASSWORD, TOPIC = sys.argv[1:7]
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
        "sasl.mechanisms": "PLAIN",
        "sasl.username": USER,
        "sasl.password": PASSWORD,
        "ssl.ca.location": CA,
        "enable.idempotence": False,
    }
    c.update(extra or {})
    return c


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
    c = Consumer(confluent_conf({"group.id": "unused", "enable.auto.commit": False}))
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

def kafka_python():
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    common = dict(
        bootstrap_servers=BOOTSTRAP,
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_plain_username=USER,
        sasl_plain_password=PASSWORD,
        ssl_cafile=CA,
    )
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

async def aiokafka_check():
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.helpers import create_ssl_context

    common = dict(
        bootstrap_servers=BOOTSTRAP,
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_plain_username=USER,
        sasl_plain_password=PASSWORD,
        ssl_context=create_ssl_context(cafile=CA),
    )
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


CHECKS = {
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
