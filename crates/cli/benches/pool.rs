//! Pool load: simulated devices doing lease → result round trips over HTTP
//! on loopback against real `idlemesh pool serve` processes, in three set-ups
//! one after the other: SQLite, PostgreSQL with one replica, PostgreSQL with
//! two replicas (devices split between them). Prints round trips per second
//! and latency percentiles for each (DESIGN §7: >= 2,000/s).
//!
//! PostgreSQL is a private server (`initdb` in a temp dir, Unix socket) with
//! its default durability: `fsync` and `synchronous_commit` on.
//!
//! `cargo bench -p idlemesh-cli --bench pool -- [DEVICES] [SECONDS] [CONCURRENCY] [sqlite,pg1,pg2,floor]`
//! (a set-up written `pg1=PATH` runs the pool binary at PATH instead).
//!
//! `floor` (not run by default) is no pool at all: PostgreSQL's own
//! `pgbench` runs the least SQL a round trip could cost (benches/pg_floor),
//! a statement per request and then set-oriented for eight requests at once,
//! and the bench prints what the server's CPU per round trip comes to.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idlemesh_protocol::api::{Capabilities, LeaseRequest, LeaseResponse, ResultSubmission};
use idlemesh_protocol::{Keypair, Sha256, auth};
use serde_json::{Value, json};

fn arg(n: usize, default: u64) -> u64 {
    std::env::args().filter(|a| !a.starts_with('-')).nth(n).and_then(|a| a.parse().ok()).unwrap_or(default)
}

struct Device {
    id: u64,
    key: Keypair,
    /// The replica this device talks to.
    base: String,
}

async fn signed(http: &reqwest::Client, base: &str, d: &Device, path: &str, body: Vec<u8>) -> reqwest::Response {
    let sig = auth::sign_request(&d.key, d.id, "POST", path, &body, now_ms());
    http.post(format!("{base}{path}"))
        .header(auth::HEADER_DEVICE, d.id.to_string())
        .header(auth::HEADER_TIMESTAMP, sig.timestamp.to_string())
        .header(auth::HEADER_SIGNATURE, sig.signature)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("pool reachable")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A `pool serve` process; killed on drop.
struct Replica {
    child: std::process::Child,
    base: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_replica(bin: &str, dir: &std::path::Path, extra: &[&str]) -> Replica {
    let mut child = Command::new(bin)
        // Simulated devices join without tokens, all from one loopback
        // address: open enrollment, replicas spread by token and
        // organisation only; new devices' results are checked (the default).
        .args(["pool", "serve", "--open-enrollment", "--spread-replicas", "token,org", "--listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .env("IDLEMESH_OPERATOR_TOKEN", "bench")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(at) = line.find("listening on ") {
            break line[at + 13..].trim().to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Replica { child, base }
}

fn main() {
    let devices_n = arg(1, 10_000) as usize;
    let seconds = arg(2, 15);
    let concurrency = arg(3, 64) as usize;
    let setups = std::env::args().filter(|a| !a.starts_with('-')).nth(4).unwrap_or_else(|| "sqlite,pg1,pg2".into());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = (setups.contains("pg") || setups.contains("floor")).then(|| {
        // Extra server settings for experiments: IDLEMESH_BENCH_PG="synchronous_commit=off,...".
        let extra = std::env::var("IDLEMESH_BENCH_PG").unwrap_or_default();
        let settings: Vec<(&str, &str)> = extra.split(',').filter_map(|kv| kv.split_once('=')).collect();
        idlemesh_pool::test_cluster::Cluster::start(&settings).expect("PostgreSQL")
    });
    for setup in setups.split(',') {
        // `pg1=/path/to/idlemesh`: that build of the pool instead of this
        // one, to compare two builds in alternating runs of one invocation.
        let (setup, bin) = setup.split_once('=').unwrap_or((setup, env!("CARGO_BIN_EXE_idlemesh")));
        if setup == "floor" {
            floor(cluster.as_ref().unwrap(), seconds);
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("pool.key").display().to_string();
        let mut db_name = None;
        let replicas: Vec<Replica> = match setup {
            "sqlite" => vec![start_replica(bin, &dir.path().join("r0"), &[])],
            "pg1" | "pg2" => {
                let db = cluster.as_ref().unwrap().create_database().unwrap();
                db_name = db.split('/').nth(3).and_then(|n| n.split('?').next()).map(str::to_owned);
                let n = if setup == "pg1" { 1 } else { 2 };
                (0..n)
                    .map(|i| start_replica(bin, &dir.path().join(format!("r{i}")), &["--db", &db, "--key-file", &key]))
                    .collect()
            }
            other => panic!("unknown set-up {other:?}: sqlite, pg1 or pg2"),
        };
        let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
        println!("== {setup}: {} replica(s) of {bin}", bases.len());
        load(&bases, devices_n, seconds, concurrency);
        if let (Some(c), Ok(_)) = (&cluster, std::env::var("IDLEMESH_BENCH_PG_STATS")) {
            // Needs IDLEMESH_BENCH_PG="shared_preload_libraries=pg_stat_statements".
            if let Some(name) = &db_name {
                let _ = c.psql(name, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
                println!("{}", c.psql(name, "SELECT calls, round(total_exec_time) AS exec_ms, round(total_plan_time) AS plan_ms, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) FROM pg_stat_statements ORDER BY total_exec_time + total_plan_time DESC LIMIT 30").unwrap_or_default());
            }
        }
        // The set-up's database goes with it: left behind, autovacuum keeps
        // working on it and the next set-up's figures pay for that.
        drop(replicas);
        if let (Some(c), Some(name)) = (&cluster, &db_name) {
            c.psql("postgres", &format!("DROP DATABASE {name} WITH (FORCE)")).unwrap();
        }
    }
    if let (Some(c), Ok(path)) = (&cluster, std::env::var("IDLEMESH_BENCH_PG_LOG")) {
        std::fs::write(path, c.log()).unwrap();
    }
}

fn load(bases: &[String], devices_n: usize, seconds: u64, concurrency: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let base = bases[0].clone();
        let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap();
        let kernel: Value = http.post(format!("{base}/v1/blobs")).bearer_auth("bench").body(b"kernel".to_vec())
            .send().await.unwrap().json().await.unwrap();
        // Enough work to outlast the clock at well over the fastest rate
        // measured (SQLite ~4,600/s): a pool that runs out of tasks would
        // cap its own figure (issue 22). If it runs dry anyway, the clock
        // stops at the last result and the line says so.
        let tasks = (seconds as i64 * 10_000).max(10_000);
        let t = Instant::now();
        let job: Value = http.post(format!("{base}/v1/jobs")).bearer_auth("bench")
            .json(&json!({"name": "load", "kernel_kind": "wasm", "kernel_sha256": kernel["sha256"],
                "split": {"kind": "range", "start": 0, "end": tasks, "chunk": 1}, "combiner": {"kind": "concat"}}))
            .send().await.unwrap().json().await.unwrap();
        println!("job of {} tasks created in {:.1} s", job["tasks"], t.elapsed().as_secs_f64());

        let t = Instant::now();
        let mut devices = Vec::with_capacity(devices_n);
        for chunk in (0..devices_n).collect::<Vec<_>>().chunks(256) {
            let enrolls = chunk.iter().map(|&i| {
                let http = http.clone();
                // Each device talks to one replica, as behind a load balancer.
                let base = bases[i % bases.len()].clone();
                async move {
                    let key = Keypair::generate().unwrap();
                    let r: Value = http.post(format!("{base}/v1/enroll")).json(&json!({"public_key": key.public()}))
                        .send().await.unwrap().json().await.unwrap();
                    Device { id: r["device_id"].as_u64().unwrap(), key, base }
                }
            });
            devices.extend(futures_join(enrolls.collect()).await);
        }
        println!("{} devices enrolled in {:.1} s", devices.len(), t.elapsed().as_secs_f64());

        let devices = Arc::new(devices);
        let next = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let caps = Capabilities { wasm: true, wgpu_adapter: None, cores: 4, memory_bytes: 8 << 30 };
        let dry = Arc::new(std::sync::OnceLock::<Instant>::new());
        let ((busy0, steal0), server0) = (machine_seconds(), postgres_cpu_seconds());
        let started = Instant::now();
        let workers: Vec<_> = (0..concurrency).map(|_| {
            let (http, devices, next, caps, dry) = (http.clone(), devices.clone(), next.clone(), caps.clone(), dry.clone());
            tokio::spawn(async move {
                let mut done = Tally::default();
                while Instant::now() < deadline && dry.get().is_none() {
                    let d = &devices[next.fetch_add(1, Ordering::Relaxed) % devices.len()];
                    let t = Instant::now();
                    let body = serde_json::to_vec(&LeaseRequest { capabilities: caps.clone(), max_tasks: 1 }).unwrap();
                    let resp = signed(&http, &d.base, d, "/v1/leases", body).await;
                    if !resp.status().is_success() {
                        done.refused += 1;
                        continue;
                    }
                    let leases: LeaseResponse = resp.json().await.unwrap();
                    let Some(signed_manifest) = leases.tasks.first() else {
                        // Nothing left to lease: the job ran dry before the
                        // clock did. Every worker stops; the figure is over
                        // the time until the last result.
                        let _ = dry.set(Instant::now());
                        done.empty += 1;
                        break;
                    };
                    let m: idlemesh_protocol::TaskManifest = serde_json::from_str(&signed_manifest.payload).unwrap();
                    let output = m.task_id.to_le_bytes().to_vec();
                    let submission = ResultSubmission {
                        lease_id: m.lease_id, lease_token: m.lease_token, output_sha256: Sha256::of(&output),
                        output: output.into(), fuel: None, wall_ms: 1, cpu_ms: 1,
                    };
                    let resp = signed(&http, &d.base, d, "/v1/results", serde_json::to_vec(&submission).unwrap()).await;
                    if resp.status().is_success() {
                        done.latencies.push(t.elapsed());
                        done.last = Some(Instant::now());
                    } else {
                        done.refused += 1;
                    }
                }
                done
            })
        }).collect();
        let mut all = Vec::new();
        let (mut refused, mut empty, mut last) = (0, 0, started);
        for w in workers {
            let tally = w.await.unwrap();
            all.extend(tally.latencies);
            refused += tally.refused;
            empty += tally.empty;
            last = last.max(tally.last.unwrap_or(started));
        }
        // Ran dry: over the time until the last result, not until the
        // deadline (the workers stopped early).
        let elapsed = if dry.get().is_some() { last } else { Instant::now() }.duration_since(started).as_secs_f64();
        let ((busy1, steal1), server1) = (machine_seconds(), postgres_cpu_seconds());
        let (busy, server, steal) = (busy1 - busy0, server1 - server0, steal1 - steal0);
        all.sort();
        let pct = |p: f64| all[((all.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
        println!(
            "{} lease+result round trips in {:.1} s from {} devices, {} in flight: {:.0} round trips/s (target >= 2000); latency p50 {:.2} ms, p99 {:.2} ms; {} requests refused",
            all.len(), elapsed, devices.len(), concurrency, all.len() as f64 / elapsed, pct(0.5), pct(0.99), refused
        );
        // Over the run until every worker stopped (a dry job's tail included).
        let n = all.len() as f64;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        println!(
            "CPU a round trip: {:.3} ms for the whole machine, of which PostgreSQL's processes {:.3} ms; the hypervisor kept {:.0} % of the CPUs for other machines (steal)",
            busy / n * 1e3,
            server / n * 1e3,
            steal / (elapsed * cores) * 100.0
        );
        if let Some(at) = dry.get() {
            println!(
                "RAN DRY: the job's {} tasks were all out after {:.1} s of {seconds} s ({empty} empty leases); the figure is over the {:.1} s until the last result",
                job["tasks"], at.duration_since(started).as_secs_f64(), elapsed
            );
        }
    });
}

/// Clock ticks a second, the unit of `/proc`'s CPU times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// CPU time of the whole machine so far, in seconds: busy (all cores) and
/// stolen (what the hypervisor gave other machines while this one wanted
/// it: on a shared VM, what makes one run slower than the next with
/// nothing else changed).
fn machine_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let ticks: Vec<u64> =
        stat.lines().next().unwrap().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let busy = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum::<u64>();
    let steal = ticks.get(7).copied().unwrap_or(0);
    (busy as f64 / ticks_per_second(), steal as f64 / ticks_per_second())
}

/// CPU time of this process's waited-for children so far, in seconds.
fn children_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// CPU seconds used so far by the PostgreSQL server's processes (its
/// backends live as long as the pool's connections, so a run's difference
/// is the server's work for it).
fn postgres_cpu_seconds() -> f64 {
    let ticks: u64 = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| stat.contains("(postgres)"))
        // After the command's closing parenthesis: state is field 3; utime and stime 14 and 15.
        .filter_map(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / ticks_per_second()
}

/// The floor under any pool on this machine: `pgbench` runs the least SQL a
/// round trip needs, per request and eight requests at a time, over four
/// connections (standing for the pool's database threads, not its devices).
fn floor(cluster: &idlemesh_pool::test_cluster::Cluster, seconds: u64) {
    let db = cluster.create_database().unwrap();
    let name = db.split('/').nth(3).and_then(|n| n.split('?').next()).unwrap().to_owned();
    cluster.psql(&name, include_str!("pg_floor/schema.sql")).unwrap();
    // Enough queued replicas for both scripts to outlast the clock at well over the rates seen (~10,000/s).
    let queue = seconds * 16_000;
    cluster
        .psql(
            &name,
            &format!("INSERT INTO replicas (task_id, state) SELECT g, 'queued' FROM generate_series(1, {queue}) g"),
        )
        .unwrap();
    cluster.psql(&name, "VACUUM ANALYZE").unwrap();
    let dir = tempfile::tempdir().unwrap();
    println!("== floor: pgbench, 4 connections, {seconds} s each, on the pool's layout (benches/pg_floor)");
    for (script, sql, per_transaction) in [
        ("a statement per request", include_str!("pg_floor/per_request.sql"), 1.0),
        ("set-oriented, 8 requests a statement", include_str!("pg_floor/batched.sql"), 8.0),
    ] {
        let file = dir.path().join("script.sql");
        std::fs::write(&file, sql).unwrap();
        let (busy0, children0) = (machine_seconds().0, children_seconds());
        let out = cluster
            .pgbench(
                &name,
                &[
                    "-n",
                    "-M",
                    "prepared",
                    "-c",
                    "4",
                    "-j",
                    "2",
                    "-T",
                    &seconds.to_string(),
                    "-f",
                    file.to_str().unwrap(),
                ],
            )
            .unwrap();
        let (busy1, children1) = (machine_seconds().0, children_seconds());
        let tps: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no tps in pgbench's output:\n{out}"));
        let round_trips = tps * per_transaction;
        let n = round_trips * seconds as f64;
        let pgbench = children1 - children0;
        let server = (busy1 - busy0) - pgbench;
        println!(
            "{script}: {round_trips:.0} round trips/s with the whole machine; PostgreSQL {:.3} ms of CPU a round trip (the machine's busy time less pgbench's {:.3} ms)",
            server / n * 1e3,
            pgbench / n * 1e3
        );
    }
    cluster.psql("postgres", &format!("DROP DATABASE {name} WITH (FORCE)")).unwrap();
}

/// What one in-flight worker did.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    /// Requests the pool answered with an error.
    refused: u64,
    /// Leases that came back with no task (the job had none left).
    empty: u64,
    last: Option<Instant>,
}

/// Awaits a batch of futures concurrently on the current runtime.
async fn futures_join<T: Send + 'static>(futs: Vec<impl std::future::Future<Output = T> + Send + 'static>) -> Vec<T> {
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
