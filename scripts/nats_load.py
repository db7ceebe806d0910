#!/usr/bin/env python3
"""NATS JetStream load for `scripts/bench-kafka`, with nats-py.

A Kafka partition is an independent, ordered, separately stored log; in
JetStream that unit is a stream (one store, one write path). So PARTITIONS
partitions are PARTITIONS file-storage streams `<PREFIX>_<i>`, each bound to
the one subject `<prefix>.<i>`. Records go round-robin over them.

Modes:
  create   the streams (file storage, one replica, no limits)
  produce  RECORDS payloads of SIZE bytes with JetStream publish: each waits
           for its PubAck, which the server sends once the message is stored
           (with `sync_interval: always`, fsynced). At most INFLIGHT
           publishes wait for their ack. Latency is per message, from the
           publish call to its PubAck. Prints {"count", "msgs_per_sec",
           "mb_per_sec", "p50_ms", "p99_ms", ...} as one JSON line.
  consume  every stream from its first message to its last (one pull
           consumer per stream, no acks, as a Kafka consumer that commits
           nothing); the streams must hold at least RECORDS; prints {"count",
           "msgs_per_sec", "mb_per_sec", ...}.

Timing starts once connected and the streams are found. MB is 10^6 bytes
of payload. An error or a run past --timeout exits 1 with the reason.
"""

import argparse
import asyncio
import math
import os
import resource
import sys
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

FETCH_BATCH = 1000


def die(msg):
    print(f"nats_load: {msg}", file=sys.stderr)
    sys.exit(1)


def stream_name(a, i):
    return f"{a.stream.upper()}_{i}"


def subject(a, i):
    return f"{a.stream.lower()}.{i}"


def cpu_s():
    """CPU seconds of this process, all threads (the client library's too)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values), max(1, math.ceil(q * len(sorted_values)))) - 1
    return sorted_values[i]


async def create(a, js):
    for i in range(a.partitions):
        await js.add_stream(StreamConfig(
            name=stream_name(a, i), subjects=[subject(a, i)],
            storage=StorageType.FILE, num_replicas=1))
    print('{"streams": %d}' % a.partitions)


async def produce(a, nc, js):
    for i in range(a.partitions):
        await js.stream_info(stream_name(a, i))
    payload = os.urandom(a.size)
    n = a.records
    latency_s = [0.0] * n
    state = {"done": 0, "errors": 0, "first_error": None, "last": 0.0}
    window = asyncio.Semaphore(a.inflight)
    finished = asyncio.Event()

    def on_ack(i, started, fut):
        now = time.perf_counter()
        window.release()
        if fut.cancelled() or fut.exception() is not None:
            state["errors"] += 1
            err = "cancelled" if fut.cancelled() else repr(fut.exception())
            state["first_error"] = state["first_error"] or err
        latency_s[i] = now - started
        state["done"] += 1
        state["last"] = now
        if state["done"] == n:
            finished.set()

    cpu0 = cpu_s()

    async def run():
        t0 = time.perf_counter()
        subjects = [subject(a, i) for i in range(a.partitions)]
        for i in range(n):
            await window.acquire()
            started = time.perf_counter()
            fut = await js.publish_async(subjects[i % a.partitions], payload)
            fut.add_done_callback(lambda f, i=i, s=started: on_ack(i, s, f))
        await finished.wait()
        return t0

    try:
        t0 = await asyncio.wait_for(run(), a.timeout)
    except asyncio.TimeoutError:
        die(f"timeout: {state['done']} of {n} acks after {a.timeout} s")
    elapsed = state["last"] - t0
    cpu_used_s = cpu_s() - cpu0
    if state["errors"]:
        die(f"{state['errors']} of {n} publishes failed, first: {state['first_error']}")
    lat_ms = sorted(x * 1000 for x in latency_s)
    print('{"count": %d, "partitions": %d, "record_bytes": %d, "inflight_max": %d, '
          '"seconds": %.3f, "msgs_per_sec": %.1f, "mb_per_sec": %.2f, "p50_ms": %.3f, '
          '"p99_ms": %.3f, "max_ms": %.3f, "client_cpu_s": %.3f}' % (
              n, a.partitions, a.size, a.inflight, elapsed, n / elapsed,
              n * a.size / elapsed / 1e6, percentile(lat_ms, 0.5), percentile(lat_ms, 0.99),
              lat_ms[-1], cpu_used_s))


async def consume(a, nc, js):
    # Each stream is read up to the count it holds now, so no reader waits
    # on a stream that is done.
    held = [(await js.stream_info(stream_name(a, i))).state.messages for i in range(a.partitions)]
    n = a.records
    if sum(held) < n:
        die(f"the streams hold {sum(held)} messages, fewer than {n}")
    counts = {"got": 0, "bytes": 0}
    cpu0 = cpu_s()
    t0 = time.perf_counter()
    subs = []
    for i in range(a.partitions):
        subs.append(await js.pull_subscribe(
            subject(a, i), durable=None, stream=stream_name(a, i),
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL)))

    async def drain(sub, want):
        got = 0
        while got < want:
            try:
                msgs = await sub.fetch(min(FETCH_BATCH, want - got), timeout=1)
            except nats.errors.TimeoutError:
                continue
            got += len(msgs)
            counts["got"] += len(msgs)
            counts["bytes"] += sum(len(m.data) for m in msgs)

    try:
        await asyncio.wait_for(asyncio.gather(*(drain(s, w) for s, w in zip(subs, held))),
                               a.timeout)
    except asyncio.TimeoutError:
        die(f"timeout: read {counts['got']} of {sum(held)} messages after {a.timeout} s")
    elapsed = time.perf_counter() - t0
    print('{"count": %d, "partitions": %d, "seconds": %.3f, "msgs_per_sec": %.1f, '
          '"mb_per_sec": %.2f, "client_cpu_s": %.3f}' % (
              counts["got"], a.partitions, elapsed, counts["got"] / elapsed,
              counts["bytes"] / elapsed / 1e6, cpu_s() - cpu0))


async def amain(a):
    nc = await nats.connect(a.server, connect_timeout=10, max_reconnect_attempts=0)
    js = nc.jetstream(timeout=30, publish_async_max_pending=a.inflight)
    try:
        await {"create": create, "produce": produce, "consume": consume}[a.mode](
            a, *((js,) if a.mode == "create" else (nc, js)))
    finally:
        await nc.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["create", "produce", "consume"])
    ap.add_argument("--server", required=True, help="nats://127.0.0.1:PORT")
    ap.add_argument("--stream", required=True, help="stream name prefix (letters, digits)")
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--records", type=int, default=int(os.environ.get("BENCH_RECORDS", "100000")))
    ap.add_argument("--size", type=int, default=1024, help="payload bytes")
    ap.add_argument("--inflight", type=int, default=int(os.environ.get("BENCH_INFLIGHT", "10000")),
                    help="publishes waiting for their ack, at most")
    ap.add_argument("--timeout", type=float, default=600, help="seconds for the whole run")
    a = ap.parse_args()
    if a.partitions < 1 or a.records < 1 or a.size < 1 or a.inflight < 1:
        die("partitions, records, size and inflight must be at least 1")
    if not a.stream.isalnum():
        die("--stream: letters and digits only")
    try:
        asyncio.run(amain(a))
    except (nats.errors.Error, OSError) as e:
        die(f"{a.mode}: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
