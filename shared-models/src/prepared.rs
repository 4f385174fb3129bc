//! Statements of fixed text that PostgreSQL parses and plans once per connection.
//!
//! Diesel keeps a prepared statement per connection for the queries it knows to be of fixed
//! text (most `SELECT`s), but never for an `UPDATE`, an upsert, an `INSERT` through
//! `Insertable` or `sql_query`: those are parsed, analysed and planned at every call, and on
//! the hot paths (the trigger batch, the claim, the checkpoint batch) that planning was
//! 40-70% of their execution time (docs/PERFORMANCE.md).
//!
//! [`prepared`] is `sql_query` for a `&'static str`: the text never changes, so diesel's
//! statement cache keys it by that text (and the bind types) and executes it by name from
//! the second call on. Batches pass their rows as arrays (`= ANY($1)`, `unnest($1, $2, ...)`)
//! so that one text serves every batch size. Binds are positional and added in order with
//! [`Prepared::bind`]; rows load through `QueryableByName`, as with `sql_query`.
//!
//! Only text fixed at compile time belongs here: a statement built from input would fill the
//! cache with one prepared statement per variant. A statement that returns rows names its
//! columns, never `*`: it outlives migrations on a live connection, and PostgreSQL refuses
//! to re-plan a prepared statement whose result type changed.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::{QueryResult, RunQueryDsl};
use std::marker::PhantomData;

/// One field of every row, as the array bound to an `unnest` (or `= ANY`) parameter.
pub fn column<'a, T, V>(rows: &'a [T], field: impl Fn(&'a T) -> V) -> Vec<V> {
    rows.iter().map(field).collect()
}

/// A row of one text column `id`: what `RETURNING id` gives.
#[derive(Debug, diesel::QueryableByName)]
pub struct Id {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub id: String,
}

/// A statement of fixed text, prepared once per connection; see the module docs.
#[derive(Debug, Clone, Copy)]
#[must_use = "queries are only executed when calling `execute`, `load` or similar"]
pub struct Prepared {
    sql: &'static str,
}

/// The statement `sql` (with `$1`, `$2`, ... for its binds), prepared once per connection.
pub fn prepared(sql: &'static str) -> Prepared {
    Prepared { sql }
}

impl Prepared {
    /// The value of `$1`, of SQL type `ST`.
    pub fn bind<ST, V>(self, value: V) -> Bound<Self, V, ST> {
        Bound::new(self, value)
    }
}

/// A [`Prepared`] statement with its binds so far (what diesel's `UncheckedBind` is to
/// `sql_query`; that one is not public).
#[derive(Debug, Clone, Copy)]
#[must_use = "queries are only executed when calling `execute`, `load` or similar"]
pub struct Bound<Q, V, ST> {
    query: Q,
    value: V,
    sql_type: PhantomData<ST>,
}

impl<Q, V, ST> Bound<Q, V, ST> {
    fn new(query: Q, value: V) -> Self {
        Self {
            query,
            value,
            sql_type: PhantomData,
        }
    }

    /// The value of the next `$n`, of SQL type `ST2`.
    pub fn bind<ST2, V2>(self, value: V2) -> Bound<Self, V2, ST2> {
        Bound::new(self, value)
    }
}

// No static query id: diesel keys its statement cache by the SQL text and the bind types,
// which is what "prepared once per text" means.
impl QueryId for Prepared {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q, V, ST> QueryId for Bound<Q, V, ST> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Prepared {
    type SqlType = Untyped;
}

impl<Q, V, ST> Query for Bound<Q, V, ST> {
    type SqlType = Untyped;
}

impl<Conn> RunQueryDsl<Conn> for Prepared {}

impl<Conn, Q, V, ST> RunQueryDsl<Conn> for Bound<Q, V, ST> {}

impl QueryFragment<Pg> for Prepared {
    // Unlike `SqlQuery`, this does not call `unsafe_to_cache_prepared`: the text is fixed.
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(self.sql);
        out.push_sql("\n-- binds:");
        Ok(())
    }
}

impl<Q, V, ST> QueryFragment<Pg> for Bound<Q, V, ST>
where
    Q: QueryFragment<Pg>,
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    // The text first (from the innermost `Prepared`), then the values in bind order. Diesel's
    // public API collects a bind only by writing its `$n` where it is called, and the text
    // already says where each `$n` goes, so they are written into a trailing line comment:
    // `...\n-- binds: $1 $2 $3`. The k-th `bind` is `$k`.
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.query.walk_ast(out.reborrow())?;
        out.push_sql(" ");
        out.push_bind_param(&self.value)
    }
}
