//! The compiled workflow versions a worker keeps.

use shared_models::graph::WorkflowGraph;
use shared_models::models::RunRow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Compiled workflow versions, shared by every run this worker executes. A version never
/// changes once written, so each is read, parsed and validated once per worker, not at every
/// claim. Bounded: emptied when it reaches [`GraphCache::CAPACITY`] versions.
#[derive(Default)]
pub struct GraphCache {
    graphs: Mutex<HashMap<(String, String, i32), Arc<WorkflowGraph>>>,
}

impl GraphCache {
    pub const CAPACITY: usize = 1024;

    fn key(run: &RunRow) -> (String, String, i32) {
        (
            run.org_id.clone(),
            run.workflow_id.clone(),
            run.workflow_version,
        )
    }

    pub(crate) fn get(&self, run: &RunRow) -> Option<Arc<WorkflowGraph>> {
        let graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        graphs.get(&Self::key(run)).cloned()
    }

    pub(super) fn insert(&self, run: &RunRow, graph: Arc<WorkflowGraph>) {
        let mut graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        if graphs.len() >= Self::CAPACITY {
            graphs.clear();
        }
        graphs.insert(Self::key(run), graph);
    }

    /// How many versions are cached now.
    pub fn len(&self) -> usize {
        self.graphs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
