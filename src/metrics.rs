//! Prometheus metrics of the store gateway.
//!
//! Owns the metric families and the registry they are exposed from. Counters are bumped by the task
//! that owns the thing being counted (the core counts records and bad frames); gauges that mirror
//! another owner's state (journal backlog, device connection) are set from snapshots just before
//! each scrape, so there is exactly one source of truth for each figure.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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

/// Every metric the gateway exports. Cheap to clone: all members are shared handles.
#[derive(Clone)]
pub struct Metrics {
    /// Records appended to the journal, by kind (`posgw_records_total`).
    pub records: Family<KindLabel, Counter>,
    /// Frames that could not be taken as a scan or sale (`posgw_bad_frames_total`).
    pub bad_frames: Family<DeviceLabel, Counter>,
    /// 1 while a device is connected, else 0 (`posgw_device_connected`).
    pub device_connected: Family<DeviceLabel, Gauge>,
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
        let backlog_records = Gauge::default();
        let backlog_bytes = Gauge::default();
        let dead_records = Gauge::default();
        let durable_seq = Gauge::default();
        let evicted = Counter::default();
        let prompts = Family::<OutcomeLabel, Counter>::default();
        let uplink_sent = Counter::default();
        let uplink_retries = Counter::default();
        let uplink_dead = Counter::default();
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
            "mqtt_redelivered_skipped",
            "MQTT messages delivered again whose record the journal already held (not recorded twice)",
            mqtt_redelivered_skipped.clone(),
        );
        Metrics {
            records,
            bad_frames,
            device_connected,
            backlog_records,
            backlog_bytes,
            dead_records,
            durable_seq,
            evicted,
            prompts,
            uplink_sent,
            uplink_retries,
            uplink_dead,
            mqtt_redelivered_skipped,
            registry: Arc::new(registry),
        }
    }

    /// Counts one appended record of `kind`.
    pub fn record_appended(&self, kind: &str) {
        self.records_appended(kind, 1);
    }

    /// Counts `count` records of `kind` appended together.
    pub fn records_appended(&self, kind: &str, count: u64) {
        self.records
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc_by(count);
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

    /// Sets the connection gauge of `device`.
    pub fn set_connected(&self, device: &str, connected: bool) {
        self.device_connected
            .get_or_create(&DeviceLabel {
                device: device.to_owned(),
            })
            .set(i64::from(connected));
    }

    /// Renders every series in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
