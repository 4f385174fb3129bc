//! A PostgreSQL cluster of its own.

use super::{run, running_as_root, tail, token, TestCerts};
use crate::free_port;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A PostgreSQL cluster of its own: `initdb` in a temp dir, trust authentication, listening
/// on 127.0.0.1:<free port>. As root, the server runs as the `postgres` OS user.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    running: bool,
    max_connections: u32,
}

fn postgres_bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .expect("initdb not found under /usr/lib/postgresql/*/bin (install postgresql)")
}

impl PrivatePostgres {
    /// `initdb` and start with `max_connections=200`; panics if that fails (within 60 s).
    pub fn start() -> PrivatePostgres {
        Self::start_with(200, None)
    }

    /// [`PrivatePostgres::start`] with PostgreSQL's `max_connections` (3 of them are kept
    /// for superusers, as `superuser_reserved_connections` has it by default).
    pub fn start_with_max_connections(max_connections: u32) -> PrivatePostgres {
        Self::start_with(max_connections, None)
    }

    /// Like [`PrivatePostgres::start`], with `ssl = on` serving `certs`' server certificate,
    /// and TCP connections accepted over TLS only (`hostssl` in pg_hba.conf, nothing else).
    pub fn start_tls(certs: &TestCerts) -> PrivatePostgres {
        Self::start_with(200, Some(certs))
    }

    fn start_with(max_connections: u32, tls: Option<&TestCerts>) -> PrivatePostgres {
        let dir = std::env::temp_dir().join(format!("thygon-fault-pg-{}", token()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let as_postgres = running_as_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres", &dir.display().to_string()])
                .status()
                .expect("chown");
            assert!(status.success(), "chown postgres {}", dir.display());
        }
        let mut pg = PrivatePostgres {
            port: free_port(),
            dir,
            bin: postgres_bin_dir(),
            as_postgres,
            running: false,
            max_connections,
        };
        let data = pg.data_dir();
        let mut initdb = pg.command("initdb");
        initdb.args(["-D", &data, "-A", "trust", "-U", "postgres", "-E", "UTF8"]);
        initdb.args(["--locale=C", "--no-sync"]);
        run(initdb, Duration::from_secs(60), &pg.dir.join("initdb.log"))
            .unwrap_or_else(|e| panic!("initdb: {e}"));
        if let Some(certs) = tls {
            pg.serve_tls(certs);
        }
        pg.start_again();
        pg
    }

    /// The server key must belong to the server's user and be private to it.
    fn serve_tls(&self, certs: &TestCerts) {
        let data = self.dir.join("data");
        for (from, to) in [
            (&certs.server_cert, "server.crt"),
            (&certs.server_key, "server.key"),
        ] {
            let to = data.join(to);
            std::fs::copy(from, &to).expect("copy the server certificate");
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
            if self.as_postgres {
                let status = Command::new("chown")
                    .args(["postgres:postgres", &to.display().to_string()])
                    .status()
                    .expect("chown");
                assert!(status.success(), "chown postgres {}", to.display());
            }
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(
            &mut conf,
            b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )
        .expect("postgresql.conf");
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .expect("pg_hba.conf");
    }

    fn data_dir(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program).display().to_string();
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--", &program]);
            cmd
        } else {
            Command::new(program)
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let mut cmd = self.command("pg_ctl");
        cmd.args(["-D", &self.data_dir(), "-w", "-t", "60"])
            .args(args);
        run(cmd, Duration::from_secs(70), &self.dir.join("pg_ctl.log"))
    }

    /// Start the stopped cluster (same data, same port).
    pub fn start_again(&mut self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections={}",
            self.port,
            self.dir.display(),
            self.max_connections
        );
        let log = self.dir.join("postgres.log").display().to_string();
        self.pg_ctl(&["-l", &log, "-o", &options, "start"])
            .unwrap_or_else(|e| panic!("pg_ctl start: {e}\n{}", tail(Path::new(&log), 20)));
        self.running = true;
    }

    /// `pg_ctl stop -m fast`: open connections are cut, as in a real restart.
    pub fn stop(&mut self) {
        self.pg_ctl(&["-m", "fast", "stop"])
            .unwrap_or_else(|e| panic!("pg_ctl stop: {e}"));
        self.running = false;
    }

    /// Stop, then start again.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A new database with every migration applied; returns its URL.
    pub fn create_database(&self) -> String {
        let url = self.create_empty_database();
        shared_models::db::run_migrations(&url).expect("migrate the private database");
        url
    }

    /// A new database without any migration; returns its URL.
    pub fn create_empty_database(&self) -> String {
        let name = format!("thygon_fault_{}", token());
        let mut cmd = Command::new(self.bin.join("createdb"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", &name]);
        run(cmd, Duration::from_secs(30), &self.dir.join("createdb.log"))
            .unwrap_or_else(|e| panic!("createdb: {e}"));
        self.url(&name)
    }

    /// The connections to `database` now, by state (`active`, `idle`, ...), as
    /// `pg_stat_activity` shows them; psql's connections (this query's, [`Self::psql`]'s)
    /// are not counted.
    pub fn connections(&self, database: &str) -> Vec<(String, i64)> {
        self.psql(
            "postgres",
            &format!(
                "SELECT coalesce(state, '?'), count(*) FROM pg_stat_activity \
                 WHERE datname = '{database}' AND application_name <> 'psql' GROUP BY 1"
            ),
        )
        .lines()
        .filter_map(|l| {
            let (state, n) = l.rsplit_once('|')?;
            Some((state.to_string(), n.parse().ok()?))
        })
        .collect()
    }

    /// `sql` run by psql as the superuser in `database`: its rows, columns split by `|`.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", database, "-At", "-c", sql])
            .output()
            .expect("psql");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
