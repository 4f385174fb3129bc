//! A RabbitMQ node of its own.

use super::{run, tail, token, TestCerts};
use crate::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
