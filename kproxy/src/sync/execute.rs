//! Applying many frontend changes at once, in waves: each change's operations keep their
//! order, and the operations of one kind from all changes reach the datapath together, in one
//! batch where the datapath can do batches (thousands of entries per syscall).
//!
//! Waves: 0 unpublish removed frontends, 1 clear what they referenced, 2 new backends,
//! backends that start taking connections and new source ranges, 3 slots and Maglev tables
//! (the inactive bank), 4 publish (`PutService`), 5 clean up after publishing (backends that stop taking
//! connections or are no longer listed, the old bank, source ranges no longer needed). No two changes
//! of one sync share ids (a freed service port id is reused by a later sync only), so the
//! interleaving cannot make one change undo another.

use super::{Datapath, MapOp};

/// One frontend's operations.
pub(super) struct Planned {
    pub ops: Vec<MapOp>,
    /// A removal: unpublished by its first op; nothing to roll back.
    pub removal: bool,
}

impl Planned {
    /// Index of the op after which the change has happened for the datapath.
    fn published_at(&self) -> usize {
        if self.removal {
            return 0;
        }
        self.ops
            .iter()
            .position(|op| matches!(op, MapOp::PutService { .. }))
            .expect("every change publishes")
    }

    /// The wave of op `index`; `published_at` is `self.published_at()`, computed once per
    /// change (per op it would make a change of 10,000 backends cost 10,000² steps).
    fn wave(&self, index: usize, published_at: usize) -> usize {
        let after_publish = index > published_at;
        match (&self.ops[index], self.removal) {
            (MapOp::DeleteService { .. }, _) => 0,
            (_, true) => 1,
            (
                MapOp::PutBackend { .. }
                | MapOp::SetBackendActive { .. }
                | MapOp::PutSourceRange { .. },
                _,
            ) if !after_publish => 2,
            (
                MapOp::PutSlot { .. } | MapOp::DeleteSlot { .. } | MapOp::PutMaglevTable { .. },
                false,
            ) if !after_publish => 3,
            (MapOp::PutService { .. }, _) => 4,
            _ => 5,
        }
    }
}

const WAVES: usize = 6;

/// What happened to one planned change.
pub(super) enum Outcome {
    Applied,
    /// Published, but cleaning up after it failed (reported, not rolled back).
    CleanupFailed(anyhow::Error),
    /// Failed before publishing; what it had created was removed again.
    Failed(anyhow::Error),
}

/// Applies `planned` in waves; one outcome per change.
pub(super) fn execute(dp: &mut impl Datapath, planned: &[Planned]) -> Vec<Outcome> {
    let published: Vec<usize> = planned.iter().map(Planned::published_at).collect();
    let mut done: Vec<Vec<bool>> = planned.iter().map(|p| vec![false; p.ops.len()]).collect();
    let mut errors: Vec<Option<(usize, anyhow::Error)>> = planned.iter().map(|_| None).collect();
    for wave in 0..WAVES {
        let mut batch: Vec<(usize, usize)> = Vec::new();
        for (c, p) in planned.iter().enumerate() {
            // A change that failed before publishing goes no further; cleanup goes on.
            if errors[c]
                .as_ref()
                .is_some_and(|(at, _)| *at <= published[c])
                && !p.removal
            {
                continue;
            }
            batch.extend(
                (0..p.ops.len())
                    .filter(|&i| p.wave(i, published[c]) == wave)
                    .map(|i| (c, i)),
            );
        }
        if batch.is_empty() {
            continue;
        }
        let ops: Vec<&MapOp> = batch.iter().map(|&(c, i)| &planned[c].ops[i]).collect();
        for (&(c, i), result) in batch.iter().zip(dp.apply_batch(&ops)) {
            match result {
                Ok(()) => done[c][i] = true,
                Err(e) => {
                    if errors[c].is_none() {
                        errors[c] = Some((i, e));
                    }
                }
            }
        }
    }
    planned
        .iter()
        .zip(published)
        .zip(errors)
        .zip(done)
        .map(|(((p, published_at), error), done)| match error {
            None => Outcome::Applied,
            Some((at, e)) if p.removal || at > published_at => Outcome::CleanupFailed(e),
            Some((_, e)) => {
                let applied: Vec<MapOp> = p
                    .ops
                    .iter()
                    .zip(&done)
                    .filter(|(_, d)| **d)
                    .map(|(op, _)| op.clone())
                    .collect();
                for op in rollback_ops(&applied) {
                    let _ = dp.apply(&op);
                }
                Outcome::Failed(e)
            }
        })
        .collect()
}

/// Undoes the creations and role switches among `applied` (a failed change never got to its
/// `PutService`, the op that publishes, so undoing them restores the previous state).
fn rollback_ops(applied: &[MapOp]) -> Vec<MapOp> {
    applied
        .iter()
        .rev()
        .filter_map(|op| match op {
            MapOp::PutBackend { id, endpoint, .. } => Some(MapOp::DeleteBackend {
                id: *id,
                endpoint: *endpoint,
            }),
            MapOp::SetBackendActive {
                id,
                endpoint,
                svc_id,
                active,
            } => Some(MapOp::SetBackendActive {
                id: *id,
                endpoint: *endpoint,
                svc_id: *svc_id,
                active: !active,
            }),
            MapOp::PutSourceRange { svc_id, range } => Some(MapOp::DeleteSourceRange {
                svc_id: *svc_id,
                range: *range,
            }),
            MapOp::PutSlot {
                svc_id,
                bank,
                index,
                ..
            } => Some(MapOp::DeleteSlot {
                svc_id: *svc_id,
                bank: *bank,
                index: *index,
            }),
            MapOp::PutMaglevTable {
                svc_id,
                bank,
                table_size,
                ..
            } => Some(MapOp::DeleteMaglevTable {
                svc_id: *svc_id,
                bank: *bank,
                table_size: *table_size,
            }),
            _ => None,
        })
        .collect()
}
