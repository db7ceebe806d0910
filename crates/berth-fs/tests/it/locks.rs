//! The lock service against a real kernel: handles authorize, sessions
//! belong to their principal, waiters wake on release, leases run out.

use std::time::Duration;

use berth_fs::locks::{ByteRange, LockArgs, LockKind, LockService, LockType, LEASE_MS_MIN};
use berth_meta::Code;

use super::{code, kernel, open_spec};

fn args(session: u64, handle: &[u8], owner: u64, typ: Option<LockType>) -> LockArgs {
    LockArgs {
        session,
        handle: handle.to_vec(),
        owner,
        kind: LockKind::Posix,
        typ,
        range: ByteRange::from_len(0, 10).unwrap(),
        pid: 77,
        wait: false,
        wait_ms: 0,
    }
}

#[tokio::test]
async fn sessions_handles_waiters_and_leases() {
    let k = kernel().await;
    let a = &k.admin;
    let alice = k.user("alice", &[]).await;
    k.ns.mkdir(a, "/d", 0o777, false).await.unwrap();
    let (ha, _) =
        k.ns.open(&alice, &open_spec("/d/f", true, true))
            .await
            .unwrap();
    let (hadmin, _) =
        k.ns.open(a, &open_spec("/d/f", false, false))
            .await
            .unwrap();
    let locks = LockService::new(k.meta.clone(), LEASE_MS_MIN, 7);
    let (sa, lease) = locks.open_session(&alice).unwrap();
    assert_eq!(lease, LEASE_MS_MIN);
    let (sb, _) = locks.open_session(a).unwrap();
    assert_ne!(sa, sb);

    // A handle is only honoured for the principal it was issued to, and a
    // session only for the principal that opened it.
    let w = Some(LockType::Write);
    assert_eq!(code(locks.set(a, &args(sb, &ha, 1, w)).await), Code::Access);
    assert_eq!(
        code(locks.set(a, &args(sa, &hadmin, 1, w)).await),
        Code::Access
    );
    assert_eq!(
        code(locks.set(&alice, &args(sa, b"junk", 1, w)).await),
        Code::Access
    );
    assert_eq!(locks.set(&alice, &args(sa, &ha, 1, w)).await.unwrap(), None);

    // The admin sees alice's lock (pid hidden: another session).
    let c = locks.test(a, &args(sb, &hadmin, 1, w)).unwrap().unwrap();
    assert_eq!(
        (c.typ, c.range.start, c.range.end, c.pid),
        (LockType::Write, 0, 9, 0)
    );
    // The same session sees the pid its kernel reported.
    let own = locks.test(&alice, &args(sa, &ha, 2, w)).unwrap().unwrap();
    assert_eq!(own.pid, 77);
    // Without a session (0) a test still works.
    assert!(locks.test(a, &args(0, &hadmin, 1, w)).unwrap().is_some());
    assert_eq!(
        locks
            .set(a, &args(sb, &hadmin, 1, w))
            .await
            .unwrap()
            .map(|l| l.range.end),
        Some(9)
    );

    // A waiter wakes as soon as the holder releases.
    let waiter = {
        let (locks, a, h) = (locks.clone(), a.clone(), hadmin.clone());
        tokio::spawn(async move {
            let mut w = args(sb, &h, 1, Some(LockType::Write));
            w.wait = true;
            w.wait_ms = 60_000; // capped by the service
            let started = tokio::time::Instant::now();
            (locks.set(&a, &w).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!waiter.is_finished());
    locks.release(&alice, sa, &ha, 1, LockKind::Posix).unwrap();
    let (r, waited) = waiter.await.unwrap();
    assert_eq!(r.unwrap(), None, "granted after the release");
    assert!(
        waited < Duration::from_millis(LEASE_MS_MIN / 3),
        "{waited:?}"
    );

    // A bounded wait gives up with the conflict.
    let mut w = args(sa, &ha, 1, Some(LockType::Read));
    w.wait = true;
    w.wait_ms = 20;
    assert!(locks.set(&alice, &w).await.unwrap().is_some());

    // flock locks live beside POSIX ones.
    let mut f = args(sa, &ha, 9, Some(LockType::Write));
    f.kind = LockKind::Flock;
    assert_eq!(locks.set(&alice, &f).await.unwrap(), None);

    // The admin's session lapses (alice keeps renewing): its lock goes.
    let renewer = {
        let (locks, alice) = (locks.clone(), alice.clone());
        tokio::spawn(async move {
            for _ in 0..20 {
                locks.renew(&alice, sa).unwrap();
                tokio::time::sleep(Duration::from_millis(LEASE_MS_MIN / 4)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(LEASE_MS_MIN + 50)).await;
    assert!(locks.expire() >= 1);
    assert_eq!(code(locks.renew(a, sb)), Code::Stale);
    assert_eq!(
        code(locks.set(a, &args(sb, &hadmin, 1, w.typ)).await),
        Code::Stale
    );
    assert_eq!(
        locks
            .set(&alice, &args(sa, &ha, 1, Some(LockType::Write)))
            .await
            .unwrap(),
        None
    );
    renewer.abort();

    // Closing a session releases its locks; it is unknown afterwards.
    assert_eq!(code(locks.close_session(a, sa)), Code::Access);
    locks.close_session(&alice, sa).unwrap();
    assert_eq!(code(locks.close_session(&alice, sa)), Code::Stale);
    let (sc, _) = locks.open_session(a).unwrap();
    assert_eq!(
        locks.set(a, &args(sc, &hadmin, 1, w.typ)).await.unwrap(),
        None
    );
}
