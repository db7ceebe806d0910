//! Integration tests of berth-store: key encoding properties and the store's write path.

mod keys;
mod store;
