//! Prometheus metrics of the store gateway.
//!
//! Owns the metric families and the registry they are exposed from. Counters are bumped by the task
//! that owns the thing being counted (the core counts bad frames); series that mirror another
//! owner's state are set from it: the journal's (records appended by kind, evictions, backlog)
//! from its snapshot just before each scrape ([`Metrics::follow_journal`]), a device's
//! connection by the device task. There is exactly one source of truth for each figure.
//!
//! Every labelled series the gateway can ever show exists from start, at 0: one per record kind,
//! per prompt outcome, and per configured device ([`Metrics::add_device`]). Alerting on `rate()`
//! or `increase()` needs the series before its first event, or the first event is invisible.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::journal::JournalStats;

/// Label set for series split by record kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The record kind: scan, sale, attribution, device, gateway.
    pub kind: String,
}

/// Label set for prompt outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// opened | answered | skipped | timeout.
    pub outcome: String,
}

/// Label set for series split by device.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabel {
    /// The device id from the configuration.
    pub device: String,
}

/// Label set for the two connections to the store's broker.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    /// `devices` (MQTT devices) or `prompts` (the prompt channel).
    pub channel: String,
}

/// Label set for a passthrough's series: the device and the direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassthroughLabel {
    /// The device id from the configuration.
    pub device: String,
    /// `to_passthrough` (device → POS or printer) or `to_device` (their answers → device).
    pub direction: &'static str,
}
/// The `outcome` labels of `posgw_prompts_total`: `opened`, then every way a prompt ends.
pub const PROMPT_OUTCOMES: [&str; 4] = ["opened", "answered", "skipped", "timeout"];

/// Every metric the gateway exports. Cheap to clone: all members are shared handles.
#[derive(Clone)]
pub struct Metrics {
    /// Records appended to the journal, by kind (`posgw_records_total`); follows the journal's
    /// own counts.
    pub records: Family<KindLabel, Counter>,
    /// Frames that could not be taken as a scan or sale (`posgw_bad_frames_total`).
    pub bad_frames: Family<DeviceLabel, Counter>,
    /// 1 while a device is connected, else 0 (`posgw_device_connected`).
    pub device_connected: Family<DeviceLabel, Gauge>,
    /// Serial device events dropped before the core because it fell behind
    /// (`posgw_device_dropped_events_total`); see `devices::relay`.
    pub device_dropped_events: Family<DeviceLabel, Counter>,
    /// Bytes of those events (`posgw_device_dropped_bytes_total`).
    pub device_dropped_bytes: Family<DeviceLabel, Counter>,
    /// Serial device events waiting for the core (`posgw_device_queued_events`).
    pub device_queued_events: Family<DeviceLabel, Gauge>,
    /// Records in the journal not yet acknowledged by HQ (`posgw_journal_backlog_records`).
    pub backlog_records: Gauge,
    /// Bytes of those records (`posgw_journal_backlog_bytes`).
    pub backlog_bytes: Gauge,
    /// Records HQ refused for good (`posgw_journal_dead_records`).
    pub dead_records: Gauge,
    /// Highest seq known to be fsynced (`posgw_journal_durable_seq`).
    pub durable_seq: Gauge,
    /// Scan and device records evicted over `max_journal_bytes`
    /// (`posgw_journal_evicted_records_total`); follows the journal's own count.
    pub evicted: Counter,
    /// Prompts opened and resolved, by outcome (`posgw_prompts_total`).
    pub prompts: Family<OutcomeLabel, Counter>,
    /// Records HQ accepted (`posgw_uplink_sent_records_total`).
    pub uplink_sent: Counter,
    /// Failed deliveries that were retried (`posgw_uplink_retries_total`).
    pub uplink_retries: Counter,
    /// Records moved to the dead-letter set after HQ refused them (`posgw_uplink_dead_records_total`).
    pub uplink_dead: Counter,
    /// MQTT messages over the size limit, read by size only and acknowledged, by connection
    /// (`posgw_mqtt_oversize_messages_total{channel}`); both series exist from the start.
    pub mqtt_oversize: Family<ChannelLabel, Counter>,
    /// Local API connections: open, the cap, refused over the cap (`posgw_api_connections*`).
    pub api_connections: crate::serve::ConnectionMetrics,
    /// Bytes a passthrough forwarded, by device and direction (`posgw_passthrough_bytes_total`).
    pub passthrough_bytes: Family<PassthroughLabel, Counter>,
    /// Bytes a passthrough dropped (queue full, port gone) (`posgw_passthrough_dropped_bytes_total`).
    pub passthrough_dropped_bytes: Family<PassthroughLabel, Counter>,
    /// Writes a passthrough dropped whole (`posgw_passthrough_dropped_chunks_total`).
    pub passthrough_dropped_chunks: Family<PassthroughLabel, Counter>,
    /// Register connections a network printer tap forwarded (`posgw_tap_connections_total`).
    pub tap_connections: Family<DeviceLabel, Counter>,
    /// Register connections refused over `max_connections` (`posgw_tap_refused_connections_total`).
    pub tap_refused: Family<DeviceLabel, Counter>,
    /// Register connections closed because the printer did not answer
    /// (`posgw_tap_printer_unreachable_total`).
    pub tap_unreachable: Family<DeviceLabel, Counter>,
    /// Register connections open now (`posgw_tap_open_connections`).
    pub tap_open: Family<DeviceLabel, Gauge>,
    /// MQTT messages the broker delivered again (DUP) whose record the journal already held:
    /// acknowledged without being recorded twice (`posgw_mqtt_redelivered_skipped_total`).
    pub mqtt_redelivered_skipped: Counter,
    /// The registry everything above is registered in; shared with the HTTP handler.
    registry: Arc<Registry>,
}

impl Metrics {
    /// Creates every family and registers it under the contract's names.
    pub fn new() -> Self {
        let records = Family::<KindLabel, Counter>::default();
        let bad_frames = Family::<DeviceLabel, Counter>::default();
        let device_connected = Family::<DeviceLabel, Gauge>::default();
        let device_dropped_events = Family::<DeviceLabel, Counter>::default();
        let device_dropped_bytes = Family::<DeviceLabel, Counter>::default();
        let device_queued_events = Family::<DeviceLabel, Gauge>::default();
        let backlog_records = Gauge::default();
        let backlog_bytes = Gauge::default();
        let dead_records = Gauge::default();
        let durable_seq = Gauge::default();
        let evicted = Counter::default();
        let prompts = Family::<OutcomeLabel, Counter>::default();
        let uplink_sent = Counter::default();
        let uplink_retries = Counter::default();
        let uplink_dead = Counter::default();
        let mqtt_oversize = Family::<ChannelLabel, Counter>::default();
        for channel in ["devices", "prompts"] {
            // Created now, so the series read 0 before the first oversize message.
            let _ = mqtt_oversize.get_or_create(&ChannelLabel {
                channel: channel.to_owned(),
            });
        }
        let api_connections = crate::serve::ConnectionMetrics::default();
        let passthrough_bytes = Family::<PassthroughLabel, Counter>::default();
        let passthrough_dropped_bytes = Family::<PassthroughLabel, Counter>::default();
        let passthrough_dropped_chunks = Family::<PassthroughLabel, Counter>::default();
        let tap_connections = Family::<DeviceLabel, Counter>::default();
        let tap_refused = Family::<DeviceLabel, Counter>::default();
        let tap_unreachable = Family::<DeviceLabel, Counter>::default();
        let tap_open = Family::<DeviceLabel, Gauge>::default();
        let mqtt_redelivered_skipped = Counter::default();

        let mut registry = Registry::with_prefix("posgw");
        registry.register(
            "records",
            "Records appended to the journal",
            records.clone(),
        );
        registry.register(
            "bad_frames",
            "Frames that could not be decoded as device data",
            bad_frames.clone(),
        );
        registry.register(
            "device_connected",
            "1 while the device is connected",
            device_connected.clone(),
        );
        registry.register(
            "device_dropped_events",
            "Serial device events dropped because the gateway core fell behind",
            device_dropped_events.clone(),
        );
        registry.register(
            "device_dropped_bytes",
            "Bytes of serial device events dropped because the gateway core fell behind",
            device_dropped_bytes.clone(),
        );
        registry.register(
            "device_queued_events",
            "Serial device events waiting for the gateway core",
            device_queued_events.clone(),
        );
        registry.register(
            "journal_backlog_records",
            "Records in the journal not yet acknowledged by HQ",
            backlog_records.clone(),
        );
        registry.register(
            "journal_backlog_bytes",
            "Bytes of records not yet acknowledged by HQ",
            backlog_bytes.clone(),
        );
        registry.register(
            "journal_dead_records",
            "Records HQ refused, kept in the dead-letter set",
            dead_records.clone(),
        );
        registry.register(
            "journal_durable_seq",
            "Highest record seq known to be on disk",
            durable_seq.clone(),
        );
        registry.register(
            "journal_evicted_records",
            "Scan and device records evicted because the journal was over max_journal_bytes",
            evicted.clone(),
        );
        registry.register(
            "prompts",
            "Attribution prompts opened, and resolved by outcome",
            prompts.clone(),
        );
        registry.register(
            "uplink_sent_records",
            "Records HQ accepted",
            uplink_sent.clone(),
        );
        registry.register(
            "uplink_retries",
            "Deliveries to HQ that failed and were retried",
            uplink_retries.clone(),
        );
        registry.register(
            "uplink_dead_records",
            "Records HQ refused, moved to the dead-letter set",
            uplink_dead.clone(),
        );
        registry.register(
            "mqtt_oversize_messages",
            "MQTT messages over the size limit, recorded by their size and acknowledged",
            mqtt_oversize.clone(),
        );
        api_connections.register(&mut registry, "api_");
        registry.register(
            "passthrough_bytes",
            "Bytes passed through, by device and direction",
            passthrough_bytes.clone(),
        );
        registry.register(
            "passthrough_dropped_bytes",
            "Bytes a passthrough dropped because its reader stalled or its port was gone",
            passthrough_dropped_bytes.clone(),
        );
        registry.register(
            "passthrough_dropped_chunks",
            "Writes a passthrough dropped whole because its reader stalled or its port was gone",
            passthrough_dropped_chunks.clone(),
        );
        registry.register(
            "tap_connections",
            "Register connections a network printer tap forwarded to its printer",
            tap_connections.clone(),
        );
        registry.register(
            "tap_refused_connections",
            "Register connections a network printer tap refused over max_connections",
            tap_refused.clone(),
        );
        registry.register(
            "tap_printer_unreachable",
            "Register connections closed because the network printer did not answer",
            tap_unreachable.clone(),
        );
        registry.register(
            "tap_open_connections",
            "Register connections a network printer tap has open",
            tap_open.clone(),
        );
        for kind in crate::record::Kind::ALL {
            let _ = records.get_or_create(&KindLabel {
                kind: kind.as_str().to_owned(),
            });
        }
        for outcome in PROMPT_OUTCOMES {
            let _ = prompts.get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            });
        }
        registry.register(
            "mqtt_redelivered_skipped",
            "MQTT messages delivered again whose record the journal already held (not recorded twice)",
            mqtt_redelivered_skipped.clone(),
        );
        Metrics {
            records,
            bad_frames,
            device_connected,
            device_dropped_events,
            device_dropped_bytes,
            device_queued_events,
            backlog_records,
            backlog_bytes,
            dead_records,
            durable_seq,
            evicted,
            prompts,
            uplink_sent,
            uplink_retries,
            uplink_dead,
            mqtt_oversize,
            api_connections,
            passthrough_bytes,
            passthrough_dropped_bytes,
            passthrough_dropped_chunks,
            tap_connections,
            tap_refused,
            tap_unreachable,
            tap_open,
            mqtt_redelivered_skipped,
            registry: Arc::new(registry),
        }
    }

    /// Creates the series of a configured device, at 0 (not connected, nothing counted), so
    /// they exist before its first event.
    pub fn add_device(&self, device: &str) {
        let label = DeviceLabel {
            device: device.to_owned(),
        };
        let _ = self.bad_frames.get_or_create(&label);
        self.device_connected.get_or_create(&label).set(0);
        let _ = self.device_dropped_events.get_or_create(&label);
        let _ = self.device_dropped_bytes.get_or_create(&label);
        let _ = self.device_queued_events.get_or_create(&label);
    }

    /// The `posgw_device_queued_events` gauge of `device`, for its relay.
    pub fn device_queued_events(&self, device: &str) -> Gauge {
        self.device_queued_events
            .get_or_create(&DeviceLabel {
                device: device.to_owned(),
            })
            .clone()
    }

    /// The `posgw_device_dropped_events_total` counter of `device`, for its relay.
    pub fn device_dropped_events(&self, device: &str) -> Counter {
        self.device_dropped_events
            .get_or_create(&DeviceLabel {
                device: device.to_owned(),
            })
            .clone()
    }

    /// The `posgw_device_dropped_bytes_total` counter of `device`, for its relay.
    pub fn device_dropped_bytes(&self, device: &str) -> Counter {
        self.device_dropped_bytes
            .get_or_create(&DeviceLabel {
                device: device.to_owned(),
            })
            .clone()
    }

    /// Brings the series that mirror the journal up to its snapshot `journal`; called just
    /// before each scrape. The journal counts records by kind and evictions since it was opened
    /// (as long as this process runs); a counter follows such a count by only ever moving up to
    /// it (`fetch_max`), so two scrapes at once cannot count anything twice.
    pub fn follow_journal(&self, journal: &JournalStats) {
        for (kind, appended) in &journal.per_kind {
            let label = KindLabel {
                kind: kind.as_str().to_owned(),
            };
            let counter = self.records.get_or_create(&label);
            counter.inner().fetch_max(*appended, Ordering::Relaxed);
        }
        self.evicted
            .inner()
            .fetch_max(journal.evicted_records, Ordering::Relaxed);
        self.backlog_records.set(gauge(journal.backlog_records));
        self.backlog_bytes.set(gauge(journal.backlog_bytes));
        self.dead_records.set(gauge(journal.dead_records));
        self.durable_seq.set(gauge(journal.durable_seq));
    }

    /// Counts one bad frame from `device`.
    pub fn bad_frame(&self, device: &str) {
        self.bad_frames
            .get_or_create(&DeviceLabel {
                device: device.to_owned(),
            })
            .inc();
    }

    /// Counts a prompt event: `opened`, or its outcome `answered`, `skipped`, `timeout`.
    pub fn prompt(&self, outcome: &str) {
        self.prompts
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The counter of oversize MQTT messages on `channel` (`devices` or `prompts`).
    pub fn mqtt_oversize(&self, channel: &str) -> Counter {
        self.mqtt_oversize
            .get_or_create(&ChannelLabel {
                channel: channel.to_owned(),
            })
            .clone()
    }

    /// Sets the connection gauge of `device`.
    pub fn set_connected(&self, device: &str, connected: bool) {
        self.device_connected
            .get_or_create(&DeviceLabel {
                device: device.to_owned(),
            })
            .set(i64::from(connected));
    }

    /// The passthrough counters of `device`, both directions, created at 0 so they show from the
    /// start; the passthrough bumps them directly.
    pub fn passthrough_counters(
        &self,
        device: &str,
    ) -> crate::devices::passthrough::PassthroughCounters {
        use crate::devices::passthrough::DirectionCounters;
        let direction = |direction: &'static str| {
            let label = PassthroughLabel {
                device: device.to_owned(),
                direction,
            };
            DirectionCounters {
                bytes: self.passthrough_bytes.get_or_create(&label).clone(),
                dropped_bytes: self.passthrough_dropped_bytes.get_or_create(&label).clone(),
                dropped_chunks: self
                    .passthrough_dropped_chunks
                    .get_or_create(&label)
                    .clone(),
            }
        };
        crate::devices::passthrough::PassthroughCounters {
            to_passthrough: direction("to_passthrough"),
            to_device: direction("to_device"),
        }
    }

    /// The connection counts of the network printer tap `device`, created at 0.
    pub fn tap_counters(&self, device: &str) -> crate::devices::tcp_tap::TapCounters {
        let label = DeviceLabel {
            device: device.to_owned(),
        };
        crate::devices::tcp_tap::TapCounters {
            accepted: self.tap_connections.get_or_create(&label).clone(),
            refused: self.tap_refused.get_or_create(&label).clone(),
            printer_unreachable: self.tap_unreachable.get_or_create(&label).clone(),
            open: self.tap_open.get_or_create(&label).clone(),
        }
    }

    /// Renders every series in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A journal figure as a gauge value (they never come near `i64::MAX`).
fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::attribution::Outcome;

    /// A scrape right after start shows every kind, outcome and device at 0.
    #[test]
    fn labelled_series_exist_at_zero_before_any_event() {
        let metrics = Metrics::new();
        metrics.add_device("scanner-1");
        let text = metrics.render();
        let mut expected: Vec<String> = crate::record::Kind::ALL
            .iter()
            .map(|kind| format!("posgw_records_total{{kind=\"{}\"}} 0", kind.as_str()))
            .collect();
        expected.extend(
            PROMPT_OUTCOMES
                .iter()
                .map(|outcome| format!("posgw_prompts_total{{outcome=\"{outcome}\"}} 0")),
        );
        expected.push("posgw_bad_frames_total{device=\"scanner-1\"} 0".into());
        expected.push("posgw_device_connected{device=\"scanner-1\"} 0".into());
        for series in expected {
            assert!(
                text.lines().any(|line| line == series),
                "missing {series} in\n{text}"
            );
        }
    }

    /// `posgw_records_total` shows the journal's own count of each kind, and a snapshot
    /// followed twice (two scrapes at once) counts nothing twice.
    #[tokio::test]
    async fn record_counts_follow_the_journal() {
        use crate::record::Kind;
        let dir = tempfile::tempdir().expect("tempdir");
        let journal =
            crate::journal::open_for_test(dir.path(), std::time::Duration::from_millis(5)).await;
        for code in ["1", "2", "3"] {
            journal
                .append_value(Kind::Scan, &serde_json::json!({ "code": code }))
                .await
                .expect("append scan");
        }
        journal
            .append_value(Kind::Gateway, &serde_json::json!({ "event": "started" }))
            .await
            .expect("append gateway");
        let metrics = Metrics::new();
        let stats = journal.stats();
        metrics.follow_journal(&stats);
        metrics.follow_journal(&stats);
        let text = metrics.render();
        for series in [
            "posgw_records_total{kind=\"scan\"} 3",
            "posgw_records_total{kind=\"gateway\"} 1",
            "posgw_records_total{kind=\"sale\"} 0",
        ] {
            assert!(
                text.lines().any(|line| line == series),
                "missing {series} in\n{text}"
            );
        }
        journal.close().await.expect("close");
    }

    /// The outcomes listed up front are the ones the prompt engine counts.
    #[test]
    fn prompt_outcomes_cover_every_outcome() {
        for outcome in [Outcome::Answered, Outcome::Skipped, Outcome::Timeout] {
            assert!(PROMPT_OUTCOMES.contains(&outcome.as_str()));
        }
    }
}
