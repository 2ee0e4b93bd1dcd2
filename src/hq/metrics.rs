//! Prometheus metrics of the HQ receiver (`GET /metrics`), all under the `posgw_hq_` prefix.
//!
//! Record and duplicate counters are bumped by the flusher once a batch is durable, so they
//! count exactly what a 2xx promised; request counters are bumped by the HTTP layer.
//! The `notify_*` series are kept by the notifier (`notify`), the outbox's one owner.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label set for series split by store.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabel {
    /// The store code.
    pub store: String,
}

/// Label set for HTTP requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    /// `batches`, `records`, `stats`, `trace`, `healthz` or `metrics`.
    pub endpoint: String,
    /// The HTTP status code answered.
    pub code: String,
}

/// Label set for alert notifications, split by target and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifyLabel {
    /// The `[[notify]]` target id.
    pub target: String,
    /// `delivered`, `failed` (one failed attempt; it is retried) or `abandoned` (its target
    /// was removed from the configuration).
    pub result: String,
}

/// Every metric the receiver exports. Cheap to clone: all members are shared handles.
#[derive(Clone)]
pub struct HqMetrics {
    /// Records newly stored, by store (`posgw_hq_records_total`).
    pub records: Family<StoreLabel, Counter>,
    /// Records received again, by store (`posgw_hq_duplicates_total`).
    pub duplicates: Family<StoreLabel, Counter>,
    /// Requests answered, by endpoint and status (`posgw_hq_requests_total`).
    pub requests: Family<RequestLabel, Counter>,
    /// Records per accepted batch, duplicates included (`posgw_hq_batch_records`).
    pub batch_records: Histogram,
    /// Decompressed bytes per accepted batch (`posgw_hq_batch_bytes`).
    pub batch_bytes: Histogram,
    /// Time of each group-commit fsync (`posgw_hq_commit_seconds`).
    pub commit_seconds: Histogram,
    /// Highest durable hq_seq (`posgw_hq_stored_seq`).
    pub stored_seq: Gauge,
    /// HTTP connections: open, the cap, refused over the cap (`posgw_hq_connections*`).
    pub connections: crate::serve::ConnectionMetrics,
    /// Bytes of request bodies reserved now (`posgw_hq_body_budget_bytes`).
    pub body_budget_bytes: Gauge,
    /// Batches answered 503 because the body budget stayed full (`posgw_hq_body_budget_refused_total`).
    pub body_budget_refused: Counter,
    /// Notification attempts and abandoned notifications, by target and result
    /// (`posgw_hq_notify_deliveries_total`).
    pub notify_deliveries: Family<NotifyLabel, Counter>,
    /// Notifications not delivered yet, in the outbox (`posgw_hq_notify_pending`).
    pub notify_pending: Gauge,
    /// Notifications refused because the outbox was full (`posgw_hq_notify_refused_total`).
    pub notify_refused: Counter,
    /// The registry everything above is registered in.
    registry: Arc<Registry>,
}

impl HqMetrics {
    /// Creates every family and registers it.
    pub fn new() -> Self {
        let records = Family::<StoreLabel, Counter>::default();
        let duplicates = Family::<StoreLabel, Counter>::default();
        let requests = Family::<RequestLabel, Counter>::default();
        // 1, 4, 16, ... 65536 records.
        let batch_records = Histogram::new(exponential_buckets(1.0, 4.0, 9));
        // 1 KiB to 64 MiB.
        let batch_bytes = Histogram::new(exponential_buckets(1024.0, 4.0, 9));
        // 0.5 ms to about 4 s.
        let commit_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let stored_seq = Gauge::default();
        let body_budget_bytes = Gauge::default();
        let body_budget_refused = Counter::default();
        let notify_deliveries = Family::<NotifyLabel, Counter>::default();
        let notify_pending = Gauge::default();
        let notify_refused = Counter::default();

        let mut registry = Registry::with_prefix("posgw_hq");
        registry.register(
            "records",
            "Records stored durably, by store",
            records.clone(),
        );
        registry.register(
            "duplicates",
            "Records received again after they were stored, by store",
            duplicates.clone(),
        );
        registry.register(
            "requests",
            "HTTP requests answered, by endpoint and status code",
            requests.clone(),
        );
        registry.register(
            "batch_records",
            "Records per accepted batch, duplicates included",
            batch_records.clone(),
        );
        registry.register(
            "batch_bytes",
            "Decompressed bytes per accepted batch",
            batch_bytes.clone(),
        );
        registry.register(
            "commit_seconds",
            "Duration of each group-commit fsync",
            commit_seconds.clone(),
        );
        registry.register(
            "stored_seq",
            "Highest hq_seq known to be on disk",
            stored_seq.clone(),
        );
        let connections = crate::serve::ConnectionMetrics::default();
        connections.register(&mut registry, "");
        registry.register(
            "body_budget_bytes",
            "Bytes of request bodies held now (as sent, decompressed and parsed)",
            body_budget_bytes.clone(),
        );
        registry.register(
            "body_budget_refused",
            "Batches answered 503 because the body budget stayed full; the gateway retries",
            body_budget_refused.clone(),
        );
        registry.register(
            "notify_deliveries",
            "Alert notification attempts by target and result (delivered, failed), and \
             notifications abandoned because their target was removed",
            notify_deliveries.clone(),
        );
        registry.register(
            "notify_pending",
            "Alert notifications in the outbox not delivered yet",
            notify_pending.clone(),
        );
        registry.register(
            "notify_refused",
            "Alert notifications refused because the outbox was full (never queued)",
            notify_refused.clone(),
        );
        HqMetrics {
            records,
            duplicates,
            requests,
            batch_records,
            batch_bytes,
            commit_seconds,
            stored_seq,
            connections,
            body_budget_bytes,
            body_budget_refused,
            notify_deliveries,
            notify_pending,
            notify_refused,
            registry: Arc::new(registry),
        }
    }

    /// Counts one durable batch of `store`.
    pub fn batch_stored(&self, store: &str, accepted: usize, duplicates: usize) {
        let label = StoreLabel {
            store: store.to_owned(),
        };
        self.records.get_or_create(&label).inc_by(accepted as u64);
        self.duplicates
            .get_or_create(&label)
            .inc_by(duplicates as u64);
        self.batch_records.observe((accepted + duplicates) as f64);
    }

    /// Counts one answered request.
    pub fn request(&self, endpoint: &str, code: u16) {
        self.requests
            .get_or_create(&RequestLabel {
                endpoint: endpoint.to_owned(),
                code: code.to_string(),
            })
            .inc();
    }

    /// Counts one notification attempt (`delivered`, `failed`) or abandonment for `target`.
    pub fn notify_attempt(&self, target: &str, result: &str) {
        self.notify_deliveries
            .get_or_create(&NotifyLabel {
                target: target.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Renders every series in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for HqMetrics {
    fn default() -> Self {
        Self::new()
    }
}
