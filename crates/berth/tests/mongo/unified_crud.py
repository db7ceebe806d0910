"""Runs the MongoDB specifications' unified CRUD tests (`source/crud/tests/unified`)
against a Berth server with pymongo. The runner is Berth's own, written to the
unified test format's rules; the JSON files come from the pymongo source
distribution on PyPI (it ships them as `test/crud/unified/*.json`), downloaded
once with pip and kept in a cache, never committed. Usage:

    unified_crud.py fetch                 # download the files into the cache
    unified_crud.py run --port P --ca CA --user U --password PW [--mechanism M]
                        [--dir DIR] [--only SUBSTRING] [--verbose] [--summary FILE]

`run` prints one line per failed test and a summary: files, tests, passed,
skipped by reason, failed; it exits 1 when a test that was not skipped failed,
and 3 when the files could not be had (no pip, no network).

A test is skipped, with its reason counted, when it needs what this server is
not or does not have: runOnRequirements it does not meet (server version,
topology, serverless, auth, server parameters, CSFLE), failpoints
(`failPoint`), transactions, change streams, collations, views,
`$listLocalSessions` (no session cache), or an operation pymongo has no API
for. Everything else is run, events included: command
monitoring events (`expectEvents` of type command) are checked with a
pymongo CommandListener; other event types are not observed and their
expectations are skipped (counted apart, the test still runs).
"""

import argparse
import collections
import copy
import datetime
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

# The pymongo release whose sdist provides the spec files (the one
# scripts/test installs today). Pinned, so the count stays comparable.
SPEC_PYMONGO_VERSION = "4.20.1"
SPEC_PATH_IN_SDIST = "test/crud/unified/"


# ------------------------------------------------------------------ the files


def cache_root():
    base = os.environ.get("BERTH_CI_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "berth-ci"
    )
    return Path(base) / "mongo-specs" / f"pymongo-{SPEC_PYMONGO_VERSION}" / "crud-unified"


def fetch():
    """The directory of the spec files, downloading them when not cached."""
    dest = cache_root()
    if dest.is_dir() and any(dest.glob("*.json")):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="berth-specs-", dir=dest.parent) as tmp:
        out = subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                f"pymongo=={SPEC_PYMONGO_VERSION}", "--no-binary", ":all:", "--no-deps",
                "-d", tmp,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        sdists = list(Path(tmp).glob("pymongo-*.tar.gz"))
        if out.returncode != 0 or not sdists:
            raise RuntimeError(f"pip download pymongo=={SPEC_PYMONGO_VERSION} failed: {out.stderr}")
        staged = Path(tmp) / "crud-unified"
        staged.mkdir()
        n = 0
        with tarfile.open(sdists[0]) as tar:
            for m in tar.getmembers():
                # pymongo-X/test/crud/unified/NAME.json, nothing deeper.
                parts = m.name.split("/", 1)
                if len(parts) != 2 or not parts[1].startswith(SPEC_PATH_IN_SDIST):
                    continue
                name = parts[1][len(SPEC_PATH_IN_SDIST):]
                if not m.isfile() or "/" in name or not name.endswith(".json"):
                    continue
                f = tar.extractfile(m)
                (staged / name).write_bytes(f.read())
                n += 1
        if n == 0:
            raise RuntimeError(f"pymongo {SPEC_PYMONGO_VERSION}'s sdist has no {SPEC_PATH_IN_SDIST}")
        # Another run may have filled the cache meanwhile: keep the first.
        try:
            staged.rename(dest)
        except OSError:
            if not dest.is_dir():
                raise
    return dest


# ------------------------------------------------------------------ pymongo

import pymongo  # noqa: E402  (after the fetch helpers, which need only pip)
from bson import Code, DBRef, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, json_util  # noqa: E402
from bson.binary import Binary  # noqa: E402
from pymongo import ReturnDocument, monitoring  # noqa: E402
from pymongo import operations as ops  # noqa: E402
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError  # noqa: E402
from pymongo.read_concern import ReadConcern  # noqa: E402
from pymongo.read_preferences import make_read_preference, read_pref_mode_from_name  # noqa: E402
from pymongo.results import BulkWriteResult  # noqa: E402
from pymongo.write_concern import WriteConcern  # noqa: E402

# The unified format's type aliases ($$type), as BSON decodes to Python.
TYPES = {
    "double": (float,),
    "string": (str,),
    "object": (dict,),
    "array": (list,),
    "binData": (Binary, bytes),
    "undefined": (type(None),),
    "objectId": (ObjectId,),
    "bool": (bool,),
    "date": (datetime.datetime,),
    "null": (type(None),),
    "regex": (Regex, re.Pattern),
    "dbPointer": (DBRef,),
    "javascript": (str, Code),
    "symbol": (str,),
    "javascriptWithScope": (str, Code),
    "int": (int,),
    "long": (Int64,),
    "decimal": (Decimal128,),
    "maxKey": (MaxKey,),
    "minKey": (MinKey,),
    "number": (float, int, Int64, Decimal128),
}

# Commands whose events drivers never publish unless asked
# (observeSensitiveCommands), and the runner's own.
SENSITIVE = {
    "authenticate", "saslstart", "saslcontinue", "getnonce", "createuser", "updateuser",
    "copydbgetnonce", "copydbsaslstart", "copydb", "hello", "ismaster",
}


class Skip(Exception):
    """The test cannot run here; the message is the reason (counted)."""


class Failed(AssertionError):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


def camel_to_snake(name):
    return re.sub("([A-Z]+)", r"_\1", name).lower()


# ------------------------------------------------------------------ matching


class Matcher:
    """The unified format's result matching: extra fields are allowed in
    root-level documents only, numbers compare by value, `$$` operators."""

    def __init__(self, entities):
        self.entities = entities

    def match(self, expected, actual, path="", root=True, top=True):
        if isinstance(expected, dict):
            if len(expected) == 1:
                op, spec = next(iter(expected.items()))
                if op.startswith("$$"):
                    return self.special(op, spec, actual, path, top)
            check(isinstance(actual, dict), f"{path or '/'}: expected a document, got {actual!r}")
            for k, v in expected.items():
                sub = f"{path}.{k}"
                if isinstance(v, dict) and len(v) == 1 and next(iter(v)).startswith("$$"):
                    op, spec = next(iter(v.items()))
                    if k not in actual:
                        if op == "$$exists":
                            check(spec is False, f"{sub}: missing")
                            continue
                        if op == "$$unsetOrMatches":
                            continue
                        raise Failed(f"{sub}: missing (expected {v!r})")
                    self.special(op, spec, actual[k], sub, top=False)
                    continue
                check(k in actual, f"{sub}: missing (expected {v!r}) in {actual!r}")
                self.match(v, actual[k], sub, root=False, top=False)
            if not root:
                wanted = {
                    k
                    for k, v in expected.items()
                    if not (isinstance(v, dict) and v == {"$$exists": False})
                }
                extra = set(actual) - wanted
                check(not extra, f"{path or '/'}: unexpected fields {sorted(extra)} in {actual!r}")
            return
        if isinstance(expected, list):
            check(isinstance(actual, list), f"{path}: expected an array, got {actual!r}")
            check(
                len(expected) == len(actual),
                f"{path}: expected {len(expected)} elements, got {len(actual)}: {actual!r}",
            )
            for i, (e, a) in enumerate(zip(expected, actual)):
                # Documents in arrays at the root (a find's results) are
                # root-level documents too.
                self.match(e, a, f"{path}[{i}]", root=root and isinstance(e, dict), top=False)
            return
        if isinstance(expected, bool) or isinstance(actual, bool):
            check(
                type(expected) is type(actual) and expected == actual,
                f"{path}: expected {expected!r}, got {actual!r}",
            )
            return
        if isinstance(expected, (int, float)) and not isinstance(expected, bool):
            check(
                isinstance(actual, (int, float)) and expected == actual,
                f"{path}: expected {expected!r}, got {actual!r}",
            )
            return
        check(
            isinstance(actual, type(expected)) and expected == actual,
            f"{path}: expected {expected!r}, got {actual!r}",
        )

    def special(self, op, spec, actual, path, top):
        if op == "$$exists":
            check(spec is True, f"{path}: present but expected absent")
        elif op == "$$type":
            names = spec if isinstance(spec, list) else [spec]
            allowed = tuple(t for n in names for t in TYPES[n])
            check(isinstance(actual, allowed), f"{path}: {actual!r} is not of type {spec}")
            if names == ["int"] and isinstance(actual, Int64):
                raise Failed(f"{path}: {actual!r} is a long, not an int")
        elif op == "$$unsetOrMatches":
            # A whole result may be unset (None); a field, absent (above).
            if actual is None and top:
                return
            self.match(spec, actual, path, root=False, top=False)
        elif op == "$$matchesEntity":
            check(actual == self.entities[spec], f"{path}: {actual!r} is not entity {spec}")
        elif op == "$$sessionLsid":
            check(actual == self.entities.lsids[spec], f"{path}: not the lsid of {spec}")
        elif op == "$$lte":
            check(actual <= spec, f"{path}: {actual!r} > {spec!r}")
        elif op == "$$matchAsDocument":
            self.match(spec, json_util.loads(actual), path, root=False, top=False)
        elif op == "$$matchAsRoot":
            self.match(spec, actual, path, root=True, top=False)
        elif op == "$$matchesHexBytes":
            check(actual == bytes.fromhex(spec), f"{path}: bytes differ")
        else:
            raise Failed(f"{path}: unknown special operator {op}")


# ------------------------------------------------------------------ events


class Listener(monitoring.CommandListener):
    def __init__(self, observe, ignore, sensitive):
        self.observe = {e.lower() for e in observe}
        self.ignore = {c.lower() for c in ignore} | {"configurefailpoint"}
        if not sensitive:
            self.ignore |= SENSITIVE
        self.events = []

    def _add(self, kind, event):
        if kind.lower() in self.observe and event.command_name.lower() not in self.ignore:
            self.events.append((kind, event))

    def started(self, event):
        if event.command:
            self._add("commandStartedEvent", event)

    def succeeded(self, event):
        if event.reply:
            self._add("commandSucceededEvent", event)

    def failed(self, event):
        self._add("commandFailedEvent", event)


# ------------------------------------------------------------------ entities


class Entities(dict):
    def __init__(self):
        super().__init__()
        self.listeners = {}
        self.lsids = {}
        self.closers = []

    def close(self):
        for c in reversed(self.closers):
            try:
                c()
            except Exception:
                pass


def collection_options(opts):
    out = {}
    for k, v in (opts or {}).items():
        if k == "readConcern":
            out["read_concern"] = ReadConcern(**v)
        elif k == "writeConcern":
            w = dict(v)
            if "journal" in w:
                w["j"] = w.pop("journal")
            if "wtimeoutMS" in w:
                w["wtimeout"] = w.pop("wtimeoutMS")
            out["write_concern"] = WriteConcern(**w)
        elif k == "readPreference":
            out["read_preference"] = read_preference(v)
        elif k == "timeoutMS":
            out["timeout"] = v / 1000.0
        else:
            raise Skip(f"collection option {k}")
    return out


def read_preference(spec):
    if "hedge" in spec:
        # Hedged reads (mongos only) were removed from pymongo 4.20.
        raise Skip("hedged reads (pymongo 4.20 has none)")
    mode = read_pref_mode_from_name(spec["mode"])
    return make_read_preference(
        mode,
        tag_sets=spec.get("tagSets"),
        max_staleness=spec.get("maxStalenessSeconds", -1),
    )


class Server:
    """How to reach the server, and what it is."""

    def __init__(self, a):
        self.a = a
        self.admin = self.client()
        info = self.admin.admin.command("buildInfo")
        self.version = tuple(int(x) for x in info["version"].split(".")[:3])
        hello = self.admin.admin.command("hello")
        if hello.get("msg") == "isdbgrid":
            self.topology = "sharded"
        elif hello.get("setName"):
            self.topology = "replicaset"
        else:
            self.topology = "single"

    def client(self, **kwargs):
        a = self.a
        opts = dict(
            host="127.0.0.1",
            port=a.port,
            tls=True,
            tlsCAFile=a.ca,
            username=a.user,
            password=a.password,
            authMechanism=a.mechanism,
            serverSelectionTimeoutMS=20000,
            directConnection=True,
        )
        if a.mechanism == "PLAIN":
            opts["authSource"] = "$external"
        opts.update(kwargs)
        return pymongo.MongoClient(**opts)

    def unmet(self, reqs):
        """Why none of `reqs` (runOnRequirements) holds, or None when one does."""
        if not reqs:
            return None
        reasons = []
        for r in reqs:
            why = self.unmet_one(r)
            if why is None:
                return None
            reasons.append(why)
        return reasons[0]

    def unmet_one(self, r):
        def version(s):
            v = [int(x) for x in s.split(".")]
            return tuple((v + [0, 0, 0])[:3])

        if "minServerVersion" in r and version(r["minServerVersion"]) > self.version:
            return f"runOnRequirements: minServerVersion {r['minServerVersion']}"
        if "maxServerVersion" in r and version(r["maxServerVersion"]) < self.version:
            return f"runOnRequirements: maxServerVersion {r['maxServerVersion']}"
        tops = r.get("topologies")
        if tops and self.topology not in tops:
            return f"runOnRequirements: topology {'/'.join(tops)}"
        if r.get("serverless") == "require":
            return "runOnRequirements: serverless"
        if r.get("auth") is False:
            return "runOnRequirements: no auth"
        if r.get("serverParameters"):
            return "runOnRequirements: serverParameters"
        if r.get("csfle"):
            return "runOnRequirements: csfle"
        return None


# ------------------------------------------------------------------ operations

# Operations that need what Berth does not do (yet), with the reason.
UNSUPPORTED_OPS = {
    "failPoint": "failpoints",
    "targetedFailPoint": "failpoints",
    "startTransaction": "transactions",
    "withTransaction": "transactions",
    "commitTransaction": "transactions",
    "abortTransaction": "transactions",
    "createChangeStream": "change streams",
    # pymongo has no API for these (its own runner skips them too).
    "modifyCollection": "pymongo has no modifyCollection",
    "listIndexNames": "pymongo has no listIndexNames",
}


def uses(value, key):
    """Whether `key` appears as a field name anywhere in `value`."""
    if isinstance(value, dict):
        return any(k == key or uses(v, key) for k, v in value.items())
    if isinstance(value, list):
        return any(uses(v, key) for v in value)
    return False


def skip_reason(test, server):
    why = server.unmet(test.get("runOnRequirements"))
    if why:
        return why
    if "skipReason" in test:
        return f"skipReason: {test['skipReason']}"
    for op in test["operations"]:
        args = op.get("arguments", {})
        if op["name"] in UNSUPPORTED_OPS:
            return UNSUPPORTED_OPS[op["name"]]
        if uses(args, "collation"):
            return "collations (not supported by Berth yet)"
        if op["name"] == "createCollection" and "viewOn" in args:
            return "views (not supported by Berth yet)"
        if uses(args, "$listLocalSessions"):
            return "$listLocalSessions (Berth keeps no session cache yet)"
        if "timeoutMode" in args:
            return "pymongo has no timeoutMode"
    return None


def skip_group(why, server):
    """The kind of a skip reason, for the summary."""
    version = ".".join(map(str, server.version))
    if why.startswith("runOnRequirements: minServerVersion"):
        return f"need a server newer than {version}"
    if why.startswith("runOnRequirements: maxServerVersion"):
        return f"test a server older than {version}"
    if why.startswith("runOnRequirements: topology"):
        return f"need a topology other than {server.topology} (a replica set)"
    return why


def bulk_model(request):
    (name, spec), = request.items()
    cls = getattr(ops, name[0].upper() + name[1:])
    return cls(**{camel_to_snake(k): v for k, v in spec.items()})


def prepare(name, args, entities):
    """The spec's arguments as pymongo's keyword arguments."""
    out = {}
    for k, v in args.items():
        if k == "session":
            out["session"] = entities[v]
        elif k == "fieldName":
            out["key"] = v
        elif k == "returnDocument":
            out["return_document"] = getattr(ReturnDocument, v.upper())
        elif k == "requests":
            out["requests"] = [bulk_model(r) for r in v]
        elif k in ("batchSize", "allowDiskUse") and name == "aggregate":
            out[k] = v  # aggregate's extra keywords go to the command as they are
        elif k == "bypassDocumentValidation" and (name == "aggregate" or name.startswith("findOneAnd")):
            out[k] = v
        elif k == "maxTimeMS" and name not in ("find", "findOne"):
            out[k] = v
        elif k == "writeConcern":
            out["write_concern"] = WriteConcern(**v)
        elif k == "readConcern":
            out["read_concern"] = ReadConcern(**v)
        elif name == "createIndex" and k == "keys":
            out["keys"] = list(v.items())
        elif name == "dropIndex" and k == "name":
            out["index_or_name"] = v
        elif name in ("createCollection", "dropCollection") and k == "collection":
            out["name" if name == "createCollection" else "name_or_collection"] = v
        else:
            out[camel_to_snake(k)] = v
    return out


def coerce(name, result):
    """A pymongo result in the spec's result format."""
    if hasattr(result, "acknowledged") and not result.acknowledged:
        return {"acknowledged": False}
    if name == "bulkWrite":
        return bulk_result(result)
    if name == "insertOne":
        return {"insertedId": result.inserted_id}
    if name == "insertMany":
        return {"insertedIds": {str(i): v for i, v in enumerate(result.inserted_ids)}}
    if name in ("deleteOne", "deleteMany"):
        return {"deletedCount": result.deleted_count}
    if name in ("updateOne", "updateMany", "replaceOne"):
        out = {
            "matchedCount": result.matched_count,
            "modifiedCount": result.modified_count,
            "upsertedCount": 0 if result.upserted_id is None else 1,
        }
        if result.upserted_id is not None:
            out["upsertedId"] = result.upserted_id
        return out
    return result


def bulk_result(r):
    return {
        "deletedCount": r.deleted_count,
        "insertedCount": r.inserted_count,
        "matchedCount": r.matched_count,
        "modifiedCount": r.modified_count,
        "upsertedCount": r.upserted_count,
        "upsertedIds": {str(i): v for i, v in r.upserted_ids.items()},
        # pymongo's BulkWriteResult has no inserted ids; the spec allows
        # them unset ($$unsetOrMatches).
    }


def call(name, target, kw):
    """Runs one operation on an entity with pymongo; its raw result."""
    if name == "find":
        return list(target.find(**kw))
    if name == "findOne":
        return target.find_one(**kw)
    if name == "aggregate":
        return list(target.aggregate(**kw))
    if name == "count":
        # pymongo 4 has no Collection.count: the command, as the spec's
        # deprecated helper sent it.
        cmd = {"count": target.name, "query": kw.pop("filter", {})}
        session = kw.pop("session", None)
        for k, v in kw.items():
            cmd[{"max_time_ms": "maxTimeMS"}.get(k, k)] = v
        return target.database.command(cmd, session=session)["n"]
    if name == "distinct":
        return target.distinct(**kw)
    if name == "createCollection":
        kw.setdefault("check_exists", False)
        target.create_collection(**kw)
        return None
    if name == "listCollections":
        return list(target.list_collections(**kw))
    if name == "listIndexes":
        return list(target.list_indexes(**kw))
    if name == "runCommand":
        command = kw.pop("command")
        kw.pop("command_name", None)
        return target.command(command, **kw)
    method = getattr(target, camel_to_snake(name), None)
    if method is None:
        raise Skip(f"operation {name} is not known to the runner")
    return method(**kw)


def server_error(exc):
    return exc if isinstance(exc, OperationFailure) else None


def check_error(exc, spec, matcher):
    """`expectError` against the exception raised."""
    err = server_error(exc)
    if spec.get("isClientError"):
        check(not isinstance(exc, PyMongoError) or isinstance(exc, pymongo.errors.InvalidOperation)
              or isinstance(exc, pymongo.errors.ConfigurationError),
              f"expected a client error, got {exc!r}")
    if "errorContains" in spec:
        text = str(exc.details if isinstance(exc, BulkWriteError) else exc).lower()
        check(spec["errorContains"].lower() in text,
              f"error {text!r} lacks {spec['errorContains']!r}")
    if "errorCode" in spec:
        check(err is not None, f"expected a server error, got {exc!r}")
        code = err.details.get("code") if err.details else err.code
        if isinstance(exc, BulkWriteError):
            code = (exc.details.get("writeErrors") or [{}])[0].get("code")
        check(code == spec["errorCode"], f"expected error code {spec['errorCode']}, got {code}: {exc}")
    if "errorCodeName" in spec:
        check(err is not None, f"expected a server error, got {exc!r}")
        details = err.details or {}
        if isinstance(exc, BulkWriteError):
            details = (exc.details.get("writeErrors") or [{}])[0]
        check(details.get("codeName") == spec["errorCodeName"],
              f"expected codeName {spec['errorCodeName']}, got {details.get('codeName')}: {exc}")
    if "errorResponse" in spec:
        check(err is not None, f"expected a server error, got {exc!r}")
        matcher.match(spec["errorResponse"], err.details, "errorResponse")
    for label in spec.get("errorLabelsContain", []):
        check(err is not None and err.has_error_label(label), f"error lacks label {label}")
    for label in spec.get("errorLabelsOmit", []):
        check(err is None or not err.has_error_label(label), f"error has label {label}")
    if "expectResult" in spec:
        check(isinstance(exc, BulkWriteError), f"expectResult on a non-bulk error {exc!r}")
        matcher.match(spec["expectResult"], bulk_result(BulkWriteResult(exc.details, True)),
                      "expectResult")


# ------------------------------------------------------------------ a test


class Runner:
    def __init__(self, server, verbose):
        self.server = server
        self.verbose = verbose
        self.events_unchecked = 0

    def entities(self, specs, ents):
        for spec in specs:
            (kind, s), = spec.items()
            if kind == "client":
                unknown = set(s) - {
                    "id", "observeEvents", "ignoreCommandMonitoringEvents", "uriOptions",
                    "useMultipleMongoses", "observeSensitiveCommands",
                }
                if unknown:
                    raise Skip(f"client option {sorted(unknown)[0]}")
                listener = Listener(
                    s.get("observeEvents", []),
                    s.get("ignoreCommandMonitoringEvents", []),
                    s.get("observeSensitiveCommands", False),
                )
                opts = dict(s.get("uriOptions", {}))
                c = self.server.client(event_listeners=[listener], **opts)
                ents[s["id"]] = c
                ents.listeners[s["id"]] = listener
                ents.closers.append(c.close)
            elif kind == "database":
                ents[s["id"]] = ents[s["client"]].get_database(
                    s["databaseName"], **collection_options(s.get("databaseOptions"))
                )
            elif kind == "collection":
                ents[s["id"]] = ents[s["database"]].get_collection(
                    s["collectionName"], **collection_options(s.get("collectionOptions"))
                )
            elif kind == "session":
                opts = {camel_to_snake(k): v for k, v in s.get("sessionOptions", {}).items()}
                if "default_transaction_options" in opts:
                    raise Skip("transactions")
                session = ents[s["client"]].start_session(**opts)
                ents[s["id"]] = session
                ents.lsids[s["id"]] = copy.deepcopy(session.session_id)
                ents.closers.append(session.end_session)
            else:
                raise Skip(f"entity {kind}")

    def initial_data(self, data):
        c = self.server.admin
        for d in data:
            db = c[d["databaseName"]]
            db.drop_collection(d["collectionName"])
            opts = d.get("createOptions", {})
            if opts:
                db.create_collection(d["collectionName"], **opts)
            if d["documents"]:
                db[d["collectionName"]].insert_many(d["documents"])
            elif not opts:
                db.create_collection(d["collectionName"])

    def operation(self, op, ents, matcher):
        name = op["name"]
        target = ents[op["object"]] if op["object"] != "testRunner" else None
        if target is None:
            raise Skip(f"test runner operation {name}")
        kw = prepare(name, copy.deepcopy(op.get("arguments", {})), ents)
        try:
            result = call(name, target, kw)
        except Skip:
            raise
        except Exception as exc:  # noqa: BLE001 — the spec decides what is expected
            if op.get("ignoreResultAndError") and isinstance(exc, PyMongoError):
                return
            if "expectError" not in op:
                raise Failed(f"{name} raised {exc!r}") from exc
            check_error(exc, op["expectError"], matcher)
            return
        check("expectError" not in op, f"{name} succeeded ({result!r}) but expected {op.get('expectError')}")
        if "expectResult" in op:
            matcher.match(op["expectResult"], coerce(name, result), f"{name} result")
        if "saveResultAsEntity" in op:
            ents[op["saveResultAsEntity"]] = result

    def events(self, expected, ents, matcher):
        for e in expected:
            if e.get("eventType", "command") != "command":
                self.events_unchecked += 1
                continue
            listener = ents.listeners[e["client"]]
            actual = listener.events
            want = e["events"]
            if e.get("ignoreExtraEvents"):
                actual = actual[: len(want)]
            check(
                len(actual) == len(want),
                f"expected {len(want)} events, got {len(actual)}: "
                + ", ".join(f"{k}:{ev.command_name}" for k, ev in actual),
            )
            for i, (w, (kind, ev)) in enumerate(zip(want, actual)):
                (wkind, spec), = w.items()
                where = f"event {i} ({wkind})"
                check(wkind == kind, f"{where}: got {kind} {ev.command_name}")
                for field, value in spec.items():
                    if field == "command":
                        matcher.match(value, ev.command, f"{where}.command")
                    elif field == "reply":
                        matcher.match(value, ev.reply, f"{where}.reply")
                    elif field == "commandName":
                        check(ev.command_name == value, f"{where}: command {ev.command_name}")
                    elif field == "databaseName":
                        check(ev.database_name == value, f"{where}: database {ev.database_name}")
                    elif field == "hasServerConnectionId":
                        check((ev.server_connection_id is not None) == value,
                              f"{where}: server connection id {ev.server_connection_id}")
                    elif field == "hasServiceId":
                        check((ev.service_id is not None) == value, f"{where}: service id")
                    else:
                        raise Failed(f"{where}: unknown event field {field}")

    def outcome(self, outcome):
        c = self.server.admin
        for o in outcome:
            coll = c[o["databaseName"]][o["collectionName"]]
            actual = list(coll.find({}, sort=[("_id", 1)]))
            expected = sorted(o["documents"], key=lambda d: d["_id"])
            check(actual == expected,
                  f"outcome {o['databaseName']}.{o['collectionName']}: expected {expected}, got {actual}")

    def run(self, file_spec, test):
        ents = Entities()
        matcher = Matcher(ents)
        try:
            self.entities(file_spec.get("createEntities", []), ents)
            self.initial_data(file_spec.get("initialData", []))
            for op in test["operations"]:
                self.operation(op, ents, matcher)
            if "expectEvents" in test:
                self.events(test["expectEvents"], ents, matcher)
            self.outcome(test.get("outcome", []))
        finally:
            ents.close()


# ------------------------------------------------------------------ main


def load(path):
    return json_util.loads(path.read_text(), json_options=json_util.JSONOptions(tz_aware=False))


def run(a):
    try:
        root = Path(a.dir) if a.dir else fetch()
    except Exception as e:  # noqa: BLE001
        print(f"the unified CRUD spec files could not be had: {e}", file=sys.stderr)
        return 3
    files = sorted(root.glob("*.json"))
    server = Server(a)
    runner = Runner(server, a.verbose)
    counts = collections.Counter()
    skipped = collections.Counter()
    failures = []
    started = time.monotonic()
    for path in files:
        spec = load(path)
        schema = tuple(int(x) for x in spec["schemaVersion"].split("."))
        file_skip = server.unmet(spec.get("runOnRequirements"))
        for test in spec["tests"]:
            label = f"{path.stem}: {test['description']}"
            if a.only and a.only not in label:
                continue
            counts["tests"] += 1
            why = file_skip or skip_reason(test, server)
            if why is None and schema[0] != 1:
                why = f"schema version {spec['schemaVersion']}"
            if why is None:
                try:
                    runner.run(spec, test)
                except Skip as s:
                    why = str(s)
                except Exception as e:  # noqa: BLE001
                    counts["failed"] += 1
                    detail = str(e) if isinstance(e, Failed) else traceback.format_exc(limit=3)
                    if isinstance(e, Failed) and e.__cause__ is not None and a.verbose:
                        detail += "\n" + "".join(traceback.format_exception(e.__cause__, limit=3))
                    failures.append((label, detail))
                    print(f"FAIL {label}\n    {detail}", flush=True)
                    continue
                else:
                    counts["passed"] += 1
                    if a.verbose:
                        print(f"ok   {label}", flush=True)
                    continue
            counts["skipped"] += 1
            skipped[why] += 1
            if a.verbose:
                print(f"skip {label}: {why}", flush=True)
    took = time.monotonic() - started
    lines = [
        f"unified CRUD spec tests (pymongo {SPEC_PYMONGO_VERSION}'s copy, pymongo "
        f"{pymongo.version} driving, server {'.'.join(map(str, server.version))} "
        f"{server.topology}): {len(files)} files, {counts['tests']} tests, "
        f"{counts['passed']} passed, {counts['skipped']} skipped, {counts['failed']} failed "
        f"in {took:.0f} s",
    ]
    groups = collections.Counter()
    for why, n in skipped.items():
        groups[skip_group(why, server)] += n
    for group, n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  skipped {n:4}: {group}")
        for why, m in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            if skip_group(why, server) == group and why != group:
                lines.append(f"          {m:4}  {why}")
    if runner.events_unchecked:
        lines.append(f"  event expectations not of type command, not checked: {runner.events_unchecked}")
    print("\n".join(lines))
    if a.summary:
        Path(a.summary).write_text("\n".join(lines) + "\n")
    # The plain closing line.
    print(f"unified: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    return 1 if counts["failed"] else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="download the spec files into the cache")
    r = sub.add_parser("run", help="run the tests against a server")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--ca", required=True)
    r.add_argument("--user", required=True)
    r.add_argument("--password", required=True)
    r.add_argument("--mechanism", default="PLAIN")
    r.add_argument("--dir", help="the spec files (default: the cache, filled by fetch)")
    r.add_argument("--only", help="only tests whose 'file: description' contains this")
    r.add_argument("--verbose", "-v", action="store_true")
    r.add_argument("--summary", help="also write the summary to this file")
    a = p.parse_args()
    if a.cmd == "fetch":
        try:
            print(fetch())
        except Exception as e:  # noqa: BLE001
            print(f"could not fetch the unified CRUD spec files: {e}", file=sys.stderr)
            return 3
        return 0
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
