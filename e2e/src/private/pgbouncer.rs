//! A PgBouncer of its own in front of a private PostgreSQL.

use super::{running_as_root, tail, token, PrivatePostgres};
use crate::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A PgBouncer of its own in front of a [`PrivatePostgres`], in transaction pooling mode:
/// clients see one PostgreSQL on 127.0.0.1:<free port>; PostgreSQL sees at most
/// `server_pool_size` connections per database. As root, it runs as the `postgres` OS user
/// (PgBouncer refuses to run as root).
pub struct PrivatePgBouncer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivatePgBouncer {
    /// Start PgBouncer (`/usr/sbin/pgbouncer`, Debian's package `pgbouncer`) for `pg`, and
    /// wait until it accepts connections; panics if it does not within 20 s.
    pub fn start(pg: &PrivatePostgres, server_pool_size: u32) -> PrivatePgBouncer {
        let dir = std::env::temp_dir().join(format!("thygon-pgbouncer-{}", token()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = free_port();
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={pg_port}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/users.txt\n\
             pool_mode = transaction\ndefault_pool_size = {server_pool_size}\n\
             max_client_conn = 2000\nmax_db_connections = {server_pool_size}\n\
             server_reset_query =\nignore_startup_parameters = extra_float_digits,options\n\
             logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n",
            pg_port = pg.port,
            dir = dir.display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).expect("pgbouncer.ini");
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").expect("users.txt");
        let program = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("pgbouncer not found (Debian package pgbouncer; make test installs it)");
        let ini = dir.join("pgbouncer.ini").display().to_string();
        let mut cmd = if running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres", &dir.display().to_string()])
                .status()
                .expect("chown");
            assert!(status.success(), "chown postgres {}", dir.display());
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--", program, &ini]);
            cmd
        } else {
            let mut cmd = Command::new(program);
            cmd.arg(&ini);
            cmd
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let bouncer = PrivatePgBouncer {
            port,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen within 20 s:\n{}",
                tail(&bouncer.dir.join("pgbouncer.log"), 20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        bouncer
    }

    /// `url` (a [`PrivatePostgres::url`]) through this PgBouncer.
    pub fn url_for(&self, url: &str) -> String {
        let (head, database) = url.rsplit_once('/').expect("a database URL");
        let (head, _port) = head.rsplit_once(':').expect("a host:port");
        format!("{head}:{}/{database}", self.port)
    }

    /// What PgBouncer logged (its last lines).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.join("pgbouncer.log"), lines)
    }
}

impl Drop for PrivatePgBouncer {
    fn drop(&mut self) {
        // runuser may not pass a kill on to PgBouncer: stop it by its pid file first.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
