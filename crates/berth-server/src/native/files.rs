//! `berth.v1.Files`: open, read and write file data.

use std::sync::Arc;

use berth_api::v1::files_server::Files as FilesApi;
use berth_api::v1::*;
use berth_fs::OpenSpec;
use tonic::{Request, Response, Status};

use super::namespace::to_entry;
use super::Native;

pub struct FilesService(pub Arc<Native>);

#[tonic::async_trait]
impl FilesApi for FilesService {
    async fn open(&self, req: Request<OpenRequest>) -> Result<Response<OpenResponse>, Status> {
        let n = &self.0;
        n.call("Files/Open", req, |p, r| async move {
            let spec = OpenSpec {
                path: r.path,
                read: r.read,
                write: r.write,
                create: r.create,
                exclusive: r.exclusive,
                truncate: r.truncate,
                mode: r.mode.unwrap_or(0o644),
            };
            let (handle, entry) = n.ns.open(&p, &spec).await?;
            Ok(OpenResponse {
                handle,
                entry: Some(to_entry(entry)),
            })
        })
        .await
    }

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let n = &self.0;
        n.call("Files/Read", req, |p, r| async move {
            let (data, size) =
                n.ns.read(&p, &r.handle, r.offset, r.length as usize)
                    .await?;
            Ok(ReadResponse {
                data: data.into(),
                size,
            })
        })
        .await
    }

    async fn write(&self, req: Request<WriteRequest>) -> Result<Response<WriteResponse>, Status> {
        let n = &self.0;
        n.call("Files/Write", req, |p, r| async move {
            let size = n.ns.write(&p, &r.handle, r.offset, &r.data).await?;
            Ok(WriteResponse { size })
        })
        .await
    }
}
