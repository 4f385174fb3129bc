//! Migrations applied by several processes at once (docs/DEPLOY.md: `workflow-service
//! migrate` takes an advisory lock; one migrates, the others wait and find nothing to do).

use diesel::prelude::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use thygon_e2e::{binary, free_port, workspace_root};
use thygon_testkit::TestDb;

/// The versions of the repository's migrations, as diesel records them (`2026-11-28-000001_init`
/// is `20261128000001`).
fn repository_versions() -> Vec<String> {
    let mut versions: Vec<String> =
        std::fs::read_dir(workspace_root().join("shared-models/migrations"))
            .expect("migrations dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("up.sql").exists())
            .map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.split('_').next().expect("version").replace('-', "")
            })
            .collect();
    versions.sort();
    versions
}

/// `workflow-service migrate` on `url`, started now; its child.
fn migrate(url: &str) -> std::process::Child {
    Command::new(binary("workflow-service", false))
        .arg("migrate")
        .env("DATABASE_URL", url)
        .env_remove("MIGRATION_DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start workflow-service migrate")
}

/// How many migrations a migrate process said it applied (`migrations: N applied`).
fn applied(log: &str) -> usize {
    log.lines()
        .find_map(|l| {
            l.split("migrations: ")
                .nth(1)?
                .strip_suffix(" applied")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no \"migrations: N applied\" line in:\n{log}"))
}

#[tokio::test]
async fn three_migrate_processes_at_once_apply_each_migration_once_and_a_service_starts() {
    let db = TestDb::create_empty();
    let expected = repository_versions();
    assert!(expected.len() >= 9, "found {} migrations", expected.len());

    // Premise: the database is empty.
    let mut conn = PgConnection::establish(&db.url).expect("connect");
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let tables: Count =
        diesel::sql_query("SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public'")
            .get_result(&mut conn)
            .expect("count tables");
    assert_eq!(tables.n, 0, "the fresh database has tables");

    let children: Vec<_> = (0..3).map(|_| migrate(&db.url)).collect();
    let mut total = 0;
    for child in children {
        let out = child.wait_with_output().expect("migrate output");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "migrate exited {}:\n{log}",
            out.status
        );
        total += applied(&log);
    }
    // Between them they applied every migration exactly once.
    assert_eq!(
        total,
        expected.len(),
        "migrations applied by the three processes"
    );

    #[derive(QueryableByName)]
    struct Version {
        #[diesel(sql_type = diesel::sql_types::Text)]
        version: String,
    }
    let recorded: Vec<String> =
        diesel::sql_query("SELECT version FROM __diesel_schema_migrations ORDER BY version")
            .load::<Version>(&mut conn)
            .expect("migration table")
            .into_iter()
            .map(|v| v.version)
            .collect();
    assert_eq!(recorded, expected, "each version recorded once");

    // A fourth finds nothing to do.
    let out = migrate(&db.url).wait_with_output().expect("migrate");
    let log =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}");
    assert_eq!(applied(&log), 0, "{log}");

    // And a service starts on the schema (it refuses one with migrations missing).
    let port = free_port();
    let mut service = Command::new(binary("workflow-service", false))
        .env("DATABASE_URL", &db.url)
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("RUNTIME_SERVICE_URL", "http://127.0.0.1:1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start workflow-service");
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        if let Ok(res) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            if res.status() == 200 {
                break true;
            }
        }
        if let Ok(Some(status)) = service.try_wait() {
            panic!("workflow-service exited ({status}) on the migrated schema");
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = service.kill();
    let _ = service.wait();
    assert!(ready, "workflow-service was not ready within 60 s");
}
