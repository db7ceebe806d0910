//! The Docker plugin protocol: `POST /Plugin.Activate` and
//! `POST /VolumeDriver.*`, JSON in and out with the content type
//! `application/vnd.docker.plugins.v1+json`. Failures are answered with
//! HTTP 200 and `{"Err": "..."}`, as Docker expects; an empty or `null`
//! body counts as `{}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::driver::{Backend, Driver, VolumeInfo};

/// Content type of every answer.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

#[derive(Debug, Default, Deserialize)]
struct NameReq {
    #[serde(rename = "Name", default)]
    name: String,
}

#[derive(Debug, Default, Deserialize)]
struct CreateReq {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Opts", default)]
    opts: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
struct MountReq {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "ID", default)]
    id: String,
}

/// The routes of the plugin over `driver`.
pub fn router<B: Backend>(driver: Arc<Driver<B>>) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/VolumeDriver.Create", post(create::<B>))
        .route("/VolumeDriver.Remove", post(remove::<B>))
        .route("/VolumeDriver.Mount", post(mount::<B>))
        .route("/VolumeDriver.Unmount", post(unmount::<B>))
        .route("/VolumeDriver.Path", post(path::<B>))
        .route("/VolumeDriver.Get", post(get::<B>))
        .route("/VolumeDriver.List", post(list::<B>))
        .route("/VolumeDriver.Capabilities", post(capabilities))
        .with_state(driver)
}

fn reply(v: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        v.to_string(),
    )
        .into_response()
}

/// The answer to a request: the JSON on success, `{"Err": ...}` otherwise.
fn answer(r: Result<Value, String>) -> Response {
    match r {
        Ok(v) => reply(v),
        Err(e) => reply(json!({ "Err": e })),
    }
}

/// Parses a request body; empty, whitespace or `null` is the default.
fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    let text = body.trim_ascii();
    if text.is_empty() || text == b"null" {
        return Ok(T::default());
    }
    serde_json::from_slice(text).map_err(|e| format!("bad request body: {e}"))
}

fn named(name: &str) -> Result<&str, String> {
    if name.is_empty() {
        Err("the request names no volume (Name is empty)".into())
    } else {
        Ok(name)
    }
}

async fn activate() -> Response {
    reply(json!({ "Implements": ["VolumeDriver"] }))
}

async fn capabilities() -> Response {
    reply(json!({ "Capabilities": { "Scope": "global" } }))
}

async fn create<B: Backend>(State(d): State<Arc<Driver<B>>>, body: Bytes) -> Response {
    answer(
        async {
            let req: CreateReq = parse(&body)?;
            d.create(&req.name, &req.opts.unwrap_or_default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!({ "Err": "" }))
        }
        .await,
    )
}

async fn remove<B: Backend>(State(d): State<Arc<Driver<B>>>, body: Bytes) -> Response {
    answer(
        async {
            let req: NameReq = parse(&body)?;
            d.remove(named(&req.name)?)
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!({ "Err": "" }))
        }
        .await,
    )
}

async fn mount<B: Backend>(State(d): State<Arc<Driver<B>>>, body: Bytes) -> Response {
    answer(
        async {
            let req: MountReq = parse(&body)?;
            let mp = d
                .mount(named(&req.name)?, &req.id)
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!({ "Mountpoint": mp.display().to_string(), "Err": "" }))
        }
        .await,
    )
}

async fn unmount<B: Backend>(State(d): State<Arc<Driver<B>>>, body: Bytes) -> Response {
    answer(
        async {
            let req: MountReq = parse(&body)?;
            d.unmount(named(&req.name)?, &req.id)
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!({ "Err": "" }))
        }
        .await,
    )
}

async fn path<B: Backend>(State(d): State<Arc<Driver<B>>>, body: Bytes) -> Response {
    answer(
        async {
            let req: NameReq = parse(&body)?;
            let mp = d.path(named(&req.name)?).await.map_err(|e| e.to_string())?;
            Ok(json!({ "Mountpoint": mp, "Err": "" }))
        }
        .await,
    )
}

fn volume_json(v: &VolumeInfo) -> Value {
    json!({
        "Name": v.name,
        "Mountpoint": v.mountpoint,
        "Status": {
            "path": v.path,
            "readonly": v.read_only,
            "users": v.users,
        },
    })
}

async fn get<B: Backend>(State(d): State<Arc<Driver<B>>>, body: Bytes) -> Response {
    answer(
        async {
            let req: NameReq = parse(&body)?;
            let v = d.get(named(&req.name)?).await.map_err(|e| e.to_string())?;
            Ok(json!({ "Volume": volume_json(&v), "Err": "" }))
        }
        .await,
    )
}

async fn list<B: Backend>(State(d): State<Arc<Driver<B>>>) -> Response {
    let vols: Vec<Value> = d
        .list()
        .await
        .iter()
        .map(|v| json!({ "Name": v.name, "Mountpoint": v.mountpoint }))
        .collect();
    reply(json!({ "Volumes": vols, "Err": "" }))
}
