//! A linearizability checker for one register (Wing & Gong's search with
//! memoization on the set of operations placed and the register's value).
//!
//! Operations carry their invocation and response times on one clock. A
//! write whose outcome is unknown (it failed with a retryable error, or
//! timed out) has no response: it may take effect at any time after its
//! invocation, or never. Reads that failed are not recorded.

use std::collections::HashSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Write(u64),
    /// What the read returned (`None`: the register was unset).
    Read(Option<u64>),
}

#[derive(Clone, Copy, Debug)]
pub struct Op {
    pub call: u64,
    /// `None`: the outcome is unknown (writes only).
    pub ret: Option<u64>,
    pub kind: Kind,
}

/// Ok when some order of the operations, each taking effect between its
/// call and its return, explains every read. Else the operations that could
/// not be placed.
pub fn check(initial: Option<u64>, ops: &[Op]) -> Result<(), String> {
    if let Some(op) = ops
        .iter()
        .find(|o| o.ret.is_none() && matches!(o.kind, Kind::Read(_)))
    {
        return Err(format!("a read without a response: {op:?}"));
    }
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| ops[i].call);
    let words = ops.len().div_ceil(64).max(1);
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut placed = vec![0u64; words];
    if search(ops, &order, &mut placed, initial, &mut seen) {
        Ok(())
    } else {
        Err(format!(
            "no linearization of {} operations (initial {initial:?}): {:?}",
            ops.len(),
            order.iter().map(|&i| ops[i]).collect::<Vec<_>>()
        ))
    }
}

fn is_placed(placed: &[u64], i: usize) -> bool {
    placed[i / 64] & (1 << (i % 64)) != 0
}

fn search(
    ops: &[Op],
    order: &[usize],
    placed: &mut Vec<u64>,
    value: Option<u64>,
    seen: &mut HashSet<(Vec<u64>, Option<u64>)>,
) -> bool {
    // Done when every operation with a response is placed (unknown writes
    // may never have happened).
    let pending: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| !is_placed(placed, i))
        .collect();
    if pending.iter().all(|&i| ops[i].ret.is_none()) {
        return true;
    }
    if !seen.insert((placed.clone(), value)) {
        return false;
    }
    // The next operation to take effect was invoked before every pending
    // operation returned.
    let horizon = pending
        .iter()
        .filter_map(|&i| ops[i].ret)
        .min()
        .unwrap_or(u64::MAX);
    for &i in &pending {
        let op = ops[i];
        if op.call > horizon {
            break; // sorted by call
        }
        let next = match op.kind {
            Kind::Write(v) => Some(v),
            Kind::Read(r) if r == value => value,
            Kind::Read(_) => continue,
        };
        placed[i / 64] |= 1 << (i % 64);
        if search(ops, order, placed, next, seen) {
            return true;
        }
        placed[i / 64] &= !(1 << (i % 64));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(call: u64, ret: Option<u64>, v: u64) -> Op {
        Op {
            call,
            ret,
            kind: Kind::Write(v),
        }
    }

    fn r(call: u64, ret: u64, v: Option<u64>) -> Op {
        Op {
            call,
            ret: Some(ret),
            kind: Kind::Read(v),
        }
    }

    #[test]
    fn sequential_histories() {
        assert!(check(None, &[w(0, Some(1), 1), r(2, 3, Some(1))]).is_ok());
        assert!(check(None, &[r(0, 1, None), w(2, Some(3), 1)]).is_ok());
        // A stale read after a completed write is not linearizable.
        assert!(check(None, &[w(0, Some(1), 1), r(2, 3, None)]).is_err());
        assert!(check(
            None,
            &[w(0, Some(1), 1), w(2, Some(3), 2), r(4, 5, Some(1))]
        )
        .is_err());
    }

    #[test]
    fn concurrent_histories() {
        // Reads overlapping a write may see either value, but not go back.
        let ok = [w(0, Some(10), 1), r(1, 2, None), r(3, 4, Some(1))];
        assert!(check(None, &ok).is_ok());
        let back = [w(0, Some(10), 1), r(1, 2, Some(1)), r(3, 4, None)];
        assert!(check(None, &back).is_err());
        // Two overlapping writes: both orders are possible.
        let both = [w(0, Some(5), 1), w(1, Some(6), 2), r(7, 8, Some(1))];
        assert!(check(None, &both).is_ok());
    }

    #[test]
    fn unknown_writes() {
        // An unknown write may take effect late, or never.
        let late = [w(0, None, 1), r(5, 6, None), r(7, 8, Some(1))];
        assert!(check(None, &late).is_ok());
        let never = [w(0, None, 1), r(5, 6, None)];
        assert!(check(None, &never).is_ok());
        // But once seen it cannot be unseen.
        let flip = [w(0, None, 1), r(5, 6, Some(1)), r(7, 8, None)];
        assert!(check(None, &flip).is_err());
        // Nor can it take effect before it was invoked.
        let early = [r(0, 1, Some(1)), w(2, None, 1)];
        assert!(check(None, &early).is_err());
    }
}
