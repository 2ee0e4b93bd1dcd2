//! `posgw run`: wires the store gateway together and runs it until shutdown.
//!
//! Start-up order: bind the API (fail fast on a taken port), open the journal (quarantining a
//! damaged one), record `started`, start the core, the devices and the API. Shutdown runs the same
//! chain backwards so nothing in flight is lost: stop the devices (they hand over half-received
//! frames), let the core write everything queued, record `stopped`, flush and close the journal.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::{Settings, Transport};
use crate::devices::mqtt::{MqttDevice, MqttDevices};
use crate::devices::serial::SerialDevice;
use crate::devices::tcp_tap::TcpTap;
use crate::devices::{self, DeviceInfo};
use crate::journal::{self, JournalConfig};
use crate::metrics::Metrics;
use crate::prompts::{JournalPrompts, PromptsConfig};
use crate::record::gateway::GatewayData;
use crate::record::Kind;

/// Runs the gateway described by `settings` until `shutdown` completes.
///
/// `listener` is the bound API socket (tests pass one bound to port 0); `hangups` the SIGHUP
/// stream ([`crate::signal::reload_signal`]), each one a reload of the configuration. Both
/// signals are the caller's to catch before it binds the API: a client that sees the API may
/// send either at once.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    hangups: std::io::Result<tokio::signal::unix::Signal>,
) -> anyhow::Result<()> {
    let journal_config = JournalConfig {
        data_dir: settings.gateway.data_dir.clone(),
        store: settings.gateway.store.clone(),
        gateway: settings.gateway.id.clone(),
        flush: settings.gateway.flush,
        version: crate::VERSION,
        max_bytes: settings
            .uplink
            .as_ref()
            .map(|uplink| uplink.max_journal_bytes),
    };
    let opened = journal::open(journal_config).await.with_context(|| {
        format!(
            "cannot open the journal in {}",
            settings.gateway.data_dir.display()
        )
    })?;
    let journal = opened.handle;
    let access =
        match crate::web::access::Access::open(&settings.gateway.data_dir, &settings.api.hosts) {
            Ok(access) => access,
            Err(error) => {
                let _ = journal.close().await;
                return Err(anyhow::Error::new(error).context(format!(
                    "cannot read or create the API pairing token in {}",
                    settings.gateway.data_dir.display()
                )));
            }
        };
    if !settings.api.listen.ip().is_loopback() {
        tracing::info!(
            pairing_token = access.token(),
            "the API listens beyond loopback: a station elsewhere pairs once at http://THIS-PC:{}/pair with this token",
            settings.api.listen.port()
        );
    }
    let metrics = Metrics::new();
    let detail = format!(
        "config {}; {} device(s)",
        settings.path.display(),
        settings.devices.len()
    );
    journal
        .append_value(
            Kind::Gateway,
            &GatewayData {
                event: "started",
                version: crate::VERSION,
                detail: &detail,
            },
        )
        .await
        .context("cannot write to the journal")?;
    // HQ's campaigns and flows from the last good copy, before anything uses the configuration.
    let crate::fleet::Start {
        settings,
        copy: fleet_copy,
        applied: fleet_applied,
        event: fleet_event,
    } = crate::fleet::start(settings).await;
    if let Some(event) = &fleet_event {
        event.record(&journal).await;
    }

    let stop = CancellationToken::new();
    let uplink = match &settings.uplink {
        None => {
            tracing::info!("no [uplink] configured: records stay in the journal");
            None
        }
        Some(uplink) => Some(
            crate::uplink::spawn(
                uplink.clone(),
                (&settings.gateway.store, &settings.gateway.id),
                journal.clone(),
                metrics.clone(),
                stop.child_token(),
            )
            .context("cannot start the uplink"),
        ),
    };
    // The store broker's credentials are read once here, so a missing password file stops the
    // start with a clear message instead of leaving MQTT devices and prompts silently offline.
    let broker = match &settings.mqtt {
        Some(mqtt) => crate::mqtt::store_credentials(mqtt)
            .map(|_| ())
            .context("cannot use [mqtt]"),
        None => Ok(()),
    };
    let uplink = match uplink
        .transpose()
        .and_then(|uplink| broker.map(|()| uplink))
    {
        Ok(uplink) => uplink,
        Err(error) => {
            // Nothing else runs yet: close the journal cleanly before giving up.
            let _ = journal.close().await;
            return Err(error);
        }
    };
    let prompts = crate::prompts::spawn(
        PromptsConfig {
            campaigns: settings.campaigns.clone(),
            answer_codes: settings.answer_codes.clone(),
            skip_reasons: settings.prompts.skip_reasons.clone(),
            sale_link_window: settings.prompts.sale_link_window,
        },
        JournalPrompts::new(journal.clone(), &settings.gateway.data_dir),
        metrics.clone(),
    )
    .await
    .map_err(|error| anyhow::anyhow!("cannot start the prompt engine: {error}"))?;
    let (hold_back_tx, hold_back) = tokio::sync::watch::channel(hold_back_codes(&settings));
    let consult = crate::consult::spawn(
        consult_config(&settings)?,
        journal.clone(),
        &settings.gateway.data_dir,
    )
    .await
    .map_err(|error| anyhow::anyhow!("cannot start the consultation engine: {error}"))?;
    let core = crate::core::spawn(
        journal.clone(),
        metrics.clone(),
        prompts.clone(),
        consult.clone(),
    );
    // The MQTT prompt channel: POS software sees prompts and consultations over the broker,
    // answers the prompts and records the consultations' steps.
    let prompt_channel = match &settings.mqtt {
        Some(mqtt) => Some(crate::prompts::mqtt::spawn(
            mqtt,
            &settings.gateway.store,
            &settings.gateway.id,
            crate::prompts::mqtt::Engines {
                prompts: prompts.clone(),
                consult: consult.clone(),
            },
            metrics.mqtt_oversize("prompts"),
            stop.child_token(),
        )?),
        None => None,
    };
    let mut device_tasks = JoinSet::new();
    let mut views = Vec::new();
    let mut mqtt_devices = Vec::new();
    for device in &settings.devices {
        let device = Arc::new(device.clone());
        let info = Arc::new(DeviceInfo::from_settings(&device));
        let (status, mut view) = devices::status_channel(&device);
        metrics.add_device(&device.id);
        let passthrough = device
            .serial
            .as_ref()
            .and_then(|serial| serial.passthrough.as_ref())
            .map(|target| devices::PassthroughView {
                target: target.display().to_string(),
                counters: metrics.passthrough_counters(&device.id),
                connections: None,
            })
            .or_else(|| {
                // A network printer tap: the printer is its passthrough.
                device.tcp.as_ref().map(|tap| devices::PassthroughView {
                    target: tap.printer_addr.clone(),
                    counters: metrics.passthrough_counters(&device.id),
                    connections: Some(metrics.tap_counters(&device.id)),
                })
            });
        view.passthrough = passthrough.clone();
        views.push(view);
        match device.transport {
            Transport::Serial => {
                let task = SerialDevice {
                    settings: device.clone(),
                    events: devices::relay(core.events.clone(), info.clone(), &metrics),
                    info,
                    status,
                    hold_back: hold_back.clone(),
                    flows: consult.flows(),
                    passthrough: passthrough.map(|view| view.counters).unwrap_or_default(),
                };
                device_tasks.spawn(task.run(stop.child_token()));
            }
            Transport::Tcp => {
                let Some(view) = passthrough else {
                    tracing::error!(device = %device.id, "tcp device without its settings");
                    continue;
                };
                let task = TcpTap {
                    settings: device.clone(),
                    events: devices::relay(core.events.clone(), info.clone(), &metrics),
                    info,
                    status,
                    bytes: view.counters,
                    connections: view.connections.unwrap_or_default(),
                };
                device_tasks.spawn(task.run(stop.child_token()));
            }
            Transport::Mqtt => match MqttDevice::new(&device, status) {
                Some(device) => mqtt_devices.push(device),
                None => tracing::error!(device = %device.id, "mqtt device without a topic"),
            },
        }
    }
    if !mqtt_devices.is_empty() {
        // Validation guarantees `[mqtt]` when a device uses it.
        if let Some(mqtt) = &settings.mqtt {
            let task = MqttDevices {
                settings: mqtt.clone(),
                store: settings.gateway.store.clone(),
                gateway: settings.gateway.id.clone(),
                devices: mqtt_devices,
                events: core.events.clone(),
                oversize: metrics.mqtt_oversize("devices"),
                journal: journal.clone(),
            };
            device_tasks.spawn(task.run(stop.child_token()));
        }
    }

    let mut stations: Vec<String> = settings.devices.iter().map(|d| d.station.clone()).collect();
    stations.sort();
    stations.dedup();
    let devices: Arc<[crate::devices::DeviceView]> = views.into();
    let uplink_status = uplink
        .as_ref()
        .map_or_else(crate::uplink::disabled, |uplink| uplink.status.clone());
    // The configuration in force is the reload task's; the fleet task asks it to apply HQ's.
    let (in_force_tx, in_force) = tokio::sync::watch::channel(crate::fleet::InForce::new(
        &settings,
        fleet_applied.as_ref(),
        fleet_copy.as_ref().map(|_| "copy"),
        0,
    ));
    let fleet_document = fleet_copy
        .as_ref()
        .map(|copy| Arc::new(copy.document.clone()));
    let (apply_tx, apply_rx) = tokio::sync::mpsc::channel(1);
    let fleet = match &settings.fleet {
        None => None,
        Some(fleet) => Some(
            crate::fleet::spawn(
                crate::fleet::FleetParts {
                    settings: fleet.clone(),
                    store: settings.gateway.store.clone(),
                    gateway: settings.gateway.id.clone(),
                    data_dir: settings.gateway.data_dir.clone(),
                    copy: fleet_copy,
                    journal: journal.clone(),
                    devices: devices.clone(),
                    uplink: uplink_status.clone(),
                    in_force: in_force.clone(),
                    owner: apply_tx,
                },
                stop.child_token(),
            )
            .context("cannot start the fleet task")?,
        ),
    };
    let state = ApiState {
        store: settings.gateway.store.as_str().into(),
        gateway: settings.gateway.id.as_str().into(),
        devices,
        journal: journal.clone(),
        health: core.health.clone(),
        metrics: metrics.clone(),
        uplink: uplink_status,
        prompts: prompts.clone(),
        stations: stations.clone().into(),
        fleet: crate::fleet::FleetView {
            in_force,
            status: fleet.as_ref().map(|(status, _)| status.clone()),
        },
    };
    let router = crate::web::access::protect(
        api::router(state).merge(crate::web::routes(
            prompts.clone(),
            consult.clone(),
            stations,
        )),
        access,
    );
    let api_stop = stop.clone();
    let limits = crate::serve::Limits::gateway(crate::serve::open_files_limit());
    tracing::info!(
        max_connections = limits.max_connections,
        open_files = crate::serve::open_files_limit(),
        "api connection cap"
    );
    let api = tokio::spawn(crate::serve::serve(
        listener,
        router,
        limits,
        metrics.api_connections.clone(),
        async move { api_stop.cancelled().await },
    ));

    tracing::info!(
        store = %settings.gateway.store,
        gateway = %settings.gateway.id,
        devices = settings.devices.len(),
        "gateway running"
    );
    crate::notify::ready(&format!(
        "running: store {}, {} device(s)",
        settings.gateway.store,
        settings.devices.len()
    ));
    crate::notify::spawn_watchdog(stop.child_token());
    let reloads = tokio::spawn(reload_on_sighup(
        hangups,
        InForceNow {
            settings: settings.clone(),
            document: fleet_document,
        },
        Engines {
            prompts: prompts.clone(),
            consult: consult.clone(),
            hold_back: hold_back_tx,
        },
        in_force_tx,
        settings.fleet.is_some().then_some(apply_rx),
        stop.child_token(),
    ));
    shutdown.await;
    tracing::info!("shutting down");
    crate::notify::stopping();
    stop.cancel();
    let _ = reloads.await;
    if let Some((_, task)) = fleet {
        let _ = task.await;
    }
    while device_tasks.join_next().await.is_some() {}
    // The devices are gone; dropping our sender lets the core finish the queue and stop.
    let core_task = core.task;
    drop(core.events);
    core_task.await.context("gateway core failed")?;
    // The channel settles the answers and steps it already received (bounded) while both
    // engines still take them.
    if let Some(channel) = prompt_channel {
        let _ = channel.await;
    }
    // Scans still held go to the POS on the way out; open consultations stay saved.
    consult.shutdown().await;
    // Open prompts stay saved and resume at the next start; queued records are written first.
    prompts.close().await;
    if let Some(uplink) = uplink {
        // Its in-flight batch, if any, stays in the journal and is sent after the restart.
        let _ = uplink.task.await;
    }
    // Bounded: connections left after the serving module's grace period are dropped.
    if let Err(error) = api.await {
        tracing::warn!(%error, "api server task failed");
    }
    journal
        .append_value(
            Kind::Gateway,
            &GatewayData {
                event: "stopped",
                version: crate::VERSION,
                detail: "shutdown requested",
            },
        )
        .await
        .context("cannot write to the journal")?;
    journal.close().await.context("cannot flush the journal")?;
    tracing::info!("stopped; journal flushed");
    Ok(())
}

/// The consultation engine's configuration: `[[flow]]`, and `[privacy]`'s key read from its
/// file.
fn consult_config(settings: &Settings) -> anyhow::Result<crate::consult::ConsultConfig> {
    let customer_key = match &settings.privacy.customer_key_file {
        Some(path) => Some(crate::consult::CustomerKey::load(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    Ok(crate::consult::ConsultConfig {
        flows: crate::consult::Flows::new(settings.flows.clone()),
        customer_key,
    })
}

/// The answer-card codes a serial passthrough holds back.
fn hold_back_codes(settings: &Settings) -> Arc<HashSet<Vec<u8>>> {
    Arc::new(
        settings
            .answer_codes
            .keys()
            .map(|code| code.as_bytes().to_vec())
            .collect(),
    )
}

/// What the reload task puts in force with: the prompt and consultation engines and the
/// answer codes the serial tasks hold back.
struct Engines {
    prompts: crate::prompts::PromptsHandle,
    consult: crate::consult::ConsultHandle,
    hold_back: tokio::sync::watch::Sender<Arc<HashSet<Vec<u8>>>>,
}

/// The configuration in force: the settings, and HQ's document joined to them (if any).
struct InForceNow {
    settings: Settings,
    document: Option<Arc<crate::config::FleetDocument>>,
}

/// The owner of the configuration in force. On SIGHUP, reads the configuration again (joined
/// with HQ's document in force) and puts new campaigns, answer codes, skip reasons and flows in
/// force; the journal, devices, API and uplink stay up. A document from HQ (`fleet`) takes the
/// same path: the local files read again, joined with it and validated together, put in force
/// the same way, and the outcome answered. A configuration that does not load is refused with
/// its errors logged (and, for a document, answered), and the one in force stays. Other changes
/// (devices, uplink, api, mqtt, gateway) need a restart: they are named in a warning and not
/// applied.
async fn reload_on_sighup(
    hangups: std::io::Result<tokio::signal::unix::Signal>,
    mut now: InForceNow,
    engines: Engines,
    in_force: tokio::sync::watch::Sender<crate::fleet::InForce>,
    mut documents: Option<tokio::sync::mpsc::Receiver<crate::fleet::ApplyRequest>>,
    stop: CancellationToken,
) {
    let mut hangups = match hangups {
        Ok(hangups) => Some(hangups),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; reloading is off");
            None
        }
    };
    let mut generation = 0u64;
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(hangups) => hangups.recv().await,
                None => std::future::pending().await,
            }
        };
        let document = async {
            match documents.as_mut() {
                Some(documents) => documents.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = hangup => {
                if received.is_none() {
                    hangups = None;
                    continue;
                }
                let path = now.settings.path.clone();
                tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
                let joined = now.document.clone();
                let loaded = tokio::task::spawn_blocking(move || {
                    crate::config::load_with_fleet(&path, joined.as_deref())
                })
                .await;
                let next = match loaded {
                    Ok(Ok(next)) => next,
                    Ok(Err(error)) => {
                        tracing::error!("reload refused, the configuration in force stays:\n{error}");
                        continue;
                    }
                    Err(error) => {
                        tracing::error!(%error, "reload failed, the configuration in force stays");
                        continue;
                    }
                };
                generation += 1;
                let source = in_force.borrow().source;
                put_in_force(&mut now.settings, next.settings, &engines);
                in_force.send_replace(crate::fleet::InForce::new(
                    &now.settings,
                    next.fleet.as_ref(),
                    source,
                    generation,
                ));
            }
            request = document => {
                let Some(request) = request else {
                    documents = None;
                    continue;
                };
                let version = request.document.version;
                if now.document.as_ref().is_some_and(|doc| doc.same_content(&request.document)) {
                    // Only the version moved on (another store's change): nothing to reload.
                    now.document = Some(request.document);
                    in_force.send_modify(|in_force| {
                        in_force.version = Some(version);
                        in_force.source = Some(request.source);
                    });
                    let clashes = in_force.borrow().clashes.clone();
                    let _ = request.reply.send(crate::fleet::ApplyOutcome::Applied {
                        changed: false,
                        clashes,
                    });
                    continue;
                }
                let path = now.settings.path.clone();
                let joined = request.document.clone();
                let loaded = tokio::task::spawn_blocking(move || {
                    crate::config::load_with_fleet(&path, Some(&joined))
                })
                .await;
                let outcome = match loaded {
                    Ok(Ok(next)) => {
                        tracing::info!(version, "applying HQ's configuration");
                        put_in_force(&mut now.settings, next.settings, &engines);
                        now.document = Some(request.document);
                        let next_in_force = crate::fleet::InForce::new(
                            &now.settings,
                            next.fleet.as_ref(),
                            Some(request.source),
                            generation,
                        );
                        let clashes = next_in_force.clashes.clone();
                        in_force.send_replace(next_in_force);
                        crate::fleet::ApplyOutcome::Applied { changed: true, clashes }
                    }
                    Ok(Err(error)) => crate::fleet::ApplyOutcome::Refused {
                        errors: crate::fleet::error_lines(&error),
                    },
                    Err(error) => crate::fleet::ApplyOutcome::Refused {
                        errors: vec![format!("validating the configuration failed: {error}")],
                    },
                };
                let _ = request.reply.send(outcome);
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Puts `next`'s campaigns, answer codes, skip reasons and flows in force (what a reload
/// changes), warning about changes that need a restart.
fn put_in_force(current: &mut Settings, next: Settings, engines: &Engines) {
    let needs_restart = restart_only_changes(current, &next);
    if !needs_restart.is_empty() {
        tracing::warn!(
            "reload: changes to {} need a restart (systemctl restart posgw); not applied",
            needs_restart.join(", ")
        );
    }
    engines.prompts.reload(PromptsConfig {
        campaigns: next.campaigns.clone(),
        answer_codes: next.answer_codes.clone(),
        skip_reasons: next.prompts.skip_reasons.clone(),
        sale_link_window: current.prompts.sale_link_window,
    });
    engines.hold_back.send_replace(hold_back_codes(&next));
    match consult_config(&next) {
        Ok(config) => engines.consult.reload(config),
        Err(error) => tracing::error!("reload: flows not reloaded: {error:#}"),
    }
    tracing::info!(
        campaigns = next.campaigns.len(),
        answer_codes = next.answer_codes.len(),
        flows = next.flows.len(),
        "reloaded: campaigns, answer codes, skip reasons and flows in force"
    );
    crate::notify::status(&format!(
        "reloaded: {} campaign(s), {} answer code(s)",
        next.campaigns.len(),
        next.answer_codes.len()
    ));
    current.campaigns = next.campaigns;
    current.answer_codes = next.answer_codes;
    current.prompts.skip_reasons = next.prompts.skip_reasons;
    current.flows = next.flows;
    current.privacy = next.privacy;
}

/// Names of the sections whose changes a reload does not apply.
fn restart_only_changes(current: &Settings, next: &Settings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if current.gateway != next.gateway {
        changed.push("[gateway]");
    }
    if current.api != next.api {
        changed.push("[api]");
    }
    let devices = |settings: &Settings| {
        settings
            .devices
            .iter()
            .map(|d| {
                let serial = d.serial.clone();
                let profile = (d.profile.name.clone(), d.profile.source.clone());
                (
                    d.id.clone(),
                    d.role,
                    d.transport,
                    d.station.clone(),
                    profile,
                    serial,
                    d.topic.clone(),
                    d.tcp.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    if devices(current) != devices(next) {
        changed.push("[[device]]");
    }
    if current.mqtt != next.mqtt {
        changed.push("[mqtt]");
    }
    if current.uplink != next.uplink {
        changed.push("[uplink]");
    }
    if current.prompts.sale_link_window != next.prompts.sale_link_window {
        changed.push("sale_link_window");
    }
    changed
}

/// Binds the API address from the configuration.
pub async fn bind_api(settings: &Settings) -> anyhow::Result<TcpListener> {
    let listen = settings.api.listen;
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (api.listen)"))
}
