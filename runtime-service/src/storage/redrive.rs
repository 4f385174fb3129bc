//! What the redrive of dead letters (`POST /ops/dead-letters/redrive`) reads of the runs
//! their jobs name.

use diesel::prelude::*;
use diesel::result::Error;
use shared_models::schema::runs;
use std::collections::HashMap;

/// What decides a dead letter's fate: whose run it is, of which workflow, in what state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunFacts {
    pub org_id: String,
    pub workflow_id: String,
    pub status: shared_models::status::RunStatus,
}

/// The runs among `ids` that exist, by id (one primary-key look-up per id).
pub(crate) fn runs_of_letters(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<HashMap<String, RunFacts>, Error> {
    Ok(runs::table
        .filter(runs::id.eq_any(ids))
        .select((runs::id, runs::org_id, runs::workflow_id, runs::status))
        .load::<(String, String, String, shared_models::status::RunStatus)>(conn)?
        .into_iter()
        .map(|(id, org_id, workflow_id, status)| {
            (
                id,
                RunFacts {
                    org_id,
                    workflow_id,
                    status,
                },
            )
        })
        .collect())
}
