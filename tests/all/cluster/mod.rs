//! Cluster mode against a real `nats-server` with JetStream on loopback: forwarding and
//! subscribing ([`events`]), membership and `qi-host serve --nats` processes
//! ([`processes`]).
//!
//! The server is the `nats-server` on PATH (or `/usr/sbin`, where Debian's package puts it).
//! Without one the tests skip with a message, except under `CI=true`, where `.ci/run` has
//! installed it and a missing server fails them.

mod contexts;
mod events;
mod hostile;
mod processes;
mod redteam_contexts;

use qi_host::cluster::{Cluster, ClusterConfig, EventForwarder};
use qi_host::events::{EventType, NewEvent};
use qi_host::store::crypto::MasterKey;
use qi_host::{EventBus, EventBusConfig, Store, StoreConfig};
use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The `nats-server` binary, or `None` (after saying why) when it is not installed.
pub fn nats_server_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nats-server is not installed; .ci/run installs it (apt-get install nats-server)"
        );
        eprintln!(
            "SKIPPED: nats-server is not installed (apt-get install nats-server); the cluster tests need it"
        );
    }
    found
}

/// A `nats-server -js` on 127.0.0.1, its JetStream files in a temporary directory.
pub struct Nats {
    child: Option<Child>,
    binary: PathBuf,
    pub dir: tempfile::TempDir,
    pub port: u16,
    jetstream: bool,
}

impl Nats {
    /// Starts one (on a port the server picks) and returns once it is ready; `None` when the
    /// binary is missing (see [`nats_server_binary`]).
    pub fn start() -> Option<Nats> {
        Nats::start_with(true)
    }

    /// [`start`](Self::start), with or without JetStream.
    pub fn start_with(jetstream: bool) -> Option<Nats> {
        let binary = nats_server_binary()?;
        let mut nats = Nats {
            child: None,
            binary,
            dir: tempfile::tempdir().unwrap(),
            port: 0,
            jetstream,
        };
        nats.port = nats.spawn(None);
        Some(nats)
    }

    /// Starts the process (on `port`, or a free one) and waits for its ready line.
    fn spawn(&mut self, port: Option<u16>) -> u16 {
        let mut cmd = Command::new(&self.binary);
        cmd.args(["-a", "127.0.0.1", "-p"])
            .arg(port.map_or("-1".to_string(), |p| p.to_string()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if self.jetstream {
            cmd.arg("-js").arg("-sd").arg(self.dir.path());
        }
        let mut child = cmd.spawn().expect("nats-server starts");
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut lines = stderr.lines();
        let mut port = port;
        let mut seen = Vec::new();
        loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!(
                    "nats-server ended before it was ready:\n{}",
                    seen.join("\n")
                );
            };
            if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                port = Some(rest.trim().rsplit(':').next().unwrap().parse().unwrap());
            }
            if line.contains("Server is ready") {
                break;
            }
            seen.push(line);
        }
        // Keep reading its log so the pipe never fills.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        self.child = Some(child);
        port.expect("nats-server printed its port")
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: as a crash) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and JetStream directory.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        self.spawn(Some(port));
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A host of the tests, in this process: its store, bus, cluster connection and forwarder.
pub struct TestHost {
    pub bus: EventBus,
    pub cluster: Cluster,
    pub forwarder: EventForwarder,
}

impl TestHost {
    pub async fn open(nats: &Nats, name: &str, config: StoreConfig) -> TestHost {
        let key = config.master_key.clone();
        let store = Store::open(config).unwrap();
        TestHost::on(nats, name, store, key).await
    }

    pub async fn on(nats: &Nats, name: &str, store: Store, key: Option<MasterKey>) -> TestHost {
        let bus = EventBus::new(store, EventBusConfig::default())
            .await
            .unwrap();
        let cluster = Cluster::connect(ClusterConfig::new(nats.url(), name), key.as_ref())
            .await
            .unwrap();
        let forwarder = EventForwarder::start(&cluster, &bus).await.unwrap();
        TestHost {
            bus,
            cluster,
            forwarder,
        }
    }

    pub async fn update(&self, context: &str, data: serde_json::Value) -> u64 {
        self.bus
            .publish(
                NewEvent::new(EventType::Updated)
                    .context(context)
                    .data(data),
            )
            .await
            .unwrap()
            .seq
    }

    pub async fn flushed(&self) {
        self.forwarder.wait_forwarded(self.bus.last_seq()).await;
    }
}
