//! Berth for containers: the entrypoint of the `berth-client` image
//! (`berth container-run -- CMD...`) and the Docker volume plugin
//! (`berth docker-plugin`). Both mount the namespace by running this same
//! binary as a `berth mount --foreground` child and watching the mount
//! table (read with `berth-fuse`'s parser) until the FUSE mount is there
//! (`child`); both unmount by SIGTERM to that child.
//!
//! Invariants:
//! - *The application never runs as root*: `container-run` refuses uid/gid
//!   0 and drops privileges (setgroups, setgid, setuid) between fork and
//!   exec, checking that root cannot be regained.
//! - *A ticket is never printed or logged*; the entrypoint hands it to the
//!   application as a 0400 file owned by the application's uid, as the
//!   SASL password in the Kafka properties file (0600, same owner), and as
//!   the password in `MONGODB_URI` (the connection string MongoDB drivers
//!   read), the one environment variable that holds it: set in the
//!   application's process only (not in the container's configuration,
//!   which `docker inspect` shows), where only its uid reads it, as it
//!   reads the file.
//! - *Every wait is bounded*: mounting (30 s), stopping a mount (15 s, then
//!   SIGKILL and a lazy unmount), connecting (5 attempts).
//! - Configuration problems are one line naming the variable and the fix
//!   (exit code 2); Docker gets every failure as `{"Err": "..."}`.
//! - This crate owns no file system logic: the mount is `berth-fuse`'s,
//!   reached only through the `berth mount` command line; of `berth-fuse`
//!   it uses the mount-table helpers alone (finding and detaching mounts).

mod child;
mod config;
mod conn;
mod kafka;
mod mongo;
mod plugin;
mod run;

pub use plugin::{docker_plugin, DockerPluginArgs};
pub use run::{container_run, ContainerRunArgs};
