"""Checks MongoDB change streams on a Berth server with pymongo, as an
unmodified application would use them. Usage:

    change_streams.py CHECK --port P --ca CA --user U --password PW [--mechanism M] [--state FILE]

CHECK is one of:
- events: a collection's and a database's streams see inserts, updates,
  replacements and deletes with MongoDB's fields, through a $match
  pipeline, with fullDocument updateLookup; a drop ends a collection's
  stream with invalidate, and startAfter that invalidate works.
- before-restart: writes 5 documents, keeps a resume token, writes 10 more
  and stores the token in --state.
- after-restart: resumes from the stored token and must see exactly the 10
  later inserts, in order, then a new one.
- denied: watching a table the user may not read is Unauthorized (13);
  a deployment's stream skips it.
Prints what failed and exits 1 on failure.
"""

import argparse
import json
import sys

import pymongo
from bson import Timestamp, json_util
from pymongo.errors import OperationFailure


def client(a):
    uri = (
        f"mongodb://{a.user}:{a.password}@127.0.0.1:{a.port}/"
        f"?tls=true&tlsCAFile={a.ca}&authMechanism={a.mechanism}"
        f"&serverSelectionTimeoutMS=20000"
    )
    if a.mechanism == "PLAIN":
        uri += "&authSource=$external"
    return pymongo.MongoClient(uri, directConnection=True)


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def next_events(stream, n, what):
    """The next n events of a stream, waiting a few seconds at most."""
    out = []
    for _ in range(200):
        e = stream.try_next()
        if e is not None:
            out.append(e)
            if len(out) == n:
                return out
    check(False, f"{what}: {len(out)} of {n} events came: {out}")


def events(a):
    c = client(a)
    db = c["cs"]
    coll = db["orders"]
    other = db["other"]
    coll.insert_one({"_id": 0, "seed": True})  # the collection exists
    with coll.watch(max_await_time_ms=200) as s, db.watch(
        max_await_time_ms=200
    ) as dbs, coll.watch(
        [{"$match": {"operationType": {"$in": ["insert", "delete"]}}}],
        full_document="updateLookup",
        max_await_time_ms=200,
    ) as filtered, coll.watch(
        full_document="updateLookup", max_await_time_ms=200
    ) as looked:
        check(s.resume_token is not None, "a new stream has a resume token")
        coll.insert_one({"_id": 1, "a": {"b": 1}, "n": 1})
        coll.update_one({"_id": 1}, {"$set": {"a.b": 2, "x": 5}, "$unset": {"n": ""}})
        coll.replace_one({"_id": 1}, {"v": "replaced"})
        coll.delete_one({"_id": 1})
        other.insert_one({"_id": "o"})
        got = next_events(s, 4, "collection stream")
        ops = [e["operationType"] for e in got]
        check(ops == ["insert", "update", "replace", "delete"], f"operations {ops}")
        ins, upd, rep, dele = got
        check(ins["ns"] == {"db": "cs", "coll": "orders"}, f"ns {ins['ns']}")
        check(ins["documentKey"] == {"_id": 1}, f"documentKey {ins['documentKey']}")
        check(ins["fullDocument"] == {"_id": 1, "a": {"b": 1}, "n": 1}, f"insert {ins}")
        check("clusterTime" in ins and "wallTime" in ins, f"times {ins}")
        ud = upd["updateDescription"]
        check(ud["updatedFields"] == {"a.b": 2, "x": 5}, f"updatedFields {ud}")
        check(ud["removedFields"] == ["n"], f"removedFields {ud}")
        check("fullDocument" not in upd or upd["fullDocument"] is None, f"no lookup {upd}")
        check(rep["fullDocument"] == {"_id": 1, "v": "replaced"}, f"replace {rep}")
        check(dele["documentKey"] == {"_id": 1} and "fullDocument" not in dele, f"delete {dele}")
        tokens = [e["_id"] for e in got]
        check(len(set(json.dumps(t, sort_keys=True) for t in tokens)) == 4, "distinct tokens")
        # The database's stream sees both collections, in commit order.
        got = next_events(dbs, 5, "database stream")
        check(
            [(e["ns"]["coll"], e["operationType"]) for e in got]
            == [("orders", "insert"), ("orders", "update"), ("orders", "replace"),
                ("orders", "delete"), ("other", "insert")],
            f"database stream {got}",
        )
        # A pipeline after $changeStream filters events.
        got = next_events(filtered, 2, "filtered stream")
        check([e["operationType"] for e in got] == ["insert", "delete"], f"filtered {got}")
        # updateLookup gives update events the document.
        got = next_events(looked, 2, "lookup stream")
        check(got[1]["fullDocument"] == {"_id": 1, "a": {"b": 2}, "x": 5}, f"lookup {got[1]}")
        # Resuming after the update gives what came after it.
        with coll.watch(resume_after=tokens[1], max_await_time_ms=200) as r:
            got = next_events(r, 2, "resumed stream")
            check([e["operationType"] for e in got] == ["replace", "delete"], f"resumed {got}")
        # A drop ends a collection's stream: drop, then invalidate.
        coll.drop()
        got = next_events(s, 2, "dropped collection's stream")
        check([e["operationType"] for e in got] == ["drop", "invalidate"], f"drop {got}")
        invalidate = got[1]["_id"]
        check(not s.alive, "the stream is closed after invalidate")
    # startAfter an invalidate opens a new stream on the new collection.
    with coll.watch(start_after=invalidate, max_await_time_ms=200) as s2:
        coll.insert_one({"_id": "again"})
        got = next_events(s2, 1, "startAfter stream")
        check(got[0]["documentKey"] == {"_id": "again"}, f"startAfter {got}")
    try:
        coll.watch(resume_after=invalidate)
        check(False, "resumeAfter an invalidate was accepted")
    except OperationFailure as e:
        check(e.code == 260, f"resumeAfter invalidate code {e.code}")
    try:
        coll.watch(resume_after={"_data": "82ABCDEF"})
        check(False, "a foreign resume token was accepted")
    except OperationFailure as e:
        check(e.code == 260, f"foreign token code {e.code}")
    print("ok")


def before_restart(a):
    c = client(a)
    coll = c["cs"]["durable"]
    coll.insert_many([{"_id": i} for i in range(5)])
    with coll.watch(max_await_time_ms=200) as s:
        coll.insert_one({"_id": 5})
        got = next_events(s, 1, "stream before restart")
        token = got[0]["_id"]
    coll.insert_many([{"_id": i} for i in range(6, 16)])
    with open(a.state, "w") as f:
        f.write(json_util.dumps(token))
    print("ok")


def after_restart(a):
    c = client(a)
    coll = c["cs"]["durable"]
    with open(a.state) as f:
        token = json_util.loads(f.read())
    with coll.watch(resume_after=token, max_await_time_ms=200) as s:
        got = next_events(s, 10, "resumed after restart")
        ids = [e["documentKey"]["_id"] for e in got]
        check(ids == list(range(6, 16)), f"events after the token {ids}")
        coll.insert_one({"_id": 16})
        got = next_events(s, 1, "a new event after restart")
        check(got[0]["documentKey"] == {"_id": 16}, f"new event {got}")
        check(s.try_next() is None, "nothing more")
    print("ok")


def seed(a):
    c = client(a)
    c["cs"]["private"].insert_one({"_id": "secret"})
    print("ok")


def denied(a):
    c = client(a)
    try:
        c["cs"]["private"].watch()
        check(False, "watching a table the user may not read succeeded")
    except OperationFailure as e:
        check(e.code == 13, f"denied watch code {e.code}: {e}")
    # A deployment's stream read from the start of the log gives the
    # user's own changes and skips the tables it may not read.
    c["bobdb"]["mine"].insert_one({"_id": "b"})
    start = Timestamp(0, 0)
    with c.watch(start_at_operation_time=start, max_await_time_ms=200) as s:
        got = next_events(s, 1, "deployment stream")
        check(got[0]["ns"] == {"db": "bobdb", "coll": "mine"}, f"first event {got}")
        check(s.try_next() is None, f"another's table leaked: {got}")
    print("ok")


def main():
    p = argparse.ArgumentParser()
    checks = {
        "events": events,
        "before-restart": before_restart,
        "after-restart": after_restart,
        "seed": seed,
        "denied": denied,
    }
    p.add_argument("check", choices=list(checks))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--mechanism", default="SCRAM-SHA-256")
    p.add_argument("--state")
    a = p.parse_args()
    checks[a.check](a)


if __name__ == "__main__":
    main()
