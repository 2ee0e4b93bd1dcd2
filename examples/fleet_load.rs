//! Load on HQ from a fleet: N simulated gateways each fetching their configuration (with
//! `If-None-Match`) and posting a heartbeat every PERIOD, against a `posgw hq` child process
//! whose CPU time (`/proc/PID/stat`, user + system) and memory are measured.
//!
//! ```text
//! cargo build --release && cargo run --release --example fleet_load            # 1000 gateways, 1 s, 60 s
//! cargo run --release --example fleet_load -- 1000 1s 60s
//! ```
//!
//! Time is compressed: a real gateway polls every 60 s, so 1,000 gateways polling every 1 s for
//! 60 s are an hour of a 1,000-store chain; the CPU per round (fetch + heartbeat) times the real
//! rate (1,000 / 60 s) gives HQ's share of a core. Each round opens its own connection, as a
//! real gateway's does (it lets idle connections go after 5 s; HQ closes them after 10 s), and
//! reuses it for the heartbeat. HQ holds 1,000 stores in 10 regions, a chain-wide campaign, one
//! campaign per region and a flow; every 10 s an admin changes one region's campaign in the
//! editor, so that region's 100 stores fetch a new document (200) while the others get 304s,
//! and the fleet view (`GET /v1/fleet`, all stores) is read once a second.

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;

/// Regions the stores are spread over.
const REGIONS: usize = 10;
/// The admin token.
const ADMIN: &str = "fleet-load-admin";

/// What the simulated gateways counted.
#[derive(Default)]
struct Counts {
    rounds: AtomicU64,
    documents: AtomicU64,
    not_modified: AtomicU64,
    heartbeats: AtomicU64,
    failures: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let gateways: usize = args.first().map_or(Ok(1000), |n| n.parse())?;
    let period = humantime::parse_duration(args.get(1).map_or("1s", String::as_str))?;
    let length = humantime::parse_duration(args.get(2).map_or("60s", String::as_str))?;
    let bin = support::posgw_bin();
    let dir = tempfile::tempdir()?;

    // HQ: the stores, their tokens, regions, and the chain's configuration.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::write(dir.path().join("admin.token"), ADMIN)?;
    std::fs::create_dir(dir.path().join("tokens"))?;
    let mut config = format!(
        "[hq]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nadmin_token_file = \"admin.token\"\n\n",
        dir.path().join("data").display()
    );
    let store = |i: usize| format!("S{i:04}");
    for i in 0..gateways {
        std::fs::write(dir.path().join(format!("tokens/{i}")), format!("token-{i}"))?;
        config.push_str(&format!(
            "[[store]]\ncode = \"{}\"\ntoken_file = \"tokens/{i}\"\n",
            store(i)
        ));
    }
    for region in 0..REGIONS {
        let stores: Vec<String> = (0..gateways)
            .filter(|i| i % REGIONS == region)
            .map(|i| format!("\"{}\"", store(i)))
            .collect();
        config.push_str(&format!(
            "[[region]]\nid = \"r{region}\"\nstores = [{}]\n",
            stores.join(", ")
        ));
        config.push_str(&format!(
            "[[campaign]]\nid = \"region-{region}\"\nregions = [\"r{region}\"]\nskus = [\"69{region:02}*\"]\n\
             question = \"推荐话术来源\"\noptions = [ {{ key = \"doctor\", label = \"医生推荐\" }}, \
             {{ key = \"poster\", label = \"海报引导\" }} ]\n"
        ));
    }
    config.push_str(
        "[[campaign]]\nid = \"chain\"\nskus = [\"6901234567892\", \"690123456*\"]\nquestion = \"推荐话术来源\"\n\
         options = [ { key = \"doctor\", label = \"医生推荐\" }, { key = \"referral\", label = \"老客转介\" } ]\n\
         [[flow]]\nid = \"rx-5step\"\nskus = [\"69012345*\"]\nsteps = [ { key = \"consult\", label = \"客户问诊\" }, \
         { key = \"symptoms\", label = \"症状记录\", choose = [\"高血压\", \"心悸\"], multi = true }, \
         { key = \"recommend\", label = \"药品推荐\", auto = \"scan\" } ]\nskip_reasons = [\"客户明确拒绝\"]\n\
         [answer_codes]\n\"ATTR-DOCTOR\" = \"doctor\"\n\"ATTR-POSTER\" = \"poster\"\n",
    );
    let config_path = dir.path().join("hq.toml");
    std::fs::write(&config_path, config)?;
    let mut hq = std::process::Command::new(&bin)
        .args(["hq", "-c"])
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|error| format!("cannot start '{bin}': {error}"))?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(60) {
            return Err("posgw hq did not start listening within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = hq.id();
    let url = format!("http://127.0.0.1:{port}");
    println!(
        "posgw hq: {gateways} stores in {REGIONS} regions, up in {:.1?}, RSS {} KiB",
        started.elapsed(),
        support::status_kib(pid, "VmRSS:")
    );

    // The gateways: each its own loop and its own connections.
    let counts = Arc::new(Counts::default());
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let deadline = Instant::now() + length;
    let cpu_before = support::cpu_seconds(pid);
    let clock = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..gateways {
        let (url, counts, latencies) = (url.clone(), counts.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_idle_timeout(period.mul_f64(0.5))
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client");
            let token = format!("token-{i}");
            let store = format!("S{i:04}");
            let mut etag: Option<String> = None;
            // Spread the first round over a period, as gateways started at different times.
            let first = period.mul_f64(rand::thread_rng().gen_range(0.0..1.0));
            tokio::time::sleep(first).await;
            while Instant::now() < deadline {
                let round = Instant::now();
                let mut request = client
                    .get(format!("{url}/v1/fleet/{store}/config"))
                    .bearer_auth(&token);
                if let Some(etag) = &etag {
                    request = request.header("if-none-match", etag);
                }
                match request.send().await {
                    Ok(response) if response.status() == 304 => {
                        counts.not_modified.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) if response.status() == 200 => {
                        etag = response
                            .headers()
                            .get("etag")
                            .and_then(|value| value.to_str().ok())
                            .map(str::to_string);
                        let _ = response.bytes().await;
                        counts.documents.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        counts.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let heartbeat = serde_json::json!({
                    "gateway": format!("gw-{i}"), "version": "0.1.0", "config_version": 1,
                    "poll_ms": 60_000,
                    "devices": [{"id": "scanner-1", "state": "connected"},
                                {"id": "register-1", "state": "connected"}],
                    "journal": {"backlog_records": 3, "oldest_backlog_ts": "2026-12-07T10:00:00.000+08:00"},
                    "uplink": {"state": "idle", "last_error": null},
                    "clock": {"synced": true}, "refused": null, "clashes": [],
                });
                match client
                    .post(format!("{url}/v1/fleet/{store}/heartbeat"))
                    .bearer_auth(&token)
                    .json(&heartbeat)
                    .send()
                    .await
                {
                    Ok(response) if response.status() == 204 => {
                        counts.heartbeats.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        counts.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies.lock().expect("latencies").push(round.elapsed());
                counts.rounds.fetch_add(1, Ordering::Relaxed);
                let wait = period.mul_f64(rand::thread_rng().gen_range(0.9..1.1));
                tokio::time::sleep(wait.saturating_sub(round.elapsed())).await;
            }
        }));
    }

    // The admin: a region's campaign changed every 10 s, the fleet view read every second.
    let admin = reqwest::Client::new();
    let mut edits = 0u64;
    let mut views = Vec::new();
    let mut peak_rss = 0;
    let mut second = 0u64;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        second += 1;
        let view = Instant::now();
        let answer = admin
            .get(format!("{url}/v1/fleet"))
            .bearer_auth(ADMIN)
            .send()
            .await?;
        let status = answer.status();
        let body = answer.bytes().await?;
        views.push(view.elapsed());
        if second == 1 {
            println!("GET /v1/fleet: {status}, {} bytes", body.len());
        }
        if second % 10 == 0 {
            let region = (second / 10) as usize % REGIONS;
            let answer = admin
                .put(format!("{url}/v1/fleet/campaigns/spring-{region}"))
                .bearer_auth(ADMIN)
                .json(&serde_json::json!({
                    "skus": [format!("6977{second:04}*")], "question": "怎么知道这款的？",
                    "options": [{"key": "doctor", "label": "医生推荐"}],
                    "regions": [format!("r{region}")],
                }))
                .send()
                .await?;
            if answer.status() == 200 {
                edits += 1;
            } else {
                eprintln!("editor: {} {}", answer.status(), answer.text().await?);
            }
        }
        peak_rss = peak_rss.max(support::status_kib(pid, "VmRSS:"));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = clock.elapsed().as_secs_f64();
    let cpu = support::cpu_seconds(pid) - cpu_before;
    let rss = support::status_kib(pid, "VmRSS:");
    let hwm = support::status_kib(pid, "VmHWM:");
    support::stop(&mut hq)?;

    let rounds = counts.rounds.load(Ordering::Relaxed);
    let per_round = cpu / rounds.max(1) as f64;
    let real_rate = gateways as f64 / 60.0;
    println!(
        "{rounds} rounds in {elapsed:.1} s ({:.0}/s): {} documents (200), {} not modified (304), \
         {} heartbeats (204), {} failures; {edits} editor changes",
        rounds as f64 / elapsed,
        counts.documents.load(Ordering::Relaxed),
        counts.not_modified.load(Ordering::Relaxed),
        counts.heartbeats.load(Ordering::Relaxed),
        counts.failures.load(Ordering::Relaxed),
    );
    support::quantiles(
        "round (fetch + heartbeat)",
        latencies.lock().expect("latencies").clone(),
    );
    support::quantiles("GET /v1/fleet", views);
    println!(
        "posgw hq: {cpu:.2} CPU-s over the run, {:.0} us per round; at {gateways} gateways \
         polling every 60 s ({real_rate:.1} rounds/s): {:.2} % of one core \
         ({:.2} CPU-s per minute); RSS {rss} KiB (peak sampled {peak_rss} KiB, VmHWM {hwm} KiB)",
        per_round * 1e6,
        per_round * real_rate * 100.0,
        per_round * real_rate * 60.0,
    );
    Ok(())
}
