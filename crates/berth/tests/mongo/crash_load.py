"""A crash test's load and verification of a collection with a unique index
(pymongo, driven by `it/mongo_crash.rs`). Usage:

    crash_load.py load   --port P --ca CA --ticket T --log FILE --round R [--threads N] [--seconds S] [--seed X]
    crash_load.py verify --port P --ca CA --ticket T --log FILE --state FILE

`load` runs THREADS writers on crash.users (unique index on `email`) until
the server goes away (or SECONDS pass): each inserts, updates and deletes
documents of its own (`_id` "rR-tT-N", so a document's operations are in
one thread's order), with emails drawn from one small pool, so writers
collide on the unique index all the time. Before each write it logs what it
sends, after it what came back, one JSON line each, flushed:
    {"t": T, "id": ..., "op": "insert|update|delete", "email": ..., "v": N, "sent": true}
    {"t": T, "id": ..., "outcome": "ok|dup|unknown", "n": N}
A writer stops at its first write without an answer (the kill): that one
is "unknown", it may or may not have been applied.

`verify` reads the log and the collection after the restart and fails
(exit 1, naming what) unless:
- every acknowledged write is there: each document of the log is in the
  state its last acknowledged write left, or, when its last write is
  unknown, in the state before or after that write (never anything else);
- no document is in the collection that no write of the log made, and the
  documents of earlier rounds (STATE, written by the previous verify) are
  unchanged;
- the unique index holds: no two documents share an email, and a query by
  each document's email, planned on the index, finds exactly it.
It then writes every document into STATE for the next round.
"""

import argparse
import json
import os
import random
import sys
import threading
import time

import pymongo
from pymongo.errors import DuplicateKeyError

# Emails in the pool: few enough that writers collide on them.
EMAILS = 24
# Documents a writer keeps at most (it deletes beyond).
DOCS_PER_WRITER_MAX = 8


def client(a):
    uri = (
        f"mongodb://admin:{a.ticket}@127.0.0.1:{a.port}/"
        f"?tls=true&tlsCAFile={a.ca}&authMechanism=PLAIN&authSource=$external"
        f"&serverSelectionTimeoutMS=3000&connectTimeoutMS=3000&socketTimeoutMS=10000"
    )
    return pymongo.MongoClient(uri, directConnection=True)


def fail(what):
    print(f"FAILED: {what}", file=sys.stderr)
    sys.exit(1)


class Log:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def write(self, rec):
        line = json.dumps(rec)
        with self.lock:
            self.f.write(line + "\n")
            self.f.flush()
            os.fsync(self.f.fileno())


def writer(a, t, log, deadline, counts):
    users = client(a)["crash"]["users"]
    rng = random.Random(a.seed * 1000 + t)
    mine = []  # _ids of this writer's documents that exist
    n = 0
    v = 0
    while time.monotonic() < deadline:
        v += 1
        email = f"e{rng.randrange(EMAILS)}@x"
        roll = rng.random()
        if not mine or (roll < 0.45 and len(mine) < DOCS_PER_WRITER_MAX):
            n += 1
            rec = {"t": t, "id": f"r{a.round}-t{t}-{n}", "op": "insert", "email": email, "v": v}
        elif roll < 0.8:
            rec = {"t": t, "id": rng.choice(mine), "op": "update", "email": email, "v": v}
        else:
            rec = {"t": t, "id": rng.choice(mine), "op": "delete"}
        log.write({**rec, "sent": True})
        out = {"t": t, "id": rec["id"]}
        try:
            if rec["op"] == "insert":
                users.insert_one({"_id": rec["id"], "email": email, "v": v})
                out["n"] = 1
                mine.append(rec["id"])
            elif rec["op"] == "update":
                r = users.update_one({"_id": rec["id"]}, {"$set": {"email": email, "v": v}})
                out["n"] = r.matched_count
            else:
                r = users.delete_one({"_id": rec["id"]})
                out["n"] = r.deleted_count
                mine.remove(rec["id"])
            out["outcome"] = "ok"
        except DuplicateKeyError:
            out["outcome"] = "dup"
        except Exception as e:  # the server went away under the write
            out["outcome"] = "unknown"
            out["error"] = repr(e)[:300]
            log.write(out)
            return
        log.write(out)
        with log.lock:
            counts[out["outcome"]] += 1


def load(a):
    users = client(a)["crash"]["users"]
    users.create_index("email", unique=True)
    log = Log(a.log)
    deadline = time.monotonic() + a.seconds
    counts = {"ok": 0, "dup": 0}
    threads = [
        threading.Thread(target=writer, args=(a, t, log, deadline, counts))
        for t in range(a.threads)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print(json.dumps(counts))


def expected_states(log_path):
    """For each _id of the log: the states it may be in now (None: absent)."""
    # _id -> (state after its last acknowledged write, state after the write
    # in flight, whether one is in flight)
    states = {}
    sent = {}  # writer -> the write it sent and has no answer for yet
    with open(log_path) as f:
        for line in f:
            rec = json.loads(line)
            t, i = rec["t"], rec["id"]
            if rec.get("sent"):
                if t in sent:
                    fail(f"writer {t} sent {rec} before an answer to {sent[t]}")
                sent[t] = rec
                states.setdefault(i, (None, None, False))
                continue
            w = sent.pop(t, None)
            if w is None or w["id"] != i:
                fail(f"an answer without its write: {rec}")
            now = states[i][0]
            after = {"email": w["email"], "v": w["v"]} if w["op"] != "delete" else None
            if rec["outcome"] == "ok":
                # Every write addresses one document of its own writer:
                # an acknowledged one found it (or made it).
                if rec["n"] != 1:
                    fail(f"acknowledged {w} affected {rec['n']} documents, not 1")
                if (w["op"] == "insert") != (now is None):
                    fail(f"acknowledged {w} on a document in state {now}")
                states[i] = (after, None, False)
            elif rec["outcome"] == "dup":
                if w["op"] == "delete":
                    fail(f"a delete refused as a duplicate: {w}")
                states[i] = (now, None, False)
            else:
                states[i] = (now, after, True)
    # A write logged as sent whose answer the log lacks: in flight too.
    for w in sent.values():
        now = states[w["id"]][0]
        after = {"email": w["email"], "v": w["v"]} if w["op"] != "delete" else None
        states[w["id"]] = (now, after, True)
    return {i: [s] if not pending else [s, p] for i, (s, p, pending) in states.items()}


def verify(a):
    users = client(a)["crash"]["users"]
    docs = {d["_id"]: {"email": d.get("email"), "v": d.get("v")} for d in users.find({})}
    before = {}
    if os.path.exists(a.state):
        with open(a.state) as f:
            before = json.load(f)
    allowed = expected_states(a.log)
    uncertain = 0
    for i, states in allowed.items():
        # With a write in flight: before or after it, never half of it.
        uncertain += len(states) > 1
        got = docs.get(i)
        if got not in states:
            fail(f"{i} is {got}, but the acknowledged writes leave it {states[0]}"
                 + (f" (or {states[1]}: a write was in flight)" if len(states) > 1 else ""))
    for i, d in docs.items():
        if i not in allowed and i not in before:
            fail(f"{i} ({d}) is in the collection, but no write made it")
        if i in before and i not in allowed and before[i] != d:
            fail(f"{i} of an earlier round changed from {before[i]} to {d}")
    for i, d in before.items():
        if i not in allowed and i not in docs:
            fail(f"{i} of an earlier round ({d}) is gone")
    # The unique index holds, and agrees with the documents.
    emails = [d["email"] for d in docs.values()]
    if len(emails) != len(set(emails)):
        dups = sorted({e for e in emails if emails.count(e) > 1})
        fail(f"the unique index let emails be shared: {dups}")
    for i, d in docs.items():
        found = [x["_id"] for x in users.find({"email": d["email"]})]
        if found != [i]:
            fail(f"the index finds {found} for {d['email']}, the documents say [{i!r}]")
    plan = users.find({"email": "e0@x"}).explain()["queryPlanner"]["winningPlan"]
    stage = plan.get("inputStage", plan)
    if stage.get("stage") != "IXSCAN" or stage.get("indexName") != "email_1":
        fail(f"a query by email does not read the unique index: {plan}")
    with open(a.state, "w") as f:
        json.dump(docs, f)
    print(json.dumps({"documents": len(docs), "logged": len(allowed), "uncertain": uncertain}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["load", "verify"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--ticket", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--state")
    p.add_argument("--round", type=int, default=0)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.mode == "verify" and not a.state:
        p.error("verify needs --state")
    {"load": load, "verify": verify}[a.mode](a)


if __name__ == "__main__":
    main()
