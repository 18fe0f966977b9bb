//! Cluster-mode benchmarks (`qi_host::cluster`), each a comparison measured within one run
//! against a `nats-server -js` the bench starts on loopback (JetStream files in a temporary
//! directory; Debian's `nats-server` 2.9.10 here):
//!
//! 1. `forward`: the path every event of a host takes in cluster mode. N `updated` events are
//!    committed to a host's event log (a data directory on disk, as `qi-host serve` has), then
//!    the [`EventForwarder`] is started and timed until the server has acknowledged all of
//!    them (each published with its `Nats-Msg-Id`, its acknowledgement awaited, the cursor
//!    written to SQLite). Against it, in the same run: a bare `async-nats` loop that publishes
//!    the same payloads on the same subject one at a time, awaiting each acknowledgement (the
//!    same protocol work without the outbox). Prints events/s of each and the ratio.
//! 2. `hosts`: the forwarding of 1, 2 and 3 hosts at once (stores in this process, each with
//!    its own NATS connection, each with N events): aggregate events/s, and the scaling over
//!    one host (on this 2-core machine the hosts, the server and the SQLite writers share the
//!    cores; the figure says where that stops).
//! 3. `read`: a [`ClusterSubscription`] reading the N events back from the stream (decode,
//!    replay check) against a bare ordered consumer reading the same messages.
//!
//! 4. `kv`: context writes through the `qi_contexts` bucket, the path every context change
//!    of a cluster host takes ([`ContextService::write`] of a `strong` context, one writer,
//!    each write based on the version the last returned: read of the entry it is based on,
//!    compare-and-set, SQLite commit), against a bare `async-nats` KV loop in the same run
//!    that does a compare-and-set `update` of a payload of the same size, one at a time, and
//!    against the same writes on a host with no cluster (what replication costs). N/5 writes.
//!
//! `cargo bench -p qi-host --bench cluster [-- N]` (default N = 5,000). Prints figures only;
//! nothing here asserts on timing. Say which `RUST_BACKTRACE` it ran with: the figures do not
//! depend on it (no error paths are taken), but the machines set it to 1.

#![allow(missing_docs)]

use qi_host::cluster::{Cluster, ClusterConfig, ClusterSubscription, EventForwarder, StartAt};
use qi_host::events::{EventType, NewEvent};
use qi_host::{EventBus, EventBusConfig, Store, StoreConfig};
use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::time::Instant;
use tokio_stream::StreamExt;

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5_000);
    let Some(binary) = nats_server() else {
        println!("SKIPPED: nats-server is not installed (apt-get install nats-server)");
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "qi-host cluster bench: {n} events per host, RUST_BACKTRACE={}",
        std::env::var("RUST_BACKTRACE").unwrap_or_else(|_| "unset".into())
    );
    // A fresh server for each part, so one part's stream does not slow the next.
    let (forwarded, bare) = {
        let server = NatsServer::start(&binary)?;
        rt.block_on(forward_vs_bare(&server.url(), n))?
    };
    println!("1. forward: {n} events through the outbox forwarder vs a bare publish loop");
    println!(
        "  forwarder (event log → publish, ack, cursor): {:>9.0} events/s",
        forwarded
    );
    println!(
        "  bare async-nats publish + ack, one at a time:  {:>9.0} events/s",
        bare
    );
    println!(
        "  ratio forwarder / bare: {:.2} (the forwarder's own cost: reading the log, sealing (none here), the cursor write)",
        forwarded / bare
    );
    println!("2. hosts: hosts forwarding at once, {n} events each");
    let mut one = 0.0;
    for hosts in 1..=3 {
        let server = NatsServer::start(&binary)?;
        let rate = rt.block_on(hosts_at_once(&server.url(), hosts, n))?;
        if hosts == 1 {
            one = rate;
        }
        println!(
            "  {hosts} host(s): {rate:>9.0} events/s in all; scaling over one host: {:.2}",
            rate / one
        );
    }
    let (sub, bare) = {
        let server = NatsServer::start(&binary)?;
        rt.block_on(read_back(&server.url(), n))?
    };
    println!("3. read: {n} events read back from the stream");
    println!("  ClusterSubscription: {sub:>9.0} events/s");
    println!("  bare ordered consumer: {bare:>9.0} events/s");
    println!("  ratio: {:.2}", sub / bare);
    let writes = (n / 5).max(1);
    let (through, bare, local) = {
        let server = NatsServer::start(&binary)?;
        rt.block_on(kv_writes(&server.url(), writes))?
    };
    println!("4. kv: {writes} context writes, one writer, each based on the last");
    println!("  through the bucket (read, compare-and-set, commit): {through:>9.0} writes/s");
    println!("  bare async-nats KV update (compare-and-set) loop:    {bare:>9.0} writes/s");
    println!("  the same writes with no cluster:                     {local:>9.0} writes/s");
    println!(
        "  ratio bucket / bare: {:.2}; bucket / no cluster: {:.2}",
        through / bare,
        through / local
    );
    Ok(())
}

/// Writes/s of `n` strong context writes through the bucket, of a bare KV update loop, and
/// of the same writes on a host with no cluster.
async fn kv_writes(url: &str, n: u64) -> anyhow::Result<(f64, f64, f64)> {
    use qi_host::context::{Change, ContextService, NewContext, OPERATOR, SyncStrategy};
    async fn service(dir: &std::path::Path) -> anyhow::Result<ContextService> {
        let store = Store::open(StoreConfig::at(dir))?;
        let bus = EventBus::new(store.clone(), EventBusConfig::default()).await?;
        Ok(ContextService::open(
            store,
            bus,
            std::sync::Arc::new(qi_host::context::SystemClock),
            Default::default(),
        )
        .await?)
    }
    async fn run(ctx: &ContextService, n: u64) -> anyhow::Result<f64> {
        ctx.create(
            OPERATOR,
            NewContext {
                id: Some("bench".into()),
                context_type: "bench".into(),
                doc: serde_json::json!({"n": 0}),
                strategy: SyncStrategy::Strong,
                ..Default::default()
            },
        )
        .await?;
        let t = Instant::now();
        let mut version = 1;
        for i in 0..n {
            let r = ctx
                .write(
                    OPERATOR,
                    "bench",
                    Change::Put(serde_json::json!({"n": i + 1})),
                    Some(version),
                )
                .await?;
            version = r.version;
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    }
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::connect(ClusterConfig::new(url, "bench"), None).await?;
    let ctx = service(dir.path()).await?;
    let _sync = qi_host::cluster::ContextSync::start(&cluster, &ctx).await?;
    let through = run(&ctx, n).await?;
    // The bare loop: an entry of the size the bucket holds for that context.
    let kv = cluster.jetstream().get_key_value("qi_contexts").await?;
    let key = qi_host::cluster::contexts::key(&cluster, "bench");
    let payload = kv.get(key.clone()).await?.unwrap_or_default();
    let mut revision = kv.create("bare", payload.clone()).await?;
    let t = Instant::now();
    for _ in 0..n {
        revision = kv.update("bare", payload.clone(), revision).await?;
    }
    let bare = n as f64 / t.elapsed().as_secs_f64();
    let local_dir = tempfile::tempdir()?;
    let local = run(&service(local_dir.path()).await?, n).await?;
    Ok((through, bare, local))
}

/// A host with `n` committed events whose forwarder has not started yet.
async fn host_with_events(url: &str, name: &str, n: u64) -> anyhow::Result<Host> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(StoreConfig::at(dir.path()))?;
    let bus = EventBus::new(store, EventBusConfig::default()).await?;
    let events: Vec<NewEvent> = (0..n).map(|i| event(name, i)).collect();
    for chunk in events.chunks(500) {
        bus.publish_batch(chunk.to_vec()).await?;
    }
    let cluster = Cluster::connect(ClusterConfig::new(url, name), None).await?;
    Ok(Host {
        _dir: dir,
        bus,
        cluster,
    })
}

struct Host {
    _dir: tempfile::TempDir,
    bus: EventBus,
    cluster: Cluster,
}

/// An `updated` event as a context write makes it.
fn event(host: &str, i: u64) -> NewEvent {
    NewEvent::new(EventType::Updated)
        .context(format!("board-{host}"))
        .agent("writer")
        .data(serde_json::json!({
            "version": i + 2, "revision": i + 10, "hlc": "1733140000000.0",
            "op": "patch", "fields": ["/n", "/by"],
        }))
}

/// Events/s of the forwarder draining a backlog of `n`, and of a bare publish loop.
async fn forward_vs_bare(url: &str, n: u64) -> anyhow::Result<(f64, f64)> {
    let host = host_with_events(url, "h1", n).await?;
    let started = Instant::now();
    let forwarder = EventForwarder::start(&host.cluster, &host.bus).await?;
    forwarder.wait_forwarded(n).await;
    let forwarded = n as f64 / started.elapsed().as_secs_f64();
    forwarder.stop().await;
    // The same payloads (the forwarder's JSON of each event), published bare.
    let sample = host
        .bus
        .history(&qi_host::events::EventFilter::all(), None, 1)
        .await?;
    let payload = serde_json::to_vec(&serde_json::json!({
        "host": "h1", "instance": host.bus.store().host_id(), "event": sample[0],
    }))?;
    let js = host.cluster.jetstream();
    let subject = "qi.events.ctx.bare";
    let started = Instant::now();
    for i in 0..n {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("bare:{i}").as_str(),
        );
        js.publish_with_headers(subject, headers, payload.clone().into())
            .await?
            .await?;
    }
    let bare = n as f64 / started.elapsed().as_secs_f64();
    Ok((forwarded, bare))
}

/// Aggregate events/s of `hosts` forwarders draining `n` events each at once.
async fn hosts_at_once(url: &str, hosts: usize, n: u64) -> anyhow::Result<f64> {
    let mut all = Vec::new();
    for h in 0..hosts {
        all.push(host_with_events(url, &format!("h{h}"), n).await?);
    }
    let started = Instant::now();
    let mut forwarders = Vec::new();
    for host in &all {
        forwarders.push(EventForwarder::start(&host.cluster, &host.bus).await?);
    }
    for f in &forwarders {
        f.wait_forwarded(n).await;
    }
    Ok((n * hosts as u64) as f64 / started.elapsed().as_secs_f64())
}

/// Events/s of a ClusterSubscription and of a bare ordered consumer reading `n` events.
async fn read_back(url: &str, n: u64) -> anyhow::Result<(f64, f64)> {
    let host = host_with_events(url, "h1", n).await?;
    let forwarder = EventForwarder::start(&host.cluster, &host.bus).await?;
    forwarder.wait_forwarded(n).await;
    let started = Instant::now();
    let mut sub = ClusterSubscription::open(&host.cluster, None, StartAt::All).await?;
    for _ in 0..n {
        sub.next().await?;
    }
    let ours = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let stream = host.cluster.jetstream().get_stream("QI_EVENTS").await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?;
    for _ in 0..n {
        let m = messages
            .next()
            .await
            .expect("the stream holds n messages")?;
        std::hint::black_box(m.payload.len());
    }
    let bare = n as f64 / started.elapsed().as_secs_f64();
    Ok((ours, bare))
}

fn nats_server() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([std::path::PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// A `nats-server -js` on a port it picks, on loopback.
struct NatsServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    fn start(binary: &std::path::Path) -> anyhow::Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut lines = std::io::BufReader::new(child.stderr.take().expect("piped")).lines();
        let mut port = None;
        for line in lines.by_ref() {
            let line = line?;
            if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                port = rest.trim().rsplit(':').next().and_then(|p| p.parse().ok());
            }
            if line.contains("Server is ready") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let port = port.ok_or_else(|| anyhow::anyhow!("nats-server did not say its port"))?;
        Ok(NatsServer {
            child,
            port,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
