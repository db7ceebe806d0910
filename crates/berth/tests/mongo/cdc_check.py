"""CDC from a table into a Kafka topic, checked with unmodified clients:
pymongo writes, confluent-kafka reads. Usage:

    cdc_check.py CHECK --mongo-port P --kafka BOOTSTRAP --ca CA --ticket T --topic TOPIC [--from N --to M]

CHECK is one of:
- write: inserts documents N..M-1 into cdc.users, then updates every
  other one, replaces every fifth and deletes every seventh.
- read: reads the topic from the start until every change of documents
  0..M-1 (as `write` makes them) is there, and checks that each arrived
  exactly once, keyed by _id, in commit order per document, with the
  operation and full document.
Prints what failed and exits 1 on failure.
"""

import argparse
import json
import sys
import time

import pymongo


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def expected(lo, hi):
    """Per _id, the (op, doc) list `write` makes, in order."""
    out = {}
    for i in range(lo, hi):
        ops = [("insert", {"_id": i, "n": i, "v": 0})]
        if i % 2 == 0:
            ops.append(("update", {"_id": i, "n": i, "v": 1}))
        if i % 5 == 0:
            ops.append(("replace", {"_id": i, "r": True}))
        if i % 7 == 0:
            ops.append(("delete", None))
        out[i] = ops
    return out


def write(a):
    uri = (f"mongodb://admin:{a.ticket}@127.0.0.1:{a.mongo_port}/?tls=true&tlsCAFile={a.ca}"
           "&authMechanism=PLAIN&authSource=$external&serverSelectionTimeoutMS=20000")
    coll = pymongo.MongoClient(uri, directConnection=True)["cdc"]["users"]
    for i in range(a.lo, a.hi):
        coll.insert_one({"_id": i, "n": i, "v": 0})
    for i in range(a.lo, a.hi):
        if i % 2 == 0:
            coll.update_one({"_id": i}, {"$set": {"v": 1}})
        if i % 5 == 0:
            coll.replace_one({"_id": i}, {"r": True})
        if i % 7 == 0:
            coll.delete_one({"_id": i})
    print("ok")


def read(a):
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

    c = Consumer({
        "bootstrap.servers": a.kafka,
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "PLAIN",
        "sasl.username": "admin",
        "sasl.password": a.ticket,
        "ssl.ca.location": a.ca,
        "group.id": "cdc-check",
        "enable.auto.commit": False,
    })
    md = c.list_topics(a.topic, timeout=20)
    parts = list(md.topics[a.topic].partitions)
    c.assign([TopicPartition(a.topic, p, OFFSET_BEGINNING) for p in parts])
    want = expected(0, a.hi)
    total = sum(len(v) for v in want.values())
    got = {}
    positions = set()
    deadline = time.time() + 60
    n = 0
    while n < total and time.time() < deadline:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        v = json.loads(m.value())
        key = json.loads(m.key())
        check(key == v["_id"], f"key {key} is the _id {v['_id']}")
        check(v["position"] not in positions, f"a change came twice: {v}")
        positions.add(v["position"])
        check(v["ns"] == "/tables/cdc/users", f"ns {v['ns']}")
        got.setdefault(key, []).append((v["op"], v.get("doc"), m.partition()))
        n += 1
    c.close()
    check(n == total, f"{n} of {total} changes arrived")
    for i, ops in want.items():
        have = got.get(i, [])
        check([(o, d) for o, d, _ in have] == ops, f"document {i}: {have} != {ops}")
        check(len({p for _, _, p in have}) == 1, f"document {i} spread over partitions {have}")
    print("ok")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("check", choices=["write", "read"])
    p.add_argument("--mongo-port", type=int)
    p.add_argument("--kafka")
    p.add_argument("--ca", required=True)
    p.add_argument("--ticket", required=True)
    p.add_argument("--topic", default="users-cdc")
    p.add_argument("--from", dest="lo", type=int, default=0)
    p.add_argument("--to", dest="hi", type=int, default=0)
    a = p.parse_args()
    {"write": write, "read": read}[a.check](a)


if __name__ == "__main__":
    main()
