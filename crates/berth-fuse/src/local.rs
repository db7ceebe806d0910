//! Calls made on the FUSE session's own threads, without hand-offs.
//!
//! A kernel request is answered by a session thread that waits for one or
//! more API calls. Driven through the shared runtime, every call crossed
//! threads several times (the session thread wakes a worker for the
//! channel's request queue, another for the connection, the response wakes
//! the session thread again): on a 2-vCPU VM about a fifth of a millisecond
//! and twenty context switches per call. Instead each session thread owns a
//! current-thread runtime and its own connection to the server
//! ([`Client::another_connection`]), so the request is written, and the
//! answer read, on the thread that waits for it.
//!
//! Only futures that spawn nothing may run here: a task spawned on a
//! session thread's runtime would only make progress while that thread
//! waits in [`Local::block_on`]. Write-behind and lock-session work stays on
//! the shared runtime.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_client::Client;
use tokio::runtime::{Builder, Handle, Runtime};

/// Tells mounts apart: a thread's runtime and connection belong to one.
static NEXT_MOUNT: AtomicU64 = AtomicU64::new(1);

struct PerThread {
    mount: u64,
    rt: Runtime,
    client: Client,
}

thread_local! {
    static PER_THREAD: RefCell<Option<Rc<PerThread>>> = const { RefCell::new(None) };
    /// The mount whose thread runtime this thread is inside of, if any.
    static INSIDE: Cell<u64> = const { Cell::new(0) };
}

/// Runs a mount's synchronous calls on the calling thread (see the module
/// docs); falls back to the shared runtime where a thread runtime cannot be
/// built.
pub struct Local {
    mount: u64,
    shared: Handle,
    client: Client,
}

impl Local {
    pub fn new(shared: Handle, client: Client) -> Local {
        Local {
            mount: NEXT_MOUNT.fetch_add(1, Ordering::Relaxed),
            shared,
            client,
        }
    }

    /// Runs `f` to completion on this thread. `f` must spawn nothing.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        match self.per_thread() {
            Some(p) => {
                let outer = INSIDE.with(|c| c.replace(self.mount));
                let out = p.rt.block_on(f);
                INSIDE.with(|c| c.set(outer));
                out
            }
            None => self.shared.block_on(f),
        }
    }

    /// The client for a call made inside [`Local::block_on`]: this thread's
    /// own connection there, the shared one anywhere else (a connection
    /// whose tasks are not being driven must never be handed out).
    pub fn client(&self) -> Client {
        if INSIDE.with(Cell::get) == self.mount {
            let own = PER_THREAD.with(|t| {
                t.borrow()
                    .as_ref()
                    .filter(|p| p.mount == self.mount)
                    .map(|p| p.client.clone())
            });
            if let Some(c) = own {
                return c;
            }
        }
        self.client.clone()
    }

    fn per_thread(&self) -> Option<Rc<PerThread>> {
        PER_THREAD.with(|t| {
            let mut t = t.borrow_mut();
            if let Some(p) = t.as_ref().filter(|p| p.mount == self.mount) {
                return Some(p.clone());
            }
            // Already inside some runtime (a test driving the file system
            // from a task): nesting is not allowed, use the shared one.
            if Handle::try_current().is_ok() {
                return None;
            }
            let rt = match Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!("no runtime for this FUSE thread ({e}); using the shared one");
                    return None;
                }
            };
            let client = {
                let _in = rt.enter();
                self.client.another_connection()
            };
            let p = Rc::new(PerThread {
                mount: self.mount,
                rt,
                client,
            });
            *t = Some(p.clone());
            Some(p)
        })
    }
}
