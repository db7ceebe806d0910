//! The two systems behind one set of operations: Berth through the official
//! MongoDB driver, PostgreSQL through `tokio-postgres` with a table
//! `(id text primary key, doc jsonb)` per collection. Each operation is the
//! natural call of its client for the same request: a point read returns and
//! decodes the whole document on both sides, an update sets one field on the
//! server (`$set` / `jsonb_set`), a scan returns and decodes its rows.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use mongodb::{Collection, IndexModel};
use serde_json::Value;
use tokio_postgres::{NoTls, Statement};

use crate::gen::Fields;

/// Database (Berth: `<--mongo-root>/bench`) the benchmark's collections
/// live in.
pub const DB: &str = "bench";
/// The YCSB table.
pub const USERTABLE: &str = "usertable";
/// The 1M-document table for counts, bulk inserts and the indexed query.
pub const BIG: &str = "big";
/// The table the change-stream test writes and watches.
pub const EVENTS: &str = "events";

/// Which system, and how to reach it.
#[derive(Debug, Clone)]
pub enum Target {
    /// A MongoDB connection string (Berth's listener).
    Mongo(String),
    /// A `tokio-postgres` connection string.
    Postgres(String),
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Mongo(_) => "berth",
            Target::Postgres(_) => "postgres",
        }
    }

    /// A handle that may be cloned into client tasks: one pooled
    /// driver for MongoDB; for PostgreSQL, sessions make their own
    /// connections. With `count_commands`, the driver counts the commands
    /// it sends (see [`commands_sent`]): a check of how many round trips an
    /// operation takes, at some cost per command.
    pub async fn connect(&self, count_commands: bool) -> Result<Conn> {
        match self {
            Target::Mongo(uri) => {
                let mut options = ClientOptions::parse(uri)
                    .await
                    .context("parse the MongoDB connection string")?;
                if count_commands {
                    options.command_event_handler =
                        Some(EventHandler::callback(|e: CommandEvent| {
                            if let CommandEvent::Started(s) = e {
                                *COMMANDS
                                    .lock()
                                    .expect("not poisoned")
                                    .entry(s.command_name)
                                    .or_default() += 1;
                            }
                        }));
                }
                options.server_selection_timeout = Some(Duration::from_secs(20));
                // Enough pooled connections for every client task.
                options.max_pool_size = Some(64);
                let client = mongodb::Client::with_options(options).context("MongoDB client")?;
                Ok(Conn::Mongo(client))
            }
            Target::Postgres(s) => Ok(Conn::Postgres(s.clone())),
        }
    }
}

/// Commands the MongoDB driver sent, by name (when counted).
static COMMANDS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// The commands counted so far, by name.
pub fn commands_sent() -> BTreeMap<String, u64> {
    COMMANDS.lock().expect("not poisoned").clone()
}

#[derive(Clone)]
pub enum Conn {
    Mongo(mongodb::Client),
    Postgres(String),
}

impl Conn {
    /// One client task's session on `table`.
    pub async fn session(&self, table: &str) -> Result<Session> {
        match self {
            Conn::Mongo(c) => Ok(Session::Mongo(c.database(DB).collection::<Document>(table))),
            Conn::Postgres(s) => Ok(Session::Postgres(Box::new(
                PgSession::connect(s, table).await?,
            ))),
        }
    }

    pub async fn shutdown(self) {
        if let Conn::Mongo(c) = self {
            c.shutdown().await;
        }
    }

    /// Drops `table` if it exists and makes it empty (PostgreSQL: with its
    /// primary key; Berth makes a collection on first insert).
    pub async fn recreate(&self, table: &str) -> Result<()> {
        match self {
            Conn::Mongo(c) => {
                c.database(DB)
                    .collection::<Document>(table)
                    .drop()
                    .await
                    .with_context(|| format!("drop {table}"))?;
                Ok(())
            }
            Conn::Postgres(s) => {
                let client = pg_connect(s).await?;
                client
                    .batch_execute(&format!(
                        "DROP TABLE IF EXISTS {table};
                         CREATE TABLE {table} (id text PRIMARY KEY, doc jsonb NOT NULL);"
                    ))
                    .await
                    .with_context(|| format!("create table {table}"))?;
                Ok(())
            }
        }
    }
}

/// A PostgreSQL connection whose driver task runs on the runtime.
pub async fn pg_connect(s: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(s, NoTls)
        .await
        .context("connect to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("postgres connection: {e}");
        }
    });
    Ok(client)
}

pub struct PgSession {
    client: tokio_postgres::Client,
    read: Statement,
    update: Statement,
    scan: Statement,
    insert: Statement,
    insert_one: Statement,
}

impl PgSession {
    async fn connect(s: &str, table: &str) -> Result<PgSession> {
        let client = pg_connect(s).await?;
        // Prepared once per connection, as an application would.
        let read = client
            .prepare(&format!("SELECT doc FROM {table} WHERE id = $1"))
            .await?;
        let update = client
            .prepare(&format!(
                "UPDATE {table} SET doc = jsonb_set(doc, ARRAY[$2::text], to_jsonb($3::text)) \
                 WHERE id = $1"
            ))
            .await?;
        let scan = client
            .prepare(&format!(
                "SELECT id, doc FROM {table} WHERE id >= $1 ORDER BY id LIMIT $2"
            ))
            .await?;
        let insert = client
            .prepare(&format!(
                "INSERT INTO {table} (id, doc) SELECT * FROM unnest($1::text[], $2::jsonb[])"
            ))
            .await?;
        let insert_one = client
            .prepare(&format!("INSERT INTO {table} (id, doc) VALUES ($1, $2)"))
            .await?;
        Ok(PgSession {
            client,
            read,
            update,
            scan,
            insert,
            insert_one,
        })
    }
}

pub enum Session {
    Mongo(Collection<Document>),
    Postgres(Box<PgSession>),
}

impl Session {
    /// The document with `id`; an error when there is none (every key the
    /// workloads read exists).
    pub async fn read(&self, id: &str) -> Result<()> {
        match self {
            Session::Mongo(c) => match c.find_one(doc! {"_id": id}).await? {
                Some(d) if d.len() == 1 + crate::gen::FIELD_COUNT => Ok(()),
                Some(d) => bail!("{id}: {} fields", d.len()),
                None => bail!("{id} not found"),
            },
            Session::Postgres(s) => match s.client.query_opt(&s.read, &[&id]).await? {
                Some(row) => {
                    let doc: Value = row.try_get(0)?;
                    match doc.as_object() {
                        Some(o) if o.len() == crate::gen::FIELD_COUNT => Ok(()),
                        _ => bail!("{id}: unexpected document"),
                    }
                }
                None => bail!("{id} not found"),
            },
        }
    }

    /// Sets one field of the document with `id` to `value`.
    pub async fn update(&self, id: &str, field: &str, value: &str) -> Result<()> {
        let matched = match self {
            Session::Mongo(c) => {
                c.update_one(doc! {"_id": id}, doc! {"$set": {field: value}})
                    .await?
                    .matched_count
            }
            Session::Postgres(s) => s.client.execute(&s.update, &[&id, &field, &value]).await?,
        };
        if matched != 1 {
            bail!("update of {id} matched {matched}");
        }
        Ok(())
    }

    /// `find({_id: {$gte: from}}).sort({_id: 1}).limit(n)`; the number of
    /// documents returned.
    pub async fn scan(&self, from: &str, n: i64) -> Result<usize> {
        match self {
            Session::Mongo(c) => {
                let docs: Vec<Document> = c
                    .find(doc! {"_id": {"$gte": from}})
                    .sort(doc! {"_id": 1})
                    .limit(n)
                    .await?
                    .try_collect()
                    .await?;
                Ok(docs.len())
            }
            Session::Postgres(s) => {
                let rows = s.client.query(&s.scan, &[&from, &n]).await?;
                let mut count = 0;
                for row in rows {
                    let _id: &str = row.try_get(0)?;
                    let _doc: Value = row.try_get(1)?;
                    count += 1;
                }
                Ok(count)
            }
        }
    }

    /// Inserts the documents (one `insert_many` / one multi-row INSERT).
    pub async fn insert_many(&self, docs: Vec<(String, Fields)>) -> Result<()> {
        match self {
            Session::Mongo(c) => {
                let n = docs.len();
                let docs: Vec<Document> = docs
                    .into_iter()
                    .map(|(id, f)| {
                        let mut d = doc! {"_id": id};
                        f.into_bson(&mut d);
                        d
                    })
                    .collect();
                let r = c.insert_many(docs).await?;
                if r.inserted_ids.len() != n {
                    bail!("inserted {} of {n}", r.inserted_ids.len());
                }
                Ok(())
            }
            Session::Postgres(s) => {
                let n = docs.len() as u64;
                let (ids, jsons): (Vec<String>, Vec<Value>) =
                    docs.into_iter().map(|(id, f)| (id, f.into_json())).unzip();
                let inserted = s.client.execute(&s.insert, &[&ids, &jsons]).await?;
                if inserted != n {
                    bail!("inserted {inserted} of {n}");
                }
                Ok(())
            }
        }
    }

    /// One change-stream test event: `{_id: seq, seq, sent_ns}` (PostgreSQL:
    /// id `seq` as text).
    pub async fn insert_event(&self, seq: i64, sent_ns: i64) -> Result<()> {
        match self {
            Session::Mongo(c) => {
                c.insert_one(doc! {"_id": seq, "seq": seq, "sent_ns": sent_ns})
                    .await?;
            }
            Session::Postgres(s) => {
                let doc = serde_json::json!({"seq": seq, "sent_ns": sent_ns});
                s.client
                    .execute(&s.insert_one, &[&seq.to_string(), &doc])
                    .await?;
            }
        }
        Ok(())
    }

    /// `countDocuments(filter)`: all, or `{kind: k}`.
    pub async fn count(&self, kind: Option<i32>) -> Result<u64> {
        match self {
            Session::Mongo(c) => {
                let filter = match kind {
                    Some(k) => doc! {"kind": k},
                    None => doc! {},
                };
                Ok(c.count_documents(filter).await?)
            }
            Session::Postgres(s) => {
                let table = BIG;
                let row = match kind {
                    Some(k) => {
                        let filter = serde_json::json!({ "kind": k });
                        s.client
                            .query_one(
                                &format!("SELECT count(*) FROM {table} WHERE doc @> $1::jsonb"),
                                &[&filter],
                            )
                            .await?
                    }
                    None => {
                        s.client
                            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                            .await?
                    }
                };
                let n: i64 = row.try_get(0)?;
                Ok(n as u64)
            }
        }
    }

    /// `find({user}).sort({ts: -1}).limit(10)` on the big table; the `ts`
    /// values returned, newest first.
    pub async fn latest_of_user(&self, user: &str) -> Result<Vec<i64>> {
        match self {
            Session::Mongo(c) => {
                let docs: Vec<Document> = c
                    .find(doc! {"user": user})
                    .sort(doc! {"ts": -1})
                    .limit(10)
                    .await?
                    .try_collect()
                    .await?;
                docs.iter().map(|d| d.get_i64("ts").context("ts")).collect()
            }
            Session::Postgres(s) => {
                let rows = s
                    .client
                    .query(
                        &format!(
                            "SELECT doc FROM {BIG} WHERE doc->>'user' = $1 \
                             ORDER BY (doc->'ts')::bigint DESC LIMIT 10"
                        ),
                        &[&user],
                    )
                    .await?;
                rows.iter()
                    .map(|r| {
                        let d: Value = r.try_get(0)?;
                        d.get("ts").and_then(Value::as_i64).context("ts")
                    })
                    .collect()
            }
        }
    }

    /// Builds the `{user: 1, ts: -1}` index on the big table.
    pub async fn create_user_ts_index(&self) -> Result<()> {
        match self {
            Session::Mongo(c) => {
                c.create_index(
                    IndexModel::builder()
                        .keys(doc! {"user": 1, "ts": -1})
                        .build(),
                )
                .await?;
                Ok(())
            }
            Session::Postgres(s) => {
                s.client
                    .batch_execute(&format!(
                        "CREATE INDEX big_user_ts ON {BIG} ((doc->>'user'), ((doc->'ts')::bigint) DESC)"
                    ))
                    .await?;
                Ok(())
            }
        }
    }

    /// The plan the indexed query uses, as the system explains it (a
    /// check that the index is used, and that the unindexed run scans).
    pub async fn explain_latest(&self, user: &str) -> Result<String> {
        match self {
            Session::Mongo(c) => {
                let db = c.client().database(DB);
                let r = db
                    .run_command(doc! {
                        "explain": {"find": c.name(), "filter": {"user": user},
                                    "sort": {"ts": -1}, "limit": 10},
                        "verbosity": "queryPlanner",
                    })
                    .await?;
                let plan = r
                    .get_document("queryPlanner")
                    .and_then(|q| q.get_document("winningPlan"))
                    .map(|p| stages(p).join(" <- "))
                    .unwrap_or_else(|_| "?".to_string());
                Ok(plan)
            }
            Session::Postgres(s) => {
                let rows = s
                    .client
                    .query(
                        &format!(
                            "EXPLAIN SELECT doc FROM {BIG} WHERE doc->>'user' = $1 \
                             ORDER BY (doc->'ts')::bigint DESC LIMIT 10"
                        ),
                        &[&user],
                    )
                    .await?;
                // The plan's nodes, outermost first, without costs and
                // conditions: "Limit <- Index Scan using big_user_ts on big".
                let nodes: Vec<String> = rows
                    .iter()
                    .filter_map(|r| r.try_get::<_, String>(0).ok())
                    .filter_map(|l| {
                        let l = l.trim().trim_start_matches("->").trim();
                        let node = l.split("  (cost").next().unwrap_or(l);
                        (l.contains("(cost")).then(|| node.to_string())
                    })
                    .collect();
                Ok(nodes.join(" <- "))
            }
        }
    }
}

/// The stage names of a MongoDB plan, outermost first.
fn stages(plan: &Document) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = Some(plan);
    while let Some(p) = cur {
        out.push(p.get_str("stage").unwrap_or("?").to_string());
        cur = p.get_document("inputStage").ok();
    }
    out
}

/// A BSON value as an i64 (int32, int64, whole doubles).
pub fn bson_i64(v: Option<&Bson>) -> Option<i64> {
    match v? {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    }
}
