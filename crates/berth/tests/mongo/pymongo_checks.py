"""Checks a Berth server's MongoDB listener with pymongo, as an unmodified
application would use it. Usage:

    pymongo_checks.py CHECK --port P --ca CA --user U --password PW [--mechanism M]

CHECK is one of: crud, indexes, planner, ttl (needs a short --ttl-sweep-ms), seed (a
document in shop.private), denied, transactions, quota (needs a volume at
/quota with a quota of 64 KiB). Prints what failed and exits 1 on failure.
"""

import argparse
import datetime
import sys
import time

import pymongo
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure


def client(a, **kwargs):
    """The connection string a user writes: no directConnection, so the
    driver discovers what the server is (a mongos) as it would anywhere."""
    uri = (
        f"mongodb://{a.user}:{a.password}@127.0.0.1:{a.port}/"
        f"?tls=true&tlsCAFile={a.ca}&authMechanism={a.mechanism}"
        f"&serverSelectionTimeoutMS=20000"
    )
    if a.mechanism == "PLAIN":
        uri += "&authSource=$external"
    return pymongo.MongoClient(uri, **kwargs)


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def crud(a):
    c = client(a)
    db = c["shop"]
    users = db["users"]
    users.drop()
    # Inserts: one, many, generated ObjectIds, a duplicate _id.
    r = users.insert_one({"_id": 1, "name": "ada", "age": 36, "tags": ["math", "code"]})
    check(r.inserted_id == 1, "insert_one id")
    r = users.insert_many(
        [{"name": f"user{i}", "age": 20 + i, "group": i % 3} for i in range(10)]
    )
    check(len(r.inserted_ids) == 10, "insert_many ids")
    try:
        users.insert_one({"_id": 1, "name": "dup"})
        check(False, "a duplicate _id was accepted")
    except DuplicateKeyError as e:
        check(e.code == 11000, f"duplicate code {e.code}")
    # 1.0 and NumberLong(1) are the same _id as 1.
    try:
        users.insert_one({"_id": 1.0})
        check(False, "_id 1.0 was accepted beside _id 1")
    except DuplicateKeyError:
        pass
    check("users" in db.list_collection_names(), "list_collection_names")
    check("shop" in c.list_database_names(), "list_database_names")

    # Finds: filter, sort, skip, limit, projection, batches.
    ada = users.find_one({"name": "ada"})
    check(ada is not None and ada["age"] == 36, f"find_one {ada}")
    older = list(users.find({"age": {"$gte": 25}}).sort("age", -1))
    check([d["age"] for d in older] == [36, 29, 28, 27, 26, 25], f"sorted {older}")
    page = list(users.find({}, {"name": 1, "_id": 0}).sort("age", 1).skip(2).limit(3))
    check(page == [{"name": "user2"}, {"name": "user3"}, {"name": "user4"}], f"page {page}")
    many = list(users.find({"group": 1}).batch_size(2))
    check(len(many) == 3, f"batched find {len(many)}")
    every = list(users.find().batch_size(3))
    check(len(every) == 11, f"every document in batches of 3: {len(every)}")
    check(users.find_one({"tags": "code"})["_id"] == 1, "array element match")
    # A filter pinning _id reads those documents by key, not by a scan.
    plan = users.find({"_id": {"$in": [1, 99]}}).explain()
    stats = plan["executionStats"]
    check(
        plan["queryPlanner"]["winningPlan"]["stage"] == "IDHACK"
        and stats["totalDocsExamined"] == 1 and stats["nReturned"] == 1,
        f"_id lookup plan {plan}",
    )
    # A range on _id reads the documents in _id order from its bound: with
    # the sort on _id and a limit, only as many as it returns (YCSB E).
    ranged = db["ranged"]
    ranged.drop()
    ranged.insert_many([{"_id": f"k{i:03}", "n": i} for i in range(300)] + [{"_id": i} for i in range(5)])
    got = [d["n"] for d in ranged.find({"_id": {"$gte": "k100"}}).sort("_id", 1).limit(3)]
    check(got == [100, 101, 102], f"_id range with sort and limit {got}")
    got = [d["n"] for d in ranged.find({"_id": {"$gt": "k297"}})]
    check(got == [298, 299], f"_id range to the end, strings only {got}")
    got = [d["_id"] for d in ranged.find({"_id": {"$lt": 3}}).sort("_id", 1)]
    check(got == [0, 1, 2], f"_id range below a number {got}")
    plan = ranged.find({"_id": {"$gte": "k100"}}).sort("_id", 1).limit(3).explain()
    stats = plan["executionStats"]
    ix = plan["queryPlanner"]["winningPlan"].get("inputStage", {})
    check(
        ix.get("indexName") == "_id_" and ix.get("providesSort")
        and stats["totalDocsExamined"] == 3 and stats["nReturned"] == 3,
        f"_id range plan {plan}",
    )
    ranged.drop()
    check(users.count_documents({"group": 0}) == 4, "count_documents")
    check(users.estimated_document_count() == 11, "estimated_document_count")
    check(sorted(users.distinct("group")) == [0, 1, 2], "distinct")

    # Updates.
    r = users.update_one({"name": "ada"}, {"$set": {"city": "London"}, "$inc": {"age": 1}})
    check(r.matched_count == 1 and r.modified_count == 1, "update_one")
    check(users.find_one({"_id": 1})["age"] == 37, "$inc applied")
    r = users.update_many({"group": 2}, {"$set": {"flag": True}})
    check(r.matched_count == 3 and r.modified_count == 3, f"update_many {r.raw_result}")
    r = users.update_one({"name": "grace"}, {"$set": {"age": 85}}, upsert=True)
    check(r.upserted_id is not None, "upsert inserted")
    check(users.find_one({"name": "grace"})["age"] == 85, "upserted document")
    r = users.replace_one({"_id": 1}, {"name": "ada lovelace"})
    check(r.modified_count == 1, "replace_one")
    check(users.find_one({"_id": 1}) == {"_id": 1, "name": "ada lovelace"}, "replaced")
    doc = users.find_one_and_update(
        {"name": "user0"},
        {"$push": {"log": "seen"}},
        return_document=pymongo.ReturnDocument.AFTER,
    )
    check(doc["log"] == ["seen"], f"find_one_and_update {doc}")

    # Aggregation.
    groups = list(
        users.aggregate(
            [
                {"$match": {"group": {"$exists": True}}},
                {"$group": {"_id": "$group", "n": {"$sum": 1}, "avg": {"$avg": "$age"}}},
                {"$sort": {"_id": 1}},
            ]
        )
    )
    check([g["n"] for g in groups] == [4, 3, 3], f"aggregate {groups}")

    # Deletes.
    r = users.delete_one({"name": "user1"})
    check(r.deleted_count == 1, "delete_one")
    r = users.delete_many({"group": 2})
    check(r.deleted_count == 3, "delete_many")
    check(users.count_documents({}) == 8, f"count after deletes {users.count_documents({})}")

    # Errors in MongoDB's terms; the connection keeps working after them.
    try:
        users.find_one({"$bogus": 1})
        check(False, "an unknown top-level operator was accepted")
    except OperationFailure as e:
        check(e.code == 2, f"bad operator code {e.code}")
    check(users.find_one({"_id": 1}) is not None, "served after an error")
    db.drop_collection("users")
    check("users" not in db.list_collection_names(), "dropped")
    retryable(a, c)
    print("ok")


def retryable(a, c):
    """A retried write (same session, same txnNumber, as a driver sends
    after a lost connection) is answered, not applied again. A driver
    retries a command only until it sends the session's next one."""
    from bson.int64 import Int64

    db = c["shop"]
    db.drop_collection("retry")
    with c.start_session() as s:
        for _ in range(2):
            r = db.command(
                "insert", "retry", documents=[{"_id": 1}, {"_id": 2}],
                txnNumber=Int64(1), session=s,
            )
            check(r["n"] == 2 and "writeErrors" not in r, f"retried insert {r}")
        for _ in range(2):
            r = db.command(
                "update", "retry", updates=[{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}}],
                txnNumber=Int64(2), session=s,
            )
            check(r["n"] == 1 and r["nModified"] == 1, f"retried update {r}")
        check(db["retry"].find_one({"_id": 1})["n"] == 1, "a retried $inc applied once")
        for _ in range(2):
            r = db.command(
                "delete", "retry", deletes=[{"q": {}, "limit": 1}],
                txnNumber=Int64(3), session=s,
            )
            check(r["n"] == 1, f"retried delete {r}")
        check(db["retry"].count_documents({}) == 1, "a retried delete removed one")
        # A new number is a new write.
        r = db.command(
            "delete", "retry", deletes=[{"q": {}, "limit": 1}],
            txnNumber=Int64(4), session=s,
        )
        check(r["n"] == 1 and db["retry"].count_documents({}) == 0, f"new txnNumber {r}")
        # findAndModify: the retry returns the document the first try did.
        db["retry"].insert_one({"_id": "k", "n": 0})
        for _ in range(2):
            r = db.command(
                "findAndModify", "retry", query={"_id": "k"}, update={"$inc": {"n": 1}},
                new=True, txnNumber=Int64(5), session=s,
            )
            check(r["value"] == {"_id": "k", "n": 1}, f"retried findAndModify {r}")
        for _ in range(2):
            r = db.command(
                "findAndModify", "retry", query={"_id": "k"}, remove=True,
                txnNumber=Int64(6), session=s,
            )
            check(r["value"] == {"_id": "k", "n": 1}, f"retried remove {r}")
    # The driver's own retryable writes (retryWrites is on by default): it
    # sees a mongos, so it numbers every retryable write itself.
    from pymongo import monitoring

    class Sent(monitoring.CommandListener):
        def __init__(self):
            self.commands = []

        def started(self, event):
            self.commands.append((event.command_name, event.command.get("txnNumber")))

        def succeeded(self, event):
            pass

        def failed(self, event):
            pass

    sent = Sent()
    watched = client(a, event_listeners=[sent])
    check(
        watched.admin.command("hello").get("msg") == "isdbgrid",
        "the server answers hello as a mongos",
    )
    wdb = watched["shop"]
    r = wdb["retry"].insert_one({"_id": "driver"})
    check(r.inserted_id == "driver", "insert_one with retryWrites")
    wdb["retry"].update_one({"_id": "driver"}, {"$set": {"n": 1}})
    wdb["retry"].find_one_and_update({"_id": "driver"}, {"$inc": {"n": 1}})
    wdb["retry"].delete_one({"_id": "driver"})
    numbered = [n for n, t in sent.commands if t is not None]
    check(
        numbered == ["insert", "update", "findAndModify", "delete"],
        f"the driver's retryable writes carry txnNumber: {sent.commands}",
    )
    watched.close()
    db.drop_collection("retry")


def indexes(a):
    c = client(a)
    events = c["shop"]["events"]
    events.drop()
    events.insert_many(
        [{"_id": i, "user": f"u{i % 10}", "ts": i, "email": f"e{i}@x"} for i in range(500)]
    )
    # Built over the documents already there, then kept by every write.
    name = events.create_index([("user", 1), ("ts", -1)])
    check(name == "user_1_ts_-1", f"index name {name}")
    events.create_index("email", unique=True)
    names = sorted(i["name"] for i in events.list_indexes())
    check(names == ["_id_", "email_1", "user_1_ts_-1"], f"list_indexes {names}")
    try:
        events.insert_one({"_id": 1000, "email": "e1@x"})
        check(False, "a duplicate in a unique index was accepted")
    except DuplicateKeyError as e:
        check("email_1" in str(e), f"duplicate names the index: {e}")
    # The compound query DocumentDB-based engines cannot serve from an index.
    latest = list(events.find({"user": "u3"}).sort("ts", -1).limit(5))
    check([d["ts"] for d in latest] == [493, 483, 473, 463, 453], f"latest {latest}")
    plan = events.find({"user": "u3"}).sort("ts", -1).limit(5).explain()
    stage = plan["queryPlanner"]["winningPlan"]["inputStage"]
    check(stage["stage"] == "IXSCAN" and stage["indexName"] == "user_1_ts_-1", f"plan {plan}")
    stats = plan["executionStats"]
    check(stats["totalKeysExamined"] <= 6 and stats["nReturned"] == 5, f"examined {stats}")
    # No index leads with ts: a range on it scans the collection.
    full = events.find({"ts": {"$gt": 1}}).explain()
    check(full["queryPlanner"]["winningPlan"]["stage"] == "COLLSCAN", f"no index on ts: {full}")
    # With one, a range reads only its keys.
    events.create_index("ts")
    rng = events.find({"ts": {"$gte": 100, "$lt": 150}}).explain()
    stage = rng["queryPlanner"]["winningPlan"]["inputStage"]
    check(stage["stage"] == "IXSCAN" and stage["indexName"] == "ts_1", f"range plan {rng}")
    check(stage["indexBounds"] == {"ts": ["[100, 150)"]}, f"range bounds {stage}")
    stats = rng["executionStats"]
    check(stats["nReturned"] == 50 and stats["totalKeysExamined"] <= 50, f"range examined {stats}")
    got = sorted(d["_id"] for d in events.find({"ts": {"$gte": 100, "$lt": 150}}))
    check(got == list(range(100, 150)), f"range result {got}")
    # $in on the leading field, sorted on the next: the runs merged in order.
    query = {"user": {"$in": ["u1", "u2"]}}
    top = [d["ts"] for d in events.find(query).sort("ts", -1).limit(4)]
    check(top == [492, 491, 482, 481], f"$in sorted {top}")
    plan = events.find(query).sort("ts", -1).limit(4).explain()
    stage = plan["queryPlanner"]["winningPlan"]["inputStage"]
    check(stage["indexName"] == "user_1_ts_-1" and stage["providesSort"], f"$in plan {plan}")
    check(plan["executionStats"]["totalKeysExamined"] <= 6, f"$in examined {plan}")
    # An anchored regex is a string range.
    plan = events.find({"email": {"$regex": "^e12"}}).explain()
    stage = plan["queryPlanner"]["winningPlan"]["inputStage"]
    check(stage["stage"] == "IXSCAN" and stage["indexName"] == "email_1", f"regex plan {plan}")
    stats = plan["executionStats"]
    check(stats["nReturned"] == 11 and stats["totalKeysExamined"] <= 11, f"regex examined {stats}")
    check(events.count_documents({"user": "u7"}) == 50, "count through the index")
    # Writes keep the index: a moved document is found under its new key.
    events.update_one({"_id": 3}, {"$set": {"user": "moved"}})
    check([d["_id"] for d in events.find({"user": "moved"})] == [3], "updated entry")
    check(events.count_documents({"user": "u3"}) == 49, "old entry gone")
    events.delete_many({"user": "u4"})
    check(events.count_documents({"user": "u4"}) == 0, "deleted entries gone")
    # A unique index the documents violate is refused, and not left behind.
    # (each with its own email: a missing one is null, unique too)
    events.insert_many([{"team": "red", "email": "r1"}, {"team": "red", "email": "r2"}])
    try:
        events.create_index("team", unique=True)
        check(False, "a unique index over duplicates was made")
    except OperationFailure as e:
        check(e.code == 11000, f"unique build code {e.code}")
    check("team_1" not in [i["name"] for i in events.list_indexes()], "failed index removed")
    events.drop_index("email_1")
    events.insert_one({"_id": 1001, "email": "e1@x"})
    print("ok")


def planner(a):
    """Reverse index scans, $or as a union of index scans, and what
    explain says of them (MongoDB's stage names and directions)."""
    c = client(a)
    events = c["shop"]["planned"]
    events.drop()
    docs = [{"_id": i, "user": f"u{i % 10}", "ts": i, "kind": f"k{i % 7}"} for i in range(500)]
    events.insert_many(docs)
    events.create_index([("user", 1), ("ts", 1)])
    events.create_index("kind")

    def ixscan(plan):
        stage = plan["queryPlanner"]["winningPlan"]
        while stage.get("stage") != "IXSCAN":
            stage = stage["inputStage"]
        return stage

    # The latest of a user: {user: 1, ts: 1} read backward.
    cur = lambda: events.find({"user": "u3"}).sort("ts", -1).limit(5)
    got = [d["ts"] for d in cur()]
    check(got == [493, 483, 473, 463, 453], f"latest of u3 {got}")
    plan = cur().explain()
    stage = ixscan(plan)
    check(stage["indexName"] == "user_1_ts_1", f"index {plan}")
    check(stage["direction"] == "backward", f"direction {stage}")
    check(
        stage["indexBounds"] == {"user": ['["u3", "u3"]'], "ts": ["[MaxKey, MinKey]"]},
        f"bounds {stage}",
    )
    check(plan["queryPlanner"]["winningPlan"]["stage"] == "FETCH", f"no blocking sort {plan}")
    stats = plan["executionStats"]
    check(stats["totalKeysExamined"] == 5 and stats["nReturned"] == 5, f"examined {stats}")
    # Every field against the index.
    got = [(d["user"], d["ts"]) for d in events.find().sort([("user", -1), ("ts", -1)]).limit(3)]
    check(got == [("u9", 499), ("u9", 489), ("u9", 479)], f"both descending {got}")
    plan = events.find().sort([("user", -1), ("ts", -1)]).limit(3).explain()
    stage = ixscan(plan)
    check(stage["direction"] == "backward", f"both descending plan {plan}")
    check(plan["executionStats"]["totalKeysExamined"] == 3, f"both descending examined {plan}")
    # A range backward.
    q = {"user": "u4", "ts": {"$gte": 100, "$lt": 200}}
    got = [d["ts"] for d in events.find(q).sort("ts", -1)]
    check(got == list(range(194, 99, -10)), f"range backward {got}")
    stage = ixscan(events.find(q).sort("ts", -1).explain())
    check(stage["indexBounds"]["ts"] == ["(200, 100]"], f"range bounds {stage}")
    # The newest documents: the _id index backward.
    got = [d["_id"] for d in events.find().sort("_id", -1).limit(4)]
    check(got == [499, 498, 497, 496], f"newest {got}")
    plan = events.find().sort("_id", -1).limit(4).explain()
    stage = ixscan(plan)
    check(stage["indexName"] == "_id_" and stage["direction"] == "backward", f"_id plan {plan}")
    check(plan["executionStats"]["totalKeysExamined"] == 4, f"_id examined {plan}")

    # $or: one index scan per branch, united, each document once.
    q = {"$or": [{"user": "u1", "ts": {"$lt": 50}}, {"kind": "k3"}]}
    want = sorted(d["_id"] for d in docs if (d["user"] == "u1" and d["ts"] < 50) or d["kind"] == "k3")
    got = sorted(d["_id"] for d in events.find(q))
    check(got == want, f"$or result {got} != {want}")
    check(events.count_documents(q) == len(want), "$or count")
    plan = events.find(q).explain()
    top = plan["queryPlanner"]["winningPlan"]
    check(top["stage"] == "SUBPLAN", f"$or plan {plan}")
    fetch = top["inputStage"]
    check(fetch["stage"] == "FETCH" and fetch["inputStage"]["stage"] == "OR", f"$or stages {top}")
    inputs = fetch["inputStage"]["inputStages"]
    check(
        [(s["stage"], s["indexName"]) for s in inputs]
        == [("IXSCAN", "user_1_ts_1"), ("IXSCAN", "kind_1")],
        f"$or inputs {inputs}",
    )
    stats = plan["executionStats"]
    branch_keys = 5 + sum(1 for d in docs if d["kind"] == "k3")
    check(stats["nReturned"] == len(want), f"$or returned {stats}")
    check(stats["totalKeysExamined"] == branch_keys, f"$or keys {stats}")
    # A document both branches reach is fetched once (31 is u1 and k3).
    check(stats["totalDocsExamined"] == len(want), f"$or docs {stats}")
    ex_inputs = stats["executionStages"]["inputStage"]["inputStage"]["inputStages"]
    check([s["keysExamined"] for s in ex_inputs] == [5, branch_keys - 5], f"per branch {ex_inputs}")
    # Sorted: a blocking sort of the union.
    by_ts = sorted((d for d in docs if d["_id"] in set(want)), key=lambda d: -d["ts"])
    got = [d["_id"] for d in events.find(q).sort("ts", -1).limit(6)]
    check(got == [d["_id"] for d in by_ts[:6]], f"$or sorted {got}")
    top = events.find(q).sort("ts", -1).limit(6).explain()["queryPlanner"]["winningPlan"]
    check(top["stage"] == "SUBPLAN" and top["inputStage"]["stage"] == "SORT", f"$or sort {top}")
    # With a condition beside the $or, applied to every document.
    q2 = {"ts": {"$gt": 400}, "$or": [{"user": "u1"}, {"kind": "k3"}]}
    got = sorted(d["_id"] for d in events.find(q2))
    want2 = sorted(
        d["_id"] for d in docs if d["ts"] > 400 and (d["user"] == "u1" or d["kind"] == "k3")
    )
    check(got == want2, f"$or beside {got} != {want2}")
    # A branch without an index: the collection is scanned.
    q3 = {"$or": [{"user": "u1"}, {"nothing": 1}]}
    plan = events.find(q3).explain()
    check(plan["queryPlanner"]["winningPlan"]["stage"] == "COLLSCAN", f"unindexed branch {plan}")
    check(len(list(events.find(q3))) == 50, "unindexed branch result")

    # In a transaction, a backward scan sees the transaction's own insert.
    with c.start_session() as s:
        s.start_transaction()
        events.insert_one({"_id": 1000, "user": "u3", "ts": 9999, "kind": "k0"}, session=s)
        got = [d["_id"] for d in events.find({"user": "u3"}, session=s).sort("ts", -1).limit(2)]
        check(got == [1000, 493], f"in the transaction {got}")
        got = [d["_id"] for d in events.find({}, session=s).sort("_id", -1).limit(1)]
        check(got == [1000], f"newest in the transaction {got}")
        got = [d["_id"] for d in events.find({"user": "u3"}).sort("ts", -1).limit(1)]
        check(got == [493], f"outside the transaction {got}")
        s.abort_transaction()
    got = [d["_id"] for d in events.find().sort("_id", -1).limit(1)]
    check(got == [499], f"after the abort {got}")
    events.drop()
    print("ok")


def ttl(a):
    # The server runs its TTL sweep often (--ttl-sweep-ms): a document
    # past its date goes within seconds.
    c = client(a)
    sessions = c["shop"]["sessions"]
    sessions.drop()
    name = sessions.create_index("at", expireAfterSeconds=0)
    spec = [i for i in sessions.list_indexes() if i["name"] == name]
    check(spec and spec[0].get("expireAfterSeconds") == 0, f"listed {spec}")
    now = datetime.datetime.now(datetime.timezone.utc)
    sessions.insert_many(
        [
            {"_id": 1, "at": now - datetime.timedelta(minutes=5)},
            {"_id": 2, "at": now + datetime.timedelta(days=1)},
            {"_id": 3, "at": "not a date"},
            {"_id": 4, "at": [now + datetime.timedelta(days=1), datetime.datetime(2000, 1, 1)]},
        ]
    )
    deadline = time.time() + 20
    left = None
    while time.time() < deadline:
        left = sorted(d["_id"] for d in sessions.find())
        if left == [2, 3]:
            break
        time.sleep(0.2)
    check(left == [2, 3], f"after the sweep {left}")
    try:
        sessions.create_index([("a", 1), ("b", 1)], expireAfterSeconds=5)
        check(False, "a compound TTL index was made")
    except OperationFailure as e:
        check(e.code == 67, f"compound TTL code {e.code}")
    print("ok")


def seed(a):
    c = client(a)
    c["shop"]["private"].insert_one({"_id": "secret", "x": 1})
    check(c["shop"]["private"].count_documents({}) == 1, "seeded")
    print("ok")


def denied(a):
    c = client(a)
    try:
        c["shop"]["private"].find_one({})
        check(False, "a read of a table the user may not read succeeded")
    except OperationFailure as e:
        check(e.code == 13, f"denied read code {e.code}: {e}")
    try:
        c["shop"]["private"].insert_one({"x": 1})
        check(False, "a write to a table the user may not write succeeded")
    except OperationFailure as e:
        check(e.code == 13, f"denied write code {e.code}: {e}")
    print("ok")


def transactions(a):
    """Multi-document transactions: all or nothing, isolated until
    commit, conflicts retried by with_transaction, errors abort."""
    import threading

    from pymongo.errors import PyMongoError

    c = client(a)
    db = c["bank"]
    acc = db["accounts"]
    acc.drop()
    acc.insert_many([{"_id": "alice", "n": 100}, {"_id": "bob", "n": 0}])

    # Commit: both writes appear together, not before.
    with c.start_session() as s:
        with s.start_transaction():
            acc.update_one({"_id": "alice"}, {"$inc": {"n": -30}}, session=s)
            acc.update_one({"_id": "bob"}, {"$inc": {"n": 30}}, session=s)
            acc.insert_one({"_id": "log1", "what": "alice->bob 30"}, session=s)
            inside = acc.find_one({"_id": "bob"}, session=s)
            check(inside["n"] == 30, f"the transaction reads its own write {inside}")
            check(acc.find_one({"_id": "bob"})["n"] == 0, "a write seen before commit")
            check(acc.find_one({"_id": "log1"}) is None, "an insert seen before commit")
            n = acc.count_documents({}, session=s)
            check(n == 3, f"count_documents in the transaction: {n}")
    check(acc.find_one({"_id": "alice"})["n"] == 70, "committed debit")
    check(acc.find_one({"_id": "bob"})["n"] == 30, "committed credit")
    check(acc.find_one({"_id": "log1"}) is not None, "committed insert")

    # Abort: nothing stays.
    with c.start_session() as s:
        s.start_transaction()
        acc.delete_many({}, session=s)
        check(acc.count_documents({}, session=s) == 0, "deleted inside")
        s.abort_transaction()
    check(acc.count_documents({}) == 3, "an aborted transaction left changes")

    # An error inside aborts the transaction; the commit then fails.
    with c.start_session() as s:
        s.start_transaction()
        acc.insert_one({"_id": "log2"}, session=s)
        try:
            acc.insert_one({"_id": "alice"}, session=s)
            check(False, "a duplicate _id was accepted in a transaction")
        except DuplicateKeyError:
            pass
        try:
            s.commit_transaction()
            check(False, "a transaction whose write failed committed")
        except OperationFailure as e:
            check(e.code == 251, f"commit after a failed write: {e.code} {e}")
        except PyMongoError:
            pass
    check(acc.find_one({"_id": "log2"}) is None, "a failed transaction's insert stayed")

    # A collection (and its database) made by a first insert in a
    # transaction is the transaction's: seen by it alone, there once it
    # commits, gone when it aborts.
    c.drop_database("txnmade")
    made = c["txnmade"]["made"]
    with c.start_session() as s:
        with s.start_transaction():
            made.insert_one({"_id": 1}, session=s)
            made.update_one({"_id": 2}, {"$set": {"n": 2}}, upsert=True, session=s)
            got = list(made.find({}, session=s).sort("_id", 1))
            check(got == [{"_id": 1}, {"_id": 2, "n": 2}], f"the new collection inside: {got}")
            names = c["txnmade"].list_collection_names()
            check("made" not in names, f"a collection made in a transaction seen before commit: {names}")
    got = list(made.find({}).sort("_id", 1))
    check(got == [{"_id": 1}, {"_id": 2, "n": 2}], f"the new collection after commit: {got}")
    with c.start_session() as s:
        s.start_transaction()
        c["txnmade"]["never"].insert_one({"_id": 1}, session=s)
        c["txnnever"]["never"].insert_one({"_id": 1}, session=s)
        s.abort_transaction()
    names = c["txnmade"].list_collection_names()
    check(names == ["made"], f"an aborted transaction's collection stayed: {names}")
    dbs = c.list_database_names()
    check("txnnever" not in dbs, f"an aborted transaction's database stayed: {dbs}")
    c.drop_database("txnmade")

    # Commands a transaction cannot run are refused in its terms.
    with c.start_session() as s:
        s.start_transaction()
        try:
            db.command("count", "accounts", session=s)
            check(False, "count ran in a transaction")
        except OperationFailure as e:
            check(e.code == 263, f"count in a transaction: {e.code}")
        s.abort_transaction()

    # Conflicting transactions: with_transaction retries the loser; no
    # increment is lost.
    acc.insert_one({"_id": "counter", "n": 0})
    per_thread = 15

    def bump():
        cl = client(a)
        with cl.start_session() as s:
            for _ in range(per_thread):
                s.with_transaction(
                    lambda ss: cl["bank"]["accounts"].update_one(
                        {"_id": "counter"}, {"$inc": {"n": 1}}, session=ss
                    )
                )

    threads = [threading.Thread(target=bump) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = acc.find_one({"_id": "counter"})["n"]
    check(n == 3 * per_thread, f"conflicting transactions lost increments: {n}")
    acc.drop()
    print("ok")


def quota(a):
    """The table /quota/docs, in a volume of 64 KiB: inserts until the
    quota refuses one with 14031 OutOfDiskSpace, bulk writes get a
    writeError per document, the server keeps serving, and deletes make
    room again."""
    c = client(a)
    docs = c["any"]["/quota/docs"]
    docs.drop()
    pad = "x" * 1000
    n = 0
    refused = None
    while n < 1000:
        try:
            docs.insert_one({"_id": n, "pad": pad})
            n += 1
        except OperationFailure as e:
            refused = e
            break
    check(refused is not None, "1000 documents of 1 KiB went into a 64 KiB volume")
    check(refused.code == 14031, f"quota code {refused.code}: {refused}")
    msg = str(refused)
    check("/quota" in msg and "quota of" in msg, f"quota message: {msg}")
    check(30 < n < 64, f"{n} documents of 1 KiB in 64 KiB")
    bigger = pad + "y" * 200
    try:
        docs.insert_many([{"_id": 10000 + i, "pad": bigger} for i in range(3)], ordered=False)
        check(False, "an unordered insert past the quota succeeded")
    except BulkWriteError as e:
        errs = e.details["writeErrors"]
        check([w["index"] for w in errs] == [0, 1, 2], f"unordered writeErrors {errs}")
        check(all(w["code"] == 14031 for w in errs), f"unordered codes {errs}")
        check(e.details["nInserted"] == 0, f"unordered inserted {e.details}")
    try:
        docs.insert_many([{"_id": 20000 + i, "pad": bigger} for i in range(3)], ordered=True)
        check(False, "an ordered insert past the quota succeeded")
    except BulkWriteError as e:
        errs = e.details["writeErrors"]
        check([(w["index"], w["code"]) for w in errs] == [(0, 14031)], f"ordered {errs}")
    # Still serving: reads, an update that shrinks, not one that grows.
    check(docs.count_documents({}) == n, "count at the quota")
    r = docs.update_one({"_id": 0}, {"$set": {"pad": ""}})
    check(r.modified_count == 1, "a shrinking update")
    try:
        docs.update_one({"_id": 1}, {"$set": {"more": pad * 4}})
        check(False, "a growing update past the quota succeeded")
    except OperationFailure as e:
        check(e.code == 14031, f"growing update code {e.code}")
    # Deletes make room again.
    r = docs.delete_many({"_id": {"$lt": 10}})
    check(r.deleted_count == 10, f"deleted {r.deleted_count}")
    r = docs.insert_many([{"_id": 30000 + i, "pad": pad} for i in range(5)])
    check(len(r.inserted_ids) == 5, "inserts after deletes")
    docs.drop()
    print("ok")


def main():
    p = argparse.ArgumentParser()
    p.add_argument(
        "check",
        choices=["crud", "indexes", "planner", "ttl", "seed", "denied", "transactions", "quota"],
    )
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--mechanism", default="SCRAM-SHA-256")
    a = p.parse_args()
    checks = {
        "crud": crud,
        "indexes": indexes,
        "planner": planner,
        "ttl": ttl,
        "seed": seed,
        "denied": denied,
        "transactions": transactions,
        "quota": quota,
    }
    checks[a.check](a)


if __name__ == "__main__":
    main()
