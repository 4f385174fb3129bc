//! `src/schema.rs` is written by hand; these tests check it against the database the
//! migrations build: the same tables, the same columns in the same order with the same types
//! and nullability, the same primary keys, and every table in
//! `allow_tables_to_appear_in_same_query!`.

use diesel::prelude::*;
use diesel::sql_types::{Bool, Integer, Text};
use std::collections::{BTreeMap, BTreeSet};
use thygon_testkit::TestDb;

const SCHEMA_RS: &str = include_str!("../src/schema.rs");

/// The table diesel's migration harness keeps; it is not part of the schema.
const DIESEL_MIGRATIONS_TABLE: &str = "__diesel_schema_migrations";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    name: String,
    /// As `information_schema.columns.data_type` spells it.
    data_type: String,
    nullable: bool,
}

impl std::fmt::Display for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let null = if self.nullable { "NULL" } else { "NOT NULL" };
        write!(f, "{} {} {}", self.name, self.data_type, null)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Table {
    name: String,
    primary_key: Vec<String>,
    columns: Vec<Column>,
}

// ---------------------------------------------------------------------------------------
// Parsing src/schema.rs
// ---------------------------------------------------------------------------------------

/// The source without `//` comments (schema.rs has no string literals that could hold `//`).
fn strip_comments(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Drop `#[...]` attributes (e.g. `#[sql_name = "..."]`, `#[max_length = 255]`).
fn strip_attributes(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("#[") {
        out.push_str(&rest[..start]);
        let end = matching_close(rest, start + 1)
            .unwrap_or_else(|| panic!("unclosed attribute in schema.rs: {}", &rest[start..]));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The index of the bracket closing the one at `open` (`{`, `(`, `[` or `<`).
fn matching_close(s: &str, open: usize) -> Option<usize> {
    let bytes = s.as_bytes();
    let (o, c) = match bytes[open] {
        b'{' => (b'{', b'}'),
        b'(' => (b'(', b')'),
        b'[' => (b'[', b']'),
        b'<' => (b'<', b'>'),
        other => panic!("not an opening bracket: {:?}", other as char),
    };
    let mut depth = 0usize;
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        if b == o {
            depth += 1;
        } else if b == c {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// The bodies (between the outer brackets) of every invocation of `macro_name!`.
fn macro_bodies<'a>(source: &'a str, macro_name: &str) -> Vec<&'a str> {
    let needle = format!("{macro_name}!");
    let mut bodies = Vec::new();
    let mut from = 0;
    while let Some(found) = source[from..].find(&needle) {
        let after = from + found + needle.len();
        let open = after
            + source[after..]
                .find(|c: char| !c.is_whitespace())
                .unwrap_or_else(|| panic!("`{needle}` at the end of schema.rs"));
        let close = matching_close(source, open)
            .unwrap_or_else(|| panic!("unclosed `{needle}` in schema.rs"));
        bodies.push(&source[open + 1..close]);
        from = close + 1;
    }
    bodies
}

/// Split on commas that are not inside `<...>`, `(...)` or `[...]`; empty parts dropped.
fn split_top_level_commas(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let mut previous = ' ';
    for (i, c) in s.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            // the `>` of `->` closes nothing
            '>' if previous == '-' => {}
            '>' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        previous = c;
    }
    parts.push(s[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// The last path segment: `diesel::sql_types::Text` -> `Text`.
fn last_segment(path: &str) -> &str {
    path.rsplit("::").next().unwrap_or(path).trim()
}

/// A diesel SQL type as `information_schema.columns` reports it: (data_type, nullable).
fn pg_type(diesel_type: &str) -> (String, bool) {
    let t = diesel_type.trim();
    if let Some(open) = t.find('<') {
        let outer = last_segment(&t[..open]);
        let inner = t[open + 1..]
            .strip_suffix('>')
            .unwrap_or_else(|| panic!("cannot read the diesel type {t:?}"));
        if outer == "Nullable" {
            let (data_type, _) = pg_type(inner);
            return (data_type, true);
        }
        panic!("no PostgreSQL type known for the diesel type {t:?}: add it to `pg_type`");
    }
    let data_type = match last_segment(t) {
        "Text" | "Varchar" | "VarChar" => "text",
        "Int2" | "SmallInt" => "smallint",
        "Int4" | "Integer" => "integer",
        "Int8" | "BigInt" => "bigint",
        "Bool" => "boolean",
        "Timestamptz" => "timestamp with time zone",
        "Timestamp" => "timestamp without time zone",
        "Date" => "date",
        "Jsonb" => "jsonb",
        "Json" => "json",
        "Float4" => "real",
        "Float8" | "Double" => "double precision",
        "Uuid" => "uuid",
        "Bytea" | "Binary" => "bytea",
        "Numeric" => "numeric",
        other => {
            panic!("no PostgreSQL type known for the diesel type {other:?}: add it to `pg_type`")
        }
    };
    (data_type.to_string(), false)
}

/// One `diesel::table!` body: `name (pk, ...) { col -> Type, ... }`.
fn parse_table(body: &str) -> Table {
    let body = body.trim();
    let paren = body
        .find('(')
        .unwrap_or_else(|| panic!("table! without a primary key list: {body}"));
    let name = last_segment(&body[..paren]).to_string();
    assert!(
        !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_'),
        "cannot read the table name in table! {{ {body} }}"
    );
    let paren_close = matching_close(body, paren)
        .unwrap_or_else(|| panic!("unclosed primary key list of table {name}"));
    let primary_key = split_top_level_commas(&body[paren + 1..paren_close])
        .into_iter()
        .map(str::to_string)
        .collect();
    let brace = paren_close
        + body[paren_close..]
            .find('{')
            .unwrap_or_else(|| panic!("table {name} has no column block"));
    let brace_close =
        matching_close(body, brace).unwrap_or_else(|| panic!("unclosed columns of table {name}"));
    let columns = split_top_level_commas(&body[brace + 1..brace_close])
        .into_iter()
        .map(|entry| {
            let (col, ty) = entry
                .split_once("->")
                .unwrap_or_else(|| panic!("table {name}: cannot read the column {entry:?}"));
            let (data_type, nullable) = pg_type(ty);
            Column {
                name: col.trim().to_string(),
                data_type,
                nullable,
            }
        })
        .collect();
    Table {
        name,
        primary_key,
        columns,
    }
}

fn parse_tables(source: &str) -> Vec<Table> {
    let source = strip_attributes(&strip_comments(source));
    macro_bodies(&source, "diesel::table")
        .into_iter()
        .map(parse_table)
        .collect()
}

/// The table lists of every `diesel::allow_tables_to_appear_in_same_query!`.
fn parse_allow_lists(source: &str) -> Vec<Vec<String>> {
    let source = strip_comments(source);
    macro_bodies(&source, "diesel::allow_tables_to_appear_in_same_query")
        .into_iter()
        .map(|body| {
            split_top_level_commas(body)
                .into_iter()
                .map(str::to_string)
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Reading the migrated database
// ---------------------------------------------------------------------------------------

#[derive(QueryableByName)]
struct DbColumn {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
    #[diesel(sql_type = Bool)]
    nullable: bool,
}

#[derive(QueryableByName)]
struct DbTable {
    #[diesel(sql_type = Text)]
    table_name: String,
}

#[derive(QueryableByName)]
struct DbKeyColumn {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Integer)]
    position: i32,
}

/// Every table of schema `public` (but diesel's migrations table), by name.
fn database_tables(conn: &mut PgConnection) -> BTreeMap<String, Table> {
    let names: Vec<DbTable> = diesel::sql_query(
        "SELECT table_name::text AS table_name FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name <> $1 ORDER BY table_name",
    )
    .bind::<Text, _>(DIESEL_MIGRATIONS_TABLE)
    .load(conn)
    .expect("list tables");
    let mut tables: BTreeMap<String, Table> = names
        .into_iter()
        .map(|t| {
            let table = Table {
                name: t.table_name.clone(),
                primary_key: Vec::new(),
                columns: Vec::new(),
            };
            (t.table_name, table)
        })
        .collect();

    let columns: Vec<DbColumn> = diesel::sql_query(
        "SELECT table_name::text AS table_name, column_name::text AS column_name, \
                data_type::text AS data_type, (is_nullable = 'YES') AS nullable \
         FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name <> $1 \
         ORDER BY table_name, ordinal_position",
    )
    .bind::<Text, _>(DIESEL_MIGRATIONS_TABLE)
    .load(conn)
    .expect("list columns");
    for c in columns {
        let table = tables
            .get_mut(&c.table_name)
            .unwrap_or_else(|| panic!("columns of unlisted relation {}", c.table_name));
        table.columns.push(Column {
            name: c.column_name,
            data_type: c.data_type,
            nullable: c.nullable,
        });
    }

    let keys: Vec<DbKeyColumn> = diesel::sql_query(
        "SELECT kcu.table_name::text AS table_name, kcu.column_name::text AS column_name, \
                kcu.ordinal_position::int4 AS position \
         FROM information_schema.table_constraints tc \
         JOIN information_schema.key_column_usage kcu \
           ON kcu.constraint_schema = tc.constraint_schema \
          AND kcu.constraint_name = tc.constraint_name \
          AND kcu.table_name = tc.table_name \
         WHERE tc.table_schema = 'public' AND tc.constraint_type = 'PRIMARY KEY' \
           AND tc.table_name <> $1 \
         ORDER BY kcu.table_name, kcu.ordinal_position",
    )
    .bind::<Text, _>(DIESEL_MIGRATIONS_TABLE)
    .load(conn)
    .expect("list primary keys");
    for k in keys {
        let table = tables
            .get_mut(&k.table_name)
            .unwrap_or_else(|| panic!("primary key of unlisted relation {}", k.table_name));
        assert_eq!(
            table.primary_key.len() + 1,
            k.position as usize,
            "primary key columns of {} out of order",
            k.table_name
        );
        table.primary_key.push(k.column_name);
    }
    tables
}

// ---------------------------------------------------------------------------------------
// Comparing
// ---------------------------------------------------------------------------------------

/// Every difference between the schema.rs tables and the database's, one line each.
fn differences(declared: &[Table], database: &BTreeMap<String, Table>) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for table in declared {
        if !seen.insert(table.name.as_str()) {
            out.push(format!("{}: declared twice in schema.rs", table.name));
        }
    }
    for table in declared {
        if !database.contains_key(&table.name) {
            out.push(format!(
                "{}: in schema.rs but not in the database",
                table.name
            ));
        }
    }
    for name in database.keys() {
        if !seen.contains(name.as_str()) {
            out.push(format!("{name}: in the database but not in schema.rs"));
        }
    }
    for table in declared {
        if let Some(db) = database.get(&table.name) {
            out.extend(table_differences(table, db));
        }
    }
    out
}

fn table_differences(declared: &Table, db: &Table) -> Vec<String> {
    let t = &declared.name;
    let mut out = Vec::new();
    let db_columns: BTreeMap<&str, &Column> =
        db.columns.iter().map(|c| (c.name.as_str(), c)).collect();
    let declared_columns: BTreeMap<&str, &Column> = declared
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    for c in &declared.columns {
        match db_columns.get(c.name.as_str()) {
            None => out.push(format!(
                "{t}.{}: in schema.rs ({c}) but not in the database",
                c.name
            )),
            Some(d) if *d != c => out.push(format!(
                "{t}.{}: schema.rs says `{c}`, the database has `{d}`",
                c.name
            )),
            Some(_) => {}
        }
    }
    for d in &db.columns {
        if !declared_columns.contains_key(d.name.as_str()) {
            out.push(format!(
                "{t}.{}: in the database ({d}) but not in schema.rs",
                d.name
            ));
        }
    }
    // Column order matters: `table::all_columns` and `Queryable` structs follow it.
    let declared_order: Vec<&str> = declared
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| db_columns.contains_key(n))
        .collect();
    let db_order: Vec<&str> = db
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| declared_columns.contains_key(n))
        .collect();
    if declared_order != db_order {
        out.push(format!(
            "{t}: column order differs\n    schema.rs: {}\n    database:  {}",
            declared_order.join(", "),
            db_order.join(", ")
        ));
    }
    if declared.primary_key != db.primary_key {
        out.push(format!(
            "{t}: primary key is ({}) in schema.rs but ({}) in the database",
            declared.primary_key.join(", "),
            db.primary_key.join(", ")
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn schema_matches_the_migrations() {
    let declared = parse_tables(SCHEMA_RS);
    assert!(
        !declared.is_empty(),
        "found no diesel::table! in src/schema.rs"
    );

    let db = TestDb::create();
    let mut conn = db.pool.get().expect("connection");
    let database = database_tables(&mut conn);

    let diff = differences(&declared, &database);
    assert!(
        diff.is_empty(),
        "src/schema.rs does not match the migrated database ({} difference(s)):\n  {}\n",
        diff.len(),
        diff.join("\n  ")
    );
}

#[test]
fn every_table_may_appear_in_the_same_query() {
    let tables: Vec<String> = parse_tables(SCHEMA_RS)
        .into_iter()
        .map(|t| t.name)
        .collect();
    let lists = parse_allow_lists(SCHEMA_RS);
    assert!(
        !lists.is_empty(),
        "src/schema.rs has no diesel::allow_tables_to_appear_in_same_query!"
    );

    let mut problems = Vec::new();
    for list in &lists {
        let mut seen = BTreeSet::new();
        for name in list {
            if !seen.insert(name) {
                problems.push(format!("{name}: listed twice in one invocation"));
            }
            if !tables.contains(name) {
                problems.push(format!("{name}: listed, but no diesel::table! declares it"));
            }
        }
    }
    // The macro allows each pair of tables named in one invocation; every pair must be.
    for (i, a) in tables.iter().enumerate() {
        if !lists.iter().any(|l| l.contains(a)) {
            problems.push(format!("{a}: not listed"));
            continue;
        }
        for b in &tables[i + 1..] {
            let together = lists.iter().any(|l| l.contains(a) && l.contains(b));
            if !together && lists.iter().any(|l| l.contains(b)) {
                problems.push(format!("{a} and {b}: never listed in the same invocation"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "diesel::allow_tables_to_appear_in_same_query! in src/schema.rs does not cover every \
         table:\n  {}\n",
        problems.join("\n  ")
    );
}

#[test]
fn the_parser_reads_table_blocks() {
    let source = r#"
        //! `diesel::table!` in a comment is not a table
        diesel::table! {
            /// a doc comment
            things (a, b) {
                a -> Text,
                #[max_length = 10]
                b -> Int8,
                c -> Nullable<diesel::sql_types::Jsonb>,
                d -> Float8
            }
        }
        diesel::allow_tables_to_appear_in_same_query!(things, others,);
    "#;
    let tables = parse_tables(source);
    let col = |name: &str, data_type: &str, nullable| Column {
        name: name.into(),
        data_type: data_type.into(),
        nullable,
    };
    assert_eq!(
        tables,
        vec![Table {
            name: "things".into(),
            primary_key: vec!["a".into(), "b".into()],
            columns: vec![
                col("a", "text", false),
                col("b", "bigint", false),
                col("c", "jsonb", true),
                col("d", "double precision", false),
            ],
        }]
    );
    assert_eq!(
        parse_allow_lists(source),
        vec![vec!["things".to_string(), "others".to_string()]]
    );
}

#[test]
fn differences_name_the_table_and_column() {
    let col = |name: &str, data_type: &str, nullable| Column {
        name: name.into(),
        data_type: data_type.into(),
        nullable,
    };
    let declared = vec![Table {
        name: "t".into(),
        primary_key: vec!["id".into()],
        columns: vec![col("id", "text", false), col("n", "integer", true)],
    }];
    let mut database = BTreeMap::new();
    database.insert(
        "t".to_string(),
        Table {
            name: "t".into(),
            primary_key: vec!["id".into()],
            columns: vec![col("id", "text", false), col("n", "bigint", true)],
        },
    );
    database.insert(
        "u".to_string(),
        Table {
            name: "u".into(),
            primary_key: vec![],
            columns: vec![],
        },
    );
    assert_eq!(
        differences(&declared, &database),
        vec![
            "u: in the database but not in schema.rs".to_string(),
            "t.n: schema.rs says `n integer NULL`, the database has `n bigint NULL`".to_string(),
        ]
    );
}
