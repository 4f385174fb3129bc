//! Group commit of claims.
//!
//! Every job starts with a claim of its run (PENDING -> RUNNING, the lease, two events). With
//! many jobs arriving at once, each claim was a statement and a commit of its own; here the
//! jobs that arrive together are claimed in one statement ([`storage::claim_runs`]): the
//! PENDING runs below their orgs' caps all at once, their step rows in one query, and each of
//! the others (held, WAITING, taken over, redelivered) in its own locked transaction, as
//! before. Batches form as in [`crate::batches`]: a lone job is claimed at once.
//!
//! Guarantees are unchanged: a run is claimed by at most one worker (the update takes the row
//! and re-checks PENDING), the org cap is counted under the org's lock to the commit, and a
//! job's message is still acked only after its run's effects are committed.

use crate::batches::{answers, Batches};
use crate::engine::GraphCache;
use crate::storage::{self, Claim, ClaimJob, LeaseHolder};
use shared_models::db::{blocking, PgPool, StorageError};
use shared_models::graph::WorkflowGraph;
use std::collections::HashMap;
use std::sync::Arc;

/// At most this many claims per statement.
pub const MAX_BATCH: usize = 256;

/// A claim, with the compiled graph of its run's version when this worker had it cached
/// (then the claim carries no definition).
pub type Claimed = (Claim, Option<Arc<WorkflowGraph>>);

/// The handle jobs use; cheap to clone.
#[derive(Clone)]
pub struct Claimer {
    batches: Batches<ClaimJob, Claimed>,
}

impl Claimer {
    /// Start the claiming task (on the current tokio runtime). `cap` is the org cap
    /// (`MAX_RUNNING_PER_ORG`, 0 = none).
    pub fn start(pool: PgPool, me: LeaseHolder, cap: u32, graphs: Arc<GraphCache>) -> Self {
        let batches = Batches::start("the claimer", MAX_BATCH, move |jobs| {
            claim_batch(pool.clone(), me.clone(), cap, graphs.clone(), jobs)
        });
        Self { batches }
    }

    /// Claim the job's run; returns once the claim is committed.
    pub async fn claim(&self, job: ClaimJob) -> Result<Claimed, StorageError> {
        self.batches.submit(job).await
    }
}

async fn claim_batch(
    pool: PgPool,
    me: LeaseHolder,
    cap: u32,
    graphs: Arc<GraphCache>,
    jobs: Vec<ClaimJob>,
) -> Vec<Result<Claimed, StorageError>> {
    let n = jobs.len();
    crate::metrics::CLAIM_BATCH.observe(n as f64);
    let now = shared_models::time::now();
    let claimed = blocking(&pool, move |conn| {
        let mut cached = HashMap::new();
        // A claimed run whose version this worker has compiled gets the graph, not the definition.
        let claims =
            storage::claim_runs(conn, &jobs, &me, cap, now, |run| match graphs.get(run) {
                Some(graph) => {
                    cached.insert(run.id.clone(), graph);
                    true
                }
                None => false,
            })?;
        let with_graphs = claims
            .into_iter()
            .map(|claim| {
                let claim = claim?;
                let graph = match &claim {
                    Claim::Claimed(c) => cached.remove(&c.run.id),
                    _ => None,
                };
                Ok((claim, graph))
            })
            .collect();
        Ok(with_graphs)
    })
    .await;
    if let Err(e) = &claimed {
        log::warn!("claim batch failed: {e}");
    }
    answers(n, claimed)
}
