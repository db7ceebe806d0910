//! Hard links and extended attributes.
//!
//! Extended attributes live beside the inode: `vol · Xattr · ino · name`.
//! Namespaces as on Linux: `user.*` follows the entry's read (get, list)
//! and write (set, remove) permission; `trusted.*` and `security.*` need an
//! administrator; other prefixes are refused (EOPNOTSUPP in POSIX, EINVAL
//! here).

use berth_meta::map::normalize_path;
use berth_meta::router::{backoff, too_much_contention, Commit, TX_RETRIES_MAX};
use berth_meta::{Code, Error};
use berth_security::principal::Principal;
use berth_store::keys::{self, Key, Kind};

use crate::access::{check_entry, Need};
use crate::namespace::{now_ns, writable_parent, EntryInfo, Namespace, Site, Target};
use crate::records::*;

/// Largest attribute value.
pub const XATTR_VALUE_MAX: usize = 64 << 10;
/// Longest attribute name (as Linux).
pub const XATTR_NAME_MAX: usize = 255;
/// Most attributes one entry may carry.
pub const XATTRS_PER_ENTRY_MAX: usize = 1024;

pub fn xattr_key(vol: u64, ino: u64, name: &str) -> Vec<u8> {
    Key::new(vol, Kind::Xattr, ino).str(name).build()
}

pub(crate) fn xattr_range(vol: u64, ino: u64) -> (Vec<u8>, Vec<u8>) {
    keys::object_range(vol, Kind::Xattr, ino)
}

fn check_name(p: &Principal, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > XATTR_NAME_MAX || name.contains('\0') {
        return Err(Error::new(
            Code::NameTooLong,
            format!("bad attribute name {name:?}"),
        ));
    }
    if name.starts_with("user.") {
        return Ok(());
    }
    if name.starts_with("trusted.") || name.starts_with("security.") {
        if p.is_admin() {
            return Ok(());
        }
        return Err(Error::new(
            Code::Perm,
            format!("only an administrator may use {name}"),
        ));
    }
    Err(Error::invalid(format!(
        "unsupported attribute namespace in {name:?}: use user.*, trusted.* or security.*"
    )))
}

impl Namespace {
    /// Makes `path` a new name of the file `existing` (same volume).
    pub async fn link(
        &self,
        p: &Principal,
        existing: &str,
        path: &str,
    ) -> Result<EntryInfo, Error> {
        let path = normalize_path(path)?;
        if path == "/" {
            return Err(Error::exists("/"));
        }
        self.link_sites(p, &Target::Path(existing, false), &Site::Path(&path))
            .await
    }

    /// Makes `site` a new name of the file `src` names (same volume).
    pub(crate) async fn link_sites(
        &self,
        p: &Principal,
        src: &Target<'_>,
        site: &Site<'_>,
    ) -> Result<EntryInfo, Error> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let src_loc = self.target_loc(p, src).await?.loc;
            src_loc.writable()?;
            let src = src_loc;
            if src.inode.kind == EntryKind::Dir {
                return Err(Error::new(
                    Code::Perm,
                    format!("cannot hard-link a directory: {}", src.path),
                ));
            }
            let (parent, name, path) = self.site_parent(p, site).await?;
            if parent.vol.id != src.vol.id {
                return Err(Error::new(
                    Code::CrossVolume,
                    "cannot hard-link across volumes",
                ));
            }
            let vol = parent.vol.clone();
            let mut tx = self.meta().router().begin(vol.shard_id).await?;
            let (pkey, mut pinode) = writable_parent(&mut tx, p, &parent, &path).await?;
            let dkey = dirent_key(vol.id, parent.ino, &name);
            if tx.get(&dkey).await?.is_some() {
                return Err(Error::exists(&path));
            }
            let ikey = inode_key(vol.id, src.ino);
            let mut inode = decode_inode(
                &tx.get(&ikey)
                    .await?
                    .ok_or_else(|| Error::not_found(&src.path))?,
            )?;
            if inode.nlink >= u32::MAX - 1 {
                return Err(Error::invalid("too many links"));
            }
            let now = now_ns();
            inode.nlink += 1;
            inode.ctime_ns = now;
            pinode.mtime_ns = now;
            pinode.ctime_ns = now;
            tx.put(ikey, encode_inode(&inode));
            tx.put(pkey, encode_inode(&pinode));
            tx.put(
                dkey,
                encode_dirent(&Dirent {
                    ino: src.ino,
                    kind: inode.kind,
                    mount: None,
                }),
            );
            if let Commit::Done(_) = tx.commit().await? {
                return self.entry_at_site(p, site).await;
            }
        }
        Err(too_much_contention(&site.describe()))
    }

    pub async fn get_xattr(&self, p: &Principal, path: &str, name: &str) -> Result<Vec<u8>, Error> {
        self.get_xattr_of(p, &Target::Path(path, true), name).await
    }

    pub(crate) async fn get_xattr_of(
        &self,
        p: &Principal,
        target: &Target<'_>,
        name: &str,
    ) -> Result<Vec<u8>, Error> {
        check_name(p, name)?;
        let loc = self.target_loc(p, target).await?.loc;
        check_entry(p, &loc.path, &loc.vol, &loc.inode, Need::Read)?;
        self.meta()
            .router()
            .get(
                loc.vol.shard_id,
                &loc.view.key(xattr_key(loc.vol.id, loc.ino, name)),
            )
            .await?
            .ok_or_else(|| Error::new(Code::NoData, format!("no attribute {name} on {}", loc.path)))
    }

    pub async fn list_xattr(&self, p: &Principal, path: &str) -> Result<Vec<String>, Error> {
        self.list_xattr_of(p, &Target::Path(path, true)).await
    }

    pub(crate) async fn list_xattr_of(
        &self,
        p: &Principal,
        target: &Target<'_>,
    ) -> Result<Vec<String>, Error> {
        let loc = self.target_loc(p, target).await?.loc;
        check_entry(p, &loc.path, &loc.vol, &loc.inode, Need::Read)?;
        let (s, e) = xattr_range(loc.vol.id, loc.ino);
        let rows = self
            .meta()
            .router()
            .scan(
                loc.vol.shard_id,
                &loc.view.key(s),
                &loc.view.key(e),
                XATTRS_PER_ENTRY_MAX,
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, _) in rows {
            let k = loc.view.unkey(k);
            let name = keys::KeyReader::new(&k)
                .and_then(|mut r| r.next_str())
                .map_err(|e| Error::corrupt(format!("xattr key: {e}")))?;
            if name.starts_with("user.") || p.is_admin() {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Sets (`Some`) or removes (`None`) an attribute.
    pub async fn set_xattr(
        &self,
        p: &Principal,
        path: &str,
        name: &str,
        value: Option<&[u8]>,
        create: bool,
        replace: bool,
    ) -> Result<(), Error> {
        self.set_xattr_of(p, &Target::Path(path, true), name, value, create, replace)
            .await
    }

    /// Sets (`Some`) or removes (`None`) an attribute of the entry `target`
    /// names.
    pub(crate) async fn set_xattr_of(
        &self,
        p: &Principal,
        target: &Target<'_>,
        name: &str,
        value: Option<&[u8]>,
        create: bool,
        replace: bool,
    ) -> Result<(), Error> {
        check_name(p, name)?;
        if value.is_some_and(|v| v.len() > XATTR_VALUE_MAX) {
            return Err(Error::new(
                Code::TooBig,
                format!("attribute values are at most {XATTR_VALUE_MAX} bytes"),
            ));
        }
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let loc = self.target_loc(p, target).await?.loc;
            loc.writable()?;
            let vol = loc.vol.clone();
            let mut tx = self.meta().router().begin(vol.shard_id).await?;
            let ikey = inode_key(vol.id, loc.ino);
            let mut inode = decode_inode(
                &tx.get(&ikey)
                    .await?
                    .ok_or_else(|| Error::not_found(&loc.path))?,
            )?;
            check_entry(p, &loc.path, &vol, &inode, Need::Write)?;
            let key = xattr_key(vol.id, loc.ino, name);
            let present = tx.get(&key).await?.is_some();
            match value {
                Some(v) => {
                    if create && present {
                        return Err(Error::exists(format!("attribute {name} on {}", loc.path)));
                    }
                    if replace && !present {
                        return Err(Error::new(
                            Code::NoData,
                            format!("no attribute {name} on {}", loc.path),
                        ));
                    }
                    if !present {
                        let (s, e) = xattr_range(vol.id, loc.ino);
                        if tx.peek_range(&s, &e, XATTRS_PER_ENTRY_MAX).await?.len()
                            >= XATTRS_PER_ENTRY_MAX
                        {
                            return Err(Error::new(
                                Code::TooBig,
                                "too many attributes on this entry",
                            ));
                        }
                    }
                    tx.put(key, v.to_vec());
                }
                None => {
                    if !present {
                        return Err(Error::new(
                            Code::NoData,
                            format!("no attribute {name} on {}", loc.path),
                        ));
                    }
                    tx.delete(key);
                }
            }
            inode.ctime_ns = now_ns();
            tx.put(ikey, encode_inode(&inode));
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(());
            }
        }
        Err(too_much_contention(&target.describe()))
    }
}
