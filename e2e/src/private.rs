//! Private PostgreSQL clusters and RabbitMQ nodes for fault tests: started on free ports in
//! a temp dir, stopped (and their files removed) when dropped. A fault test can stop, start
//! and restart them without touching the machine's own PostgreSQL (5432) and RabbitMQ
//! (5672, node `rabbit@<host>`), which the rest of the suite shares.
//!
//! The calls block (they run `pg_ctl`, `rabbitmqctl`); from async code call them inside
//! `tokio::task::block_in_place` (multi-threaded runtime) or `spawn_blocking`.
//!
//! [`TestCerts`] makes a throwaway CA and a server certificate for 127.0.0.1 / localhost;
//! [`PrivatePostgres::start_tls`] and [`PrivateRabbit::start_tls`] serve TLS with it.

use crate::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn token() -> String {
    shared_models::testing::unique_token()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Run a command to its end with a deadline; `Err` carries what it printed.
fn run(mut cmd: Command, within: Duration, log: &Path) -> Result<(), String> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{cmd:?}: {status}\n{}", tail(log, 20))),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?}: no answer within {within:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A CA of its own (in a temp dir, removed when dropped) and a server certificate it signed
/// for `IP:127.0.0.1` and `DNS:localhost`, made with the `openssl` command (P-256 keys,
/// valid for two days). `other_ca` is a second CA that signed nothing here: trusting only it
/// must fail verification.
pub struct TestCerts {
    dir: PathBuf,
    /// The CA certificate (PEM): what a client trusts.
    pub ca: PathBuf,
    /// An unrelated CA certificate (PEM).
    pub other_ca: PathBuf,
    /// The server's certificate (PEM), signed by `ca`.
    pub server_cert: PathBuf,
    /// The server's private key (PEM, unencrypted).
    pub server_key: PathBuf,
}

const OPENSSL_CONF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
authorityKeyIdentifier = keyid
subjectKeyIdentifier = hash
";

impl TestCerts {
    /// Make the CAs and the server certificate; panics if `openssl` fails.
    pub fn generate() -> TestCerts {
        let dir = std::env::temp_dir().join(format!("thygon-tls-{}", token()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("openssl.cnf"), OPENSSL_CONF).expect("openssl.cnf");
        let file = |name: &str| dir.join(name).display().to_string();
        let log = dir.join("openssl.log");
        let openssl = |args: &[&str]| {
            let mut cmd = Command::new("openssl");
            cmd.args(args);
            run(cmd, Duration::from_secs(30), &log).unwrap_or_else(|e| panic!("openssl: {e}"));
        };
        let conf = file("openssl.cnf");
        let new_key = |key: &str, out: &str, subject: &str, extra: &[&str]| {
            let mut args = vec!["req", "-config", &conf, "-subj", subject, "-nodes"];
            args.extend(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
            args.extend(["-keyout", key, "-out", out]);
            args.extend(extra);
            openssl(&args);
        };
        let self_signed = ["-x509", "-extensions", "ca_ext", "-days", "2"];
        let (ca, ca_key) = (file("ca.pem"), file("ca.key"));
        new_key(&ca_key, &ca, "/CN=Thygon test CA", &self_signed);
        let (other, other_key) = (file("other-ca.pem"), file("other-ca.key"));
        new_key(&other_key, &other, "/CN=Unrelated test CA", &self_signed);
        let (key, csr, cert) = (file("server.key"), file("server.csr"), file("server.pem"));
        new_key(&key, &csr, "/CN=localhost", &["-new"]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-set_serial",
            "1",
            "-days",
            "2",
            "-extfile",
            &conf,
            "-extensions",
            "server_ext",
            "-out",
            &cert,
        ]);
        TestCerts {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            dir,
        }
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A RabbitMQ node of its own: node `thygon-fault-<token>@localhost`, AMQP on
/// 127.0.0.1:<free port>, its own distribution port, data, logs, config (no plugins) and
/// Erlang cookie (`HOME` is the temp dir). Stopping and starting it keeps its data, so
/// durable queues and persistent messages survive.
pub struct PrivateRabbit {
    pub port: u16,
    /// The TLS listener's port ([`PrivateRabbit::start_tls`]).
    pub tls_port: Option<u16>,
    pub node: String,
    dir: PathBuf,
    dist_port: u16,
    server: Option<Child>,
}

fn rabbit_program(name: &str) -> PathBuf {
    // The packaged /usr/sbin wrappers switch to the `rabbitmq` user and its HOME (and so its
    // cookie); the scripts behind them run as whoever calls them.
    let mut candidates = vec![PathBuf::from("/usr/lib/rabbitmq/bin").join(name)];
    if let Ok(entries) = std::fs::read_dir("/usr/lib/rabbitmq/lib") {
        candidates.extend(entries.flatten().map(|e| e.path().join("sbin").join(name)));
    }
    candidates
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

impl PrivateRabbit {
    /// Start the node and wait until it accepts work (panics after 90 s).
    pub fn start() -> PrivateRabbit {
        Self::start_with(None)
    }

    /// Like [`PrivateRabbit::start`], with a TLS listener too (on `tls_port`) serving
    /// `certs`' server certificate; clients are not asked for certificates.
    pub fn start_tls(certs: &TestCerts) -> PrivateRabbit {
        Self::start_with(Some(certs))
    }

    fn start_with(tls: Option<&TestCerts>) -> PrivateRabbit {
        let dir = std::env::temp_dir().join(format!("thygon-fault-rabbit-{}", token()));
        for sub in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("temp dir");
        }
        let port = free_port();
        let dist_port = free_port();
        let mut conf = format!("listeners.tcp.1 = 127.0.0.1:{port}\n");
        let tls_port = tls.map(|certs| {
            let tls_port = free_port();
            conf.push_str(&format!(
                "listeners.ssl.1 = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                certs.ca.display(),
                certs.server_cert.display(),
                certs.server_key.display()
            ));
            tls_port
        });
        std::fs::write(dir.join("rabbitmq.conf"), conf).expect("rabbitmq.conf");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("rabbitmq-env.conf");
        let mut rabbit = PrivateRabbit {
            port,
            tls_port,
            node: format!("thygon-fault-{}@localhost", token()),
            dir,
            dist_port,
            server: None,
        };
        rabbit.start_again();
        rabbit
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `amqps://` to the TLS listener (a node of [`PrivateRabbit::start_tls`]).
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("a node started with start_tls");
        format!("amqps://guest:guest@127.0.0.1:{port}/%2f")
    }

    /// A user with every permission on the default vhost (unlike `guest`, not limited to
    /// loopback: a test can give it a password of its own).
    pub fn add_user(&self, user: &str, password: &str) {
        let within = Duration::from_secs(30);
        self.ctl(&["add_user", user, password], within)
            .and_then(|()| {
                self.ctl(
                    &["set_permissions", "-p", "/", user, ".*", ".*", ".*"],
                    within,
                )
            })
            .unwrap_or_else(|e| panic!("rabbitmqctl add_user: {e}"));
    }

    fn env(&self, cmd: &mut Command) {
        let path = |p: &str| self.dir.join(p).display().to_string();
        cmd.env("HOME", path("home"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", path("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env_remove("RABBITMQ_NODE_PORT")
            .env_remove("RABBITMQ_NODE_IP_ADDRESS");
    }

    fn ctl(&self, args: &[&str], within: Duration) -> Result<(), String> {
        let mut cmd = Command::new(rabbit_program("rabbitmqctl"));
        self.env(&mut cmd);
        cmd.args(["-n", &self.node]).args(args);
        run(cmd, within, &self.dir.join("rabbitmqctl.log"))
    }

    /// Start the stopped node on its old data and wait until it is up.
    pub fn start_again(&mut self) {
        assert!(self.server.is_none(), "the node is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("log");
        let mut cmd = Command::new(rabbit_program("rabbitmq-server"));
        self.env(&mut cmd);
        let child = cmd
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start rabbitmq-server");
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            // Fails at once while the node has not registered with epmd yet: try again.
            if self
                .ctl(
                    &["await_startup", "--timeout", "30"],
                    Duration::from_secs(40),
                )
                .is_ok()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.server.as_mut().map(|c| c.try_wait()) {
                self.server = None;
                panic!(
                    "rabbitmq-server exited ({status}) while starting:\n{}",
                    tail(&self.dir.join("server.log"), 30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "RabbitMQ node {} not up within 90 s:\n{}",
                self.node,
                tail(&self.dir.join("server.log"), 30)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Shut the node down (connections are closed; durable data stays).
    pub fn stop(&mut self) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        if let Err(e) = self.ctl(&["shutdown"], Duration::from_secs(60)) {
            eprintln!("rabbitmqctl shutdown: {e}; killing the server");
            let _ = child.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
