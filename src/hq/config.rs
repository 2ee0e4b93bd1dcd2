//! The HQ receiver's configuration: `[hq]` and `[[store]]` (docs/hq-protocol.md).
//!
//! Loaded with the gateway config's machinery (`crate::config::source` and `check`), so errors
//! look the same: `PATH:LINE:COL: message`, unknown keys with a suggestion, every problem
//! reported in one run. As for the gateway, every `*.toml` in `config.d/` beside the file is
//! applied after it in file-name order: `[hq]` merges key by key, `[[store]]` appends.
//!
//! Token files are read at load time (trimmed of surrounding whitespace); a missing,
//! unreadable or empty token file is a configuration error pointing at its `token_file` key.
//! Relative paths resolve against the config file's folder.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::check;
use crate::config::source::{read_merged, DurationText, Located, MergeLater, Merged, Report, Span};
use crate::config::ConfigError;

/// Address the receiver binds when `listen` is not set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7390";
/// Folder of the HQ database when `data_dir` is not set.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/posgw-hq";
/// Largest request body, compressed or decompressed, when `max_body` is not set (16 MiB).
pub const DEFAULT_MAX_BODY: u64 = 16 * 1024 * 1024;
/// Largest `max_body` accepted: a body is held in memory twice (compressed and decompressed).
const MAX_MAX_BODY: u64 = 1024 * 1024 * 1024;
/// `body_budget` when not set, in `max_body`s: a few largest bodies at once.
pub const DEFAULT_BODY_BUDGET_BODIES: u64 = 4;
/// `evaluate_every` when not set.
pub const DEFAULT_EVALUATE_EVERY: Duration = Duration::from_secs(15 * 60);
/// Largest `body_budget` accepted.
const MAX_BODY_BUDGET: u64 = 64 * 1024 * 1024 * 1024;
/// `[hq] timezone` when not set: the chain's stores are in China.
pub const DEFAULT_TIMEZONE: chrono_tz::Tz = chrono_tz::Asia::Shanghai;
/// Characters besides ASCII letters and digits allowed in a store code (as for `[gateway] store`).
const STORE_EXTRA: &[char] = &['-', '_'];

/// The validated HQ receiver configuration.
#[derive(Debug, Clone)]
pub struct HqSettings {
    /// Address to bind (`[hq] listen`); default `127.0.0.1:7390`.
    pub listen: SocketAddr,
    /// Folder of the HQ database (`[hq] data_dir`); default `/var/lib/posgw-hq`.
    pub data_dir: PathBuf,
    /// Largest request body in bytes, checked before and after decompression (`[hq] max_body`).
    pub max_body: u64,
    /// Bytes of request bodies held at once, as sent, decompressed and parsed (`[hq]
    /// body_budget`); `None` means four times `max_body`. Never less than twice `max_body`.
    pub body_budget: Option<u64>,
    /// Token of the read endpoints, from `admin_token_file`; `None` refuses every read.
    pub admin_token: Option<String>,
    /// The time zone of store-local days (`[hq] timezone`, an IANA name); default
    /// `Asia/Shanghai`. Every daily figure and yardstick counts a record in its `ts`'s day here.
    pub timezone: chrono_tz::Tz,
    /// The stores allowed to post, each with its token (`[[store]]`).
    pub stores: Vec<StoreSettings>,
    /// Groups of stores (`[[region]]`), in file order; a store is in at most one.
    pub regions: Vec<RegionSettings>,
    /// Dashboard and API users (`[[user]]`), in file order.
    pub users: Vec<UserSettings>,
    /// Where alerts go (`[[notify]]`), in file order.
    pub(crate) notify: Vec<super::notify::NotifySettings>,
    /// Alert rules (`[[alert]]`), in file order.
    pub(crate) alerts: Vec<super::alerts::AlertRule>,
    /// How often the alert rules run (`[hq] evaluate_every`; default 15 minutes).
    pub evaluate_every: Duration,
    /// The dashboard's address as supervisors reach it (`[hq] public_url`), for the link in
    /// alert messages; `None`: messages carry no link.
    pub public_url: Option<String>,
    /// The files that were read, main file first, then the applied drop-ins.
    pub files: Vec<PathBuf>,
    /// The chain's campaigns, flows, answer codes and skip reasons for the stores' gateways
    /// (`[[campaign]]`, `[[flow]]`, `[answer_codes]`, `[prompts]`; `hq::fleet`).
    pub fleet: super::fleet::FleetSettings,
    /// Where records and figures are kept (`[storage]`): sled in `data_dir` by default.
    pub storage: Storage,
}

/// The HQ storage backend (`[storage] backend`).
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Storage {
    /// The embedded sled database in `data_dir` (one receiver).
    #[default]
    Sled,
    /// A PostgreSQL database shared by any number of receivers.
    Postgres {
        /// The connection URL (`postgres://user:password@host:port/db?sslmode=...`), read from
        /// `url_file`.
        url: String,
        /// The file it was read from, for messages.
        url_file: PathBuf,
    },
}

impl std::fmt::Debug for Storage {
    /// Never prints the URL: it holds a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Sled => f.write_str("Sled"),
            Storage::Postgres { url_file, .. } => f
                .debug_struct("Postgres")
                .field("url_file", url_file)
                .finish_non_exhaustive(),
        }
    }
}

impl HqSettings {
    /// `[[alert]]` rules configured.
    pub fn alert_rule_count(&self) -> usize {
        self.alerts.len()
    }

    /// `[[notify]]` targets configured.
    pub fn notify_target_count(&self) -> usize {
        self.notify.len()
    }

    /// The body budget in effect: `body_budget`, or four times `max_body`; at least two.
    pub fn effective_body_budget(&self) -> u64 {
        self.body_budget
            .unwrap_or(self.max_body.saturating_mul(DEFAULT_BODY_BUDGET_BODIES))
            .max(self.max_body.saturating_mul(2))
    }

    /// Settings with the defaults and no stores, for code that builds its own (the demo, tests).
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        HqSettings {
            listen,
            data_dir,
            max_body: DEFAULT_MAX_BODY,
            body_budget: None,
            admin_token: None,
            timezone: DEFAULT_TIMEZONE,
            stores: Vec::new(),
            regions: Vec::new(),
            users: Vec::new(),
            notify: Vec::new(),
            alerts: Vec::new(),
            evaluate_every: DEFAULT_EVALUATE_EVERY,
            public_url: None,
            files: Vec::new(),
            fleet: Default::default(),
            storage: Storage::Sled,
        }
    }
}

/// One `[[region]]`: a group of stores that a `region` user sees in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSettings {
    /// The region's id, like `east-wz`.
    pub id: String,
    /// Its display name (`name`; the id when not set).
    pub name: String,
    /// The codes of its stores, each a configured `[[store]]`.
    pub stores: Vec<String>,
    /// Ids of its `[[notify]]` targets, as written (used by alerts).
    pub notify: Vec<String>,
}

/// What a user may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Everything, like the admin token.
    Admin,
    /// The stores of this region in full, other regions as aggregates only.
    Region(String),
    /// This store only.
    Store(String),
}

/// One `[[user]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSettings {
    /// The login name.
    pub name: String,
    /// What the user may see.
    pub role: Role,
    /// An argon2id PHC string (`posgw hq passwd`); `None`: no dashboard login.
    pub password_hash: Option<String>,
    /// A bearer token for API use (content of `token_file`), if configured.
    pub token: Option<String>,
}

/// One store allowed to post batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// The store code; every record the store posts must carry it in `store`.
    pub code: String,
    /// The bearer token the store's gateway sends (content of `token_file`, trimmed).
    pub token: String,
}

/// A whole HQ config file (the main file or one drop-in) as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHqConfig {
    /// `[hq]`: where to listen and store.
    hq: Option<Located<RawHq>>,
    /// `[[store]]`: the stores allowed to post.
    store: Option<Vec<Located<RawStore>>>,
    /// `[[region]]`: groups of stores.
    region: Option<Vec<Located<RawRegion>>>,
    /// `[[user]]`: dashboard and API users.
    user: Option<Vec<Located<RawUser>>>,
    /// `[[notify]]`: group robots and webhooks for alerts.
    notify: Option<Vec<Located<super::notify::RawNotify>>>,
    /// `[[alert]]`: alert rules.
    alert: Option<Vec<Located<super::alerts::rules::RawAlert>>>,
    /// `[[campaign]]`: campaigns for the stores' gateways (`hq::fleet`).
    campaign: Option<super::fleet::config::RawCampaigns>,
    /// `[[flow]]`: consultation flows for the stores' gateways.
    flow: Option<super::fleet::config::RawFlows>,
    /// `[answer_codes]`: answer cards for the stores' gateways.
    answer_codes: Option<super::fleet::config::RawCodes>,
    /// `[prompts]`: `skip_reasons` for the stores' gateways.
    prompts: Option<super::fleet::config::RawSkipReasons>,
    /// `[storage]`: where records and figures are kept.
    storage: Option<Located<RawStorage>>,
}

/// `[storage]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    /// `sled` (default) or `postgres`.
    backend: Option<Located<String>>,
    /// File holding the PostgreSQL URL (with `postgres`).
    url_file: Option<Located<String>>,
}

/// One `[[region]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    /// Region id; required.
    id: Option<Located<String>>,
    /// Display name.
    name: Option<Located<String>>,
    /// Store codes; required (may be empty).
    stores: Option<Located<Vec<Located<String>>>>,
    /// `[[notify]]` ids.
    notify: Option<Located<Vec<Located<String>>>>,
}

/// One `[[user]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    /// Login name; required.
    name: Option<Located<String>>,
    /// `admin`, `region` or `store`; required.
    role: Option<Located<String>>,
    /// The region of a `region` user.
    region: Option<Located<String>>,
    /// The store of a `store` user.
    store: Option<Located<String>>,
    /// argon2id PHC string.
    password_hash: Option<Located<String>>,
    /// File holding a bearer token for API use.
    token_file: Option<Located<String>>,
}

/// `[hq]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHq {
    /// Address to bind.
    listen: Option<Located<String>>,
    /// Database folder.
    data_dir: Option<Located<String>>,
    /// Largest request body (a size string or an integer of bytes).
    max_body: Option<Located<toml::Value>>,
    /// Bytes of bodies held at once (a size string or an integer of bytes).
    body_budget: Option<Located<toml::Value>>,
    /// File holding the admin token.
    admin_token_file: Option<Located<String>>,
    /// How often alert rules run.
    evaluate_every: Option<DurationText>,
    /// The dashboard's public address.
    public_url: Option<Located<String>>,
    /// IANA time zone of store-local days.
    timezone: Option<Located<String>>,
}

/// One `[[store]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    /// Store code; required.
    code: Option<Located<String>>,
    /// File holding the store's token; required.
    token_file: Option<Located<String>>,
}

impl MergeLater for RawHqConfig {
    /// Applies a later file over this one: `[hq]` key by key, `[[store]]` appended.
    fn merge(&mut self, later: RawHqConfig) {
        if let Some(later_hq) = later.hq {
            match self.hq.as_mut() {
                None => self.hq = Some(later_hq),
                Some(hq) => {
                    let (mine, theirs) = (&mut hq.value, later_hq.value);
                    if theirs.listen.is_some() {
                        mine.listen = theirs.listen;
                    }
                    if theirs.data_dir.is_some() {
                        mine.data_dir = theirs.data_dir;
                    }
                    if theirs.max_body.is_some() {
                        mine.max_body = theirs.max_body;
                    }
                    if theirs.body_budget.is_some() {
                        mine.body_budget = theirs.body_budget;
                    }
                    if theirs.admin_token_file.is_some() {
                        mine.admin_token_file = theirs.admin_token_file;
                    }
                    if theirs.evaluate_every.is_some() {
                        mine.evaluate_every = theirs.evaluate_every;
                    }
                    if theirs.public_url.is_some() {
                        mine.public_url = theirs.public_url;
                    }
                    if theirs.timezone.is_some() {
                        mine.timezone = theirs.timezone;
                    }
                }
            }
        }
        if let Some(stores) = later.store {
            self.store.get_or_insert_with(Vec::new).extend(stores);
        }
        if let Some(regions) = later.region {
            self.region.get_or_insert_with(Vec::new).extend(regions);
        }
        if let Some(users) = later.user {
            self.user.get_or_insert_with(Vec::new).extend(users);
        }
        if let Some(notify) = later.notify {
            self.notify.get_or_insert_with(Vec::new).extend(notify);
        }
        if let Some(alerts) = later.alert {
            self.alert.get_or_insert_with(Vec::new).extend(alerts);
        }
        crate::config::source::append(&mut self.campaign, later.campaign);
        crate::config::source::append(&mut self.flow, later.flow);
        crate::config::source::merge_table(&mut self.answer_codes, later.answer_codes);
        crate::config::source::merge_table(&mut self.prompts, later.prompts);
        if let Some(later_storage) = later.storage {
            match self.storage.as_mut() {
                None => self.storage = Some(later_storage),
                Some(storage) => {
                    let (mine, theirs) = (&mut storage.value, later_storage.value);
                    if theirs.backend.is_some() {
                        mine.backend = theirs.backend;
                    }
                    if theirs.url_file.is_some() {
                        mine.url_file = theirs.url_file;
                    }
                }
            }
        }
    }
}

/// Loads, merges and validates the HQ configuration at `path` and its `config.d/*.toml`.
///
/// On failure the error lists every problem found, one `PATH:LINE:COL: message` per line.
pub fn load_config(path: &Path) -> Result<HqSettings, ConfigError> {
    let mut report = Report::default();
    let Some(Merged {
        raw: merged,
        base_dir,
        files,
        main_file,
    }) = read_merged::<RawHqConfig>(&mut report, path)
    else {
        return report.finish_failed();
    };
    let Some(raw) = merged else {
        return report.finish_failed();
    };
    // Validating a half-read configuration reports problems that are not really there.
    if report.problem_count() > 0 {
        return report.finish_failed();
    }
    match validate(&mut report, raw, main_file, &base_dir, files) {
        Some(settings) if report.problem_count() == 0 => Ok(settings),
        _ => report.finish_failed(),
    }
}

/// Stage 3: defaults, value checks, token files, cross-store checks.
fn validate(
    report: &mut Report,
    raw: RawHqConfig,
    main_file: usize,
    base_dir: &Path,
    files: Vec<PathBuf>,
) -> Option<HqSettings> {
    let hq = raw.hq.map(|hq| hq.value).unwrap_or_default();
    let listen = match &hq.listen {
        None => DEFAULT_LISTEN.parse().ok(),
        Some(listen) => match listen.value.trim().parse::<SocketAddr>() {
            Ok(address) => Some(address),
            Err(_) => {
                report.error(
                    &listen.span,
                    format!(
                        "'listen' in [hq] must be an address like \"127.0.0.1:7390\", found '{}'",
                        listen.value
                    ),
                );
                None
            }
        },
    };
    let data_dir = match &hq.data_dir {
        None => Some(PathBuf::from(DEFAULT_DATA_DIR)),
        Some(dir) => check::path(report, base_dir, dir, "'data_dir' in [hq]"),
    };
    let max_body = match &hq.max_body {
        None => Some(DEFAULT_MAX_BODY),
        Some(value) => check::size(report, value, "'max_body' in [hq]").and_then(|bytes| {
            if (1..=MAX_MAX_BODY).contains(&bytes) {
                Some(bytes)
            } else {
                report.error(
                    &value.span,
                    "'max_body' in [hq] must be at least 1 byte and at most 1GiB",
                );
                None
            }
        }),
    };
    let body_budget = match (&hq.body_budget, max_body) {
        (None, _) => Some(None),
        (Some(value), max_body) => {
            check::size(report, value, "'body_budget' in [hq]").and_then(|bytes| {
                let least = max_body.unwrap_or(0).saturating_mul(2);
                if (least..=MAX_BODY_BUDGET).contains(&bytes) {
                    Some(Some(bytes))
                } else {
                    report.error(
                        &value.span,
                        format!(
                            "'body_budget' in [hq] must be at least twice max_body ({least} \
                             bytes: one largest body as sent and decompressed) and at most 64GiB"
                        ),
                    );
                    None
                }
            })
        }
    };
    let timezone = match &hq.timezone {
        None => Some(DEFAULT_TIMEZONE),
        Some(name) => match name.value.trim().parse::<chrono_tz::Tz>() {
            Ok(zone) => Some(zone),
            Err(_) => {
                report.error(
                    &name.span,
                    format!(
                        "'timezone' in [hq] must be an IANA time zone like \"Asia/Shanghai\", \
                         found '{}'",
                        name.value
                    ),
                );
                None
            }
        },
    };
    // Ok(None) = not configured; Err(()) = configured but broken (already reported).
    let admin_token = match &hq.admin_token_file {
        None => Ok(None),
        Some(file) => read_token(report, base_dir, file, "'admin_token_file' in [hq]")
            .map(|token| Some((token, file.span.clone())))
            .ok_or(()),
    };

    let raw_stores = raw.store.unwrap_or_default();
    if raw_stores.is_empty() {
        report.error(
            &report.file_start(main_file),
            "no [[store]] configured: add one per store with 'code' and 'token_file'",
        );
    }
    let mut stores = Vec::new();
    let mut codes: HashMap<String, Span> = HashMap::new();
    // Token -> where it was first configured, to refuse a token that two parties share.
    let mut tokens: HashMap<String, (String, Span)> = HashMap::new();
    if let Ok(Some((token, span))) = &admin_token {
        tokens.insert(token.clone(), ("the admin token".to_string(), span.clone()));
    }
    for store in &raw_stores {
        let code = match &store.value.code {
            Some(code) => check::identifier(report, code, "'code' in [[store]]", STORE_EXTRA)
                .map(|text| (text, code.span.clone())),
            None => {
                report.error(
                    &store.span,
                    "missing 'code' in [[store]] (the store code, like \"WZ-LC-001\")",
                );
                None
            }
        };
        let token = match &store.value.token_file {
            Some(file) => read_token(report, base_dir, file, "'token_file' in [[store]]")
                .map(|token| (token, file.span.clone())),
            None => {
                report.error(
                    &store.span,
                    "missing 'token_file' in [[store]] (a file holding the store's bearer token)",
                );
                None
            }
        };
        if let Some((code, span)) = &code {
            if let Some(first) = codes.get(code) {
                let first = report.describe(first);
                report.error(
                    span,
                    format!("store '{code}' is configured twice (first at {first})"),
                );
            } else {
                codes.insert(code.clone(), span.clone());
            }
        }
        if let (Some((code, _)), Some((token, span))) = (&code, &token) {
            if let Some((owner, first)) = tokens.get(token) {
                let first = report.describe(first);
                report.error(
                    span,
                    format!(
                        "the token of store '{code}' is the same as {owner} (at {first}); \
                         every store needs its own token"
                    ),
                );
            } else {
                tokens.insert(token.clone(), (format!("store '{code}'"), span.clone()));
            }
        }
        if let (Some((code, _)), Some((token, _))) = (code, token) {
            stores.push(StoreSettings { code, token });
        }
    }
    // Each region's `notify` ids with their positions, checked against `[[notify]]` below.
    let region_targets: Vec<(String, Span)> = raw
        .region
        .iter()
        .flatten()
        .filter_map(|region| region.value.notify.as_ref())
        .flat_map(|list| list.value.iter())
        .map(|id| (id.value.clone(), id.span.clone()))
        .collect();
    let notify_ids: HashSet<String> = raw
        .notify
        .iter()
        .flatten()
        .filter_map(|target| target.value.id.as_ref())
        .map(|id| id.value.clone())
        .collect();
    let regions = validate_regions(report, raw.region.unwrap_or_default(), &codes);
    let users = validate_users(
        report,
        raw.user.unwrap_or_default(),
        &regions,
        &codes,
        base_dir,
        &mut tokens,
    );
    let notify = super::notify::validate_notify(report, raw.notify.unwrap_or_default(), base_dir);
    for (id, span) in &region_targets {
        if !notify_ids.contains(id) {
            report.error(
                span,
                format!("notify target '{id}' of a [[region]] is not a configured [[notify]] id"),
            );
        }
    }
    let alerts =
        super::alerts::rules::validate_alerts(report, raw.alert.unwrap_or_default(), &regions);
    let evaluate_every = match &hq.evaluate_every {
        None => Some(DEFAULT_EVALUATE_EVERY),
        Some(value) => check::duration_in(
            report,
            value,
            "'evaluate_every' in [hq]",
            Duration::from_secs(1)..=Duration::from_secs(24 * 3600),
        ),
    };
    let public_url = match &hq.public_url {
        None => Some(None),
        Some(url) => {
            let text = url.value.trim().trim_end_matches('/');
            match check::parse_address(text, &["http", "https"]) {
                Ok(_) => Some(Some(text.to_string())),
                Err(reason) => {
                    report.error(
                        &url.span,
                        format!(
                            "'public_url' in [hq] must be the dashboard's address, like \
                             \"https://hq.example.com\" ({reason})"
                        ),
                    );
                    None
                }
            }
        }
    };
    let fleet = super::fleet::config::validate(
        report,
        super::fleet::config::RawChain {
            campaign: raw.campaign,
            flow: raw.flow,
            answer_codes: raw.answer_codes,
            prompts: raw.prompts,
        },
        &codes,
        &regions,
    );
    let storage = validate_storage(report, base_dir, raw.storage.map(|storage| storage.value));
    Some(HqSettings {
        storage: storage?,
        listen: listen?,
        data_dir: data_dir?,
        max_body: max_body?,
        body_budget: body_budget?,
        admin_token: admin_token.ok()?.map(|(token, _)| token),
        timezone: timezone?,
        stores,
        regions,
        users,
        notify,
        alerts,
        evaluate_every: evaluate_every?,
        public_url: public_url?,
        files,
        fleet: fleet?,
    })
}

/// `[storage]`: the backend, and for `postgres` the URL from `url_file`.
fn validate_storage(
    report: &mut Report,
    base_dir: &Path,
    raw: Option<RawStorage>,
) -> Option<Storage> {
    let raw = raw.unwrap_or_default();
    let backend = raw.backend.as_ref().map(|backend| backend.value.as_str());
    match backend {
        None | Some("sled") => {
            if let Some(url_file) = &raw.url_file {
                report.error(
                    &url_file.span,
                    "'url_file' in [storage] is for backend = \"postgres\" only",
                );
                return None;
            }
            Some(Storage::Sled)
        }
        Some("postgres") => {
            let Some(file) = &raw.url_file else {
                report.error(
                    &raw.backend.as_ref()?.span,
                    "backend = \"postgres\" in [storage] needs 'url_file', a file holding \
                     postgres://user:password@host:5432/database",
                );
                return None;
            };
            let path = check::path(report, base_dir, file, "'url_file' in [storage]")?;
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(error) => {
                    report.error(
                        &file.span,
                        format!("cannot read url_file '{}': {error}", path.display()),
                    );
                    return None;
                }
            };
            let url = text.trim().to_string();
            if let Err(error) = url.parse::<tokio_postgres::Config>() {
                report.error(
                    &file.span,
                    format!(
                        "url_file '{}' must hold one PostgreSQL URL like \
                         postgres://user:password@host:5432/database: {error}",
                        path.display()
                    ),
                );
                return None;
            }
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                report.error(
                    &file.span,
                    format!(
                        "url_file '{}' must hold one URL starting with postgres:// or \
                         postgresql://",
                        path.display()
                    ),
                );
                return None;
            }
            Some(Storage::Postgres {
                url,
                url_file: path,
            })
        }
        Some(other) => {
            report.error(
                &raw.backend.as_ref()?.span,
                format!("'backend' in [storage] must be \"sled\" or \"postgres\", found '{other}'"),
            );
            None
        }
    }
}

/// Characters besides ASCII letters and digits allowed in a region id.
const REGION_EXTRA: &[char] = &['-', '_'];
/// Characters besides ASCII letters and digits allowed in a user name.
const USER_EXTRA: &[char] = &['-', '_', '.', '@'];

/// `[[region]]`: ids unique, every store a configured `[[store]]` and in one region at most.
fn validate_regions(
    report: &mut Report,
    raw: Vec<Located<RawRegion>>,
    codes: &HashMap<String, Span>,
) -> Vec<RegionSettings> {
    let mut regions = Vec::new();
    let mut ids: HashMap<String, Span> = HashMap::new();
    // Store code -> (region id, where it was listed).
    let mut owner: HashMap<String, (String, Span)> = HashMap::new();
    for region in raw {
        let table = region.span.clone();
        let region = region.value;
        let id = match &region.id {
            Some(id) => check::identifier(report, id, "'id' in [[region]]", REGION_EXTRA),
            None => {
                report.error(&table, "missing 'id' in [[region]] (like \"east-wz\")");
                None
            }
        };
        let mut twice = false;
        if let (Some(id), Some(written)) = (&id, &region.id) {
            if let Some(first) = ids.get(id) {
                twice = true;
                let first = report.describe(first);
                report.error(
                    &written.span,
                    format!("region '{id}' is configured twice (first at {first})"),
                );
            } else {
                ids.insert(id.clone(), written.span.clone());
            }
        }
        let label = id.clone().unwrap_or_else(|| "?".to_string());
        let mut stores = Vec::new();
        match &region.stores {
            None => report.error(
                &table,
                format!("missing 'stores' in [[region]] '{label}' (a list of store codes)"),
            ),
            Some(list) => {
                for code in &list.value {
                    if !codes.contains_key(&code.value) {
                        report.error(
                            &code.span,
                            format!(
                                "store '{}' of region '{label}' is not configured as a [[store]]",
                                code.value
                            ),
                        );
                        continue;
                    }
                    if let Some((other, first)) = owner.get(&code.value) {
                        let first = report.describe(first);
                        report.error(
                            &code.span,
                            format!(
                                "store '{}' is in two regions: '{label}' and '{other}' (at \
                                 {first}); a store belongs to one region",
                                code.value
                            ),
                        );
                        continue;
                    }
                    owner.insert(code.value.clone(), (label.clone(), code.span.clone()));
                    stores.push(code.value.clone());
                }
            }
        }
        let notify: Vec<String> = region
            .notify
            .map(|list| list.value.into_iter().map(|id| id.value).collect())
            .unwrap_or_default();
        if let Some(id) = id.filter(|_| !twice) {
            let name = region
                .name
                .map(|name| name.value)
                .filter(|name| !name.trim().is_empty())
                .unwrap_or_else(|| id.clone());
            regions.push(RegionSettings {
                id,
                name,
                stores,
                notify,
            });
        }
    }
    regions
}

/// `[[user]]`: names unique, the role's scope given and known, the hash an argon2id one, a
/// token of its own.
fn validate_users(
    report: &mut Report,
    raw: Vec<Located<RawUser>>,
    regions: &[RegionSettings],
    codes: &HashMap<String, Span>,
    base_dir: &Path,
    tokens: &mut HashMap<String, (String, Span)>,
) -> Vec<UserSettings> {
    let mut users = Vec::new();
    let mut names: HashMap<String, Span> = HashMap::new();
    for user in raw {
        let table = user.span.clone();
        let user = user.value;
        let name = match &user.name {
            Some(name) => check::identifier(report, name, "'name' in [[user]]", USER_EXTRA),
            None => {
                report.error(&table, "missing 'name' in [[user]] (the login name)");
                None
            }
        };
        if let (Some(name), Some(written)) = (&name, &user.name) {
            if let Some(first) = names.get(name) {
                let first = report.describe(first);
                report.error(
                    &written.span,
                    format!("user '{name}' is configured twice (first at {first})"),
                );
            } else {
                names.insert(name.clone(), written.span.clone());
            }
        }
        let label = name.clone().unwrap_or_else(|| "?".to_string());
        let role = validate_role(report, &user, &table, &label, regions, codes);
        let password_hash = match &user.password_hash {
            None => Some(None),
            Some(hash) => match super::access::check_hash(&hash.value) {
                Ok(()) => Some(Some(hash.value.trim().to_string())),
                Err(reason) => {
                    report.error(
                        &hash.span,
                        format!(
                            "'password_hash' of user '{label}' is not an argon2id hash ({reason}); \
                             make one with `posgw hq passwd`"
                        ),
                    );
                    None
                }
            },
        };
        let token = match &user.token_file {
            None => Some(None),
            Some(file) => match read_token(report, base_dir, file, "'token_file' in [[user]]") {
                Some(token) => {
                    if let Some((other, first)) = tokens.get(&token) {
                        let first = report.describe(first);
                        report.error(
                            &file.span,
                            format!(
                                "the token of user '{label}' is the same as {other} (at \
                                     {first}); every user needs its own token"
                            ),
                        );
                        None
                    } else {
                        tokens.insert(
                            token.clone(),
                            (format!("user '{label}'"), file.span.clone()),
                        );
                        Some(Some(token))
                    }
                }
                None => None,
            },
        };
        if user.password_hash.is_none() && user.token_file.is_none() {
            report.error(
                &table,
                format!(
                    "user '{label}' has neither 'password_hash' nor 'token_file', so cannot sign in"
                ),
            );
        }
        if let (Some(name), Some(role), Some(password_hash), Some(token)) =
            (name, role, password_hash, token)
        {
            users.push(UserSettings {
                name,
                role,
                password_hash,
                token,
            });
        }
    }
    users
}

/// A user's `role` and the `region` or `store` it needs (and only that one).
fn validate_role(
    report: &mut Report,
    user: &RawUser,
    table: &Span,
    label: &str,
    regions: &[RegionSettings],
    codes: &HashMap<String, Span>,
) -> Option<Role> {
    let Some(role) = &user.role else {
        report.error(
            table,
            format!("missing 'role' in [[user]] '{label}' (admin, region or store)"),
        );
        return None;
    };
    let forbid = |report: &mut Report, key: &Option<Located<String>>, what: &str| {
        if let Some(key) = key {
            report.error(
                &key.span,
                format!(
                    "user '{label}' has role '{}', which takes no '{what}'",
                    role.value
                ),
            );
        }
    };
    match role.value.as_str() {
        "admin" => {
            forbid(report, &user.region, "region");
            forbid(report, &user.store, "store");
            Some(Role::Admin)
        }
        // "regional" is accepted as a synonym: the first drafts of the design used it.
        "region" | "regional" => {
            forbid(report, &user.store, "store");
            let Some(region) = &user.region else {
                report.error(
                    &role.span,
                    format!("user '{label}' has role 'region' but no 'region' (a [[region]] id)"),
                );
                return None;
            };
            if regions.iter().any(|known| known.id == region.value) {
                Some(Role::Region(region.value.clone()))
            } else {
                let known: Vec<&str> = regions.iter().map(|known| known.id.as_str()).collect();
                report.error(
                    &region.span,
                    format!(
                        "user '{label}' names region '{}', which is not a [[region]] (known: {})",
                        region.value,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
                None
            }
        }
        "store" => {
            forbid(report, &user.region, "region");
            let Some(store) = &user.store else {
                report.error(
                    &role.span,
                    format!("user '{label}' has role 'store' but no 'store' (a [[store]] code)"),
                );
                return None;
            };
            if codes.contains_key(&store.value) {
                Some(Role::Store(store.value.clone()))
            } else {
                report.error(
                    &store.span,
                    format!(
                        "user '{label}' names store '{}', which is not configured as a [[store]]",
                        store.value
                    ),
                );
                None
            }
        }
        other => {
            report.error(
                &role.span,
                format!("'role' of user '{label}' must be admin, region or store, found '{other}'"),
            );
            None
        }
    }
}

/// Reads a token file named by `value`; problems are reported at the key naming the file.
fn read_token(
    report: &mut Report,
    base_dir: &Path,
    value: &Located<String>,
    what: &str,
) -> Option<String> {
    let path = check::path(report, base_dir, value, what)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            report.error(
                &value.span,
                format!("cannot read token file '{}': {error}", path.display()),
            );
            return None;
        }
    };
    let token = text.trim();
    if token.is_empty() {
        report.error(
            &value.span,
            format!("token file '{}' is empty", path.display()),
        );
        return None;
    }
    // A token travels as `Authorization: Bearer TOKEN`; whitespace or control characters in it
    // could never match what a client sends.
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        report.error(
            &value.span,
            format!(
                "token file '{}' holds more than one word; a token is one line without spaces",
                path.display()
            ),
        );
        return None;
    }
    Some(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config folder with token files `a.token` ("tok-a"), `b.token` ("tok-b"),
    /// `admin.token` ("tok-admin") and `empty.token`.
    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in [
            ("a.token", "tok-a\n"),
            ("b.token", "  tok-b  "),
            ("admin.token", "tok-admin"),
            ("empty.token", " \n"),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write token");
        }
        dir
    }

    fn load_text(dir: &Path, text: &str) -> Result<HqSettings, String> {
        let path = dir.join("hq.toml");
        std::fs::write(&path, text).expect("write config");
        load_config(&path).map_err(|error| {
            // Paths differ per run; tests compare what follows the file name.
            error.to_string().replace(&dir.display().to_string(), "DIR")
        })
    }

    #[test]
    fn storage_is_sled_by_default_or_postgres_with_a_url_file() {
        let dir = folder();
        let store = "[[store]]\ncode = \"S1\"\ntoken_file = \"a.token\"\n";
        let settings = load_text(dir.path(), store).expect("loads");
        assert_eq!(settings.storage, Storage::Sled);
        std::fs::write(
            dir.path().join("db.url"),
            "postgres://posgw:secret@db.example.com:5432/posgw?sslmode=require\n",
        )
        .expect("write url");
        let settings = load_text(
            dir.path(),
            &format!("[storage]\nbackend = \"postgres\"\nurl_file = \"db.url\"\n{store}"),
        )
        .expect("loads");
        assert_eq!(
            settings.storage,
            Storage::Postgres {
                url: "postgres://posgw:secret@db.example.com:5432/posgw?sslmode=require"
                    .to_string(),
                url_file: dir.path().join("db.url"),
            }
        );
        assert!(
            !format!("{:?}", settings.storage).contains("secret"),
            "the URL's password is never printed"
        );
        std::fs::write(dir.path().join("bad.url"), "mysql://x@y/z").expect("write url");
        for (storage, expected) in [
            (
                "backend = \"postgres\"",
                "DIR/hq.toml:2:11: backend = \"postgres\" in [storage] needs 'url_file'",
            ),
            (
                "backend = \"mysql\"",
                "DIR/hq.toml:2:11: 'backend' in [storage] must be \"sled\" or \"postgres\", \
                 found 'mysql'",
            ),
            (
                "url_file = \"db.url\"",
                "DIR/hq.toml:2:12: 'url_file' in [storage] is for backend = \"postgres\" only",
            ),
            (
                "backend = \"postgres\"\nurl_file = \"missing.url\"",
                "DIR/hq.toml:3:12: cannot read url_file",
            ),
            (
                "backend = \"postgres\"\nurl_file = \"bad.url\"",
                "DIR/hq.toml:3:12: url_file 'DIR/bad.url' must hold one",
            ),
        ] {
            let error = load_text(dir.path(), &format!("[storage]\n{storage}\n{store}"))
                .expect_err(storage);
            assert!(error.starts_with(expected), "{storage}: {error}");
        }
    }

    #[test]
    fn loads_a_full_config_with_relative_paths() {
        let dir = folder();
        let settings = load_text(
            dir.path(),
            r#"
[hq]
listen = "0.0.0.0:8000"
data_dir = "data"
max_body = "1MiB"
admin_token_file = "admin.token"

[[store]]
code = "WZ-LC-001"
token_file = "a.token"

[[store]]
code = "WZ-LC-002"
token_file = "b.token"
"#,
        )
        .expect("loads");
        assert_eq!(settings.listen, "0.0.0.0:8000".parse().expect("addr"));
        assert_eq!(settings.data_dir, dir.path().join("data"));
        assert_eq!(settings.max_body, 1024 * 1024);
        assert_eq!(settings.admin_token.as_deref(), Some("tok-admin"));
        assert_eq!(
            settings.stores,
            [
                StoreSettings {
                    code: "WZ-LC-001".into(),
                    token: "tok-a".into()
                },
                StoreSettings {
                    code: "WZ-LC-002".into(),
                    token: "tok-b".into()
                },
            ]
        );
    }

    #[test]
    fn defaults_apply() {
        let dir = folder();
        let settings = load_text(
            dir.path(),
            "[[store]]\ncode = \"S1\"\ntoken_file = \"a.token\"\n",
        )
        .expect("loads");
        assert_eq!(settings.listen, DEFAULT_LISTEN.parse().expect("addr"));
        assert_eq!(settings.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(settings.max_body, DEFAULT_MAX_BODY);
        assert_eq!(settings.body_budget, None);
        assert_eq!(settings.effective_body_budget(), 4 * DEFAULT_MAX_BODY);
        assert_eq!(settings.admin_token, None);
        assert_eq!(settings.timezone, chrono_tz::Asia::Shanghai);
    }

    #[test]
    fn the_timezone_is_an_iana_name() {
        let dir = folder();
        let store = "[[store]]\ncode = \"S1\"\ntoken_file = \"a.token\"\n";
        let settings = load_text(
            dir.path(),
            &format!("[hq]\ntimezone = \"Europe/Berlin\"\n{store}"),
        )
        .expect("loads");
        assert_eq!(settings.timezone, chrono_tz::Europe::Berlin);
        let error = load_text(
            dir.path(),
            &format!("[hq]\ntimezone = \"Asia/Wenzhou\"\n{store}"),
        )
        .expect_err("unknown zone");
        assert_eq!(
            error,
            "DIR/hq.toml:2:12: 'timezone' in [hq] must be an IANA time zone like \
             \"Asia/Shanghai\", found 'Asia/Wenzhou'"
        );
    }

    #[test]
    fn the_body_budget_holds_at_least_one_largest_body_twice() {
        let dir = folder();
        let store = "[[store]]\ncode = \"S1\"\ntoken_file = \"a.token\"\n";
        let settings = load_text(
            dir.path(),
            &format!("[hq]\nmax_body = \"1MiB\"\nbody_budget = \"2MiB\"\n{store}"),
        )
        .expect("loads");
        assert_eq!(settings.body_budget, Some(2 * 1024 * 1024));
        assert_eq!(settings.effective_body_budget(), 2 * 1024 * 1024);
        let error = load_text(
            dir.path(),
            &format!("[hq]\nmax_body = \"1MiB\"\nbody_budget = \"1MiB\"\n{store}"),
        )
        .expect_err("too small");
        assert!(
            error.starts_with("DIR/hq.toml:3:15: 'body_budget' in [hq] must be at least twice"),
            "{error}"
        );
    }

    #[test]
    fn unknown_key_has_position_and_suggestion() {
        let dir = folder();
        let error = load_text(dir.path(), "[hq]\nmax_bdy = \"1MiB\"\n").expect_err("fails");
        assert_eq!(
            error,
            "DIR/hq.toml:2:1: unknown key 'max_bdy' in [hq], did you mean 'max_body'?"
        );
    }

    #[test]
    fn every_bad_value_is_reported_with_its_position() {
        let dir = folder();
        let error = load_text(
            dir.path(),
            r#"[hq]
listen = "localhost"
max_body = "lots"
admin_token_file = "missing.token"

[[store]]
code = "WZ LC"
token_file = "empty.token"

[[store]]
token_file = "a.token"
"#,
        )
        .expect_err("fails");
        let lines: Vec<&str> = error.lines().collect();
        assert_eq!(lines.len(), 6, "{error}");
        assert!(lines[0].starts_with("DIR/hq.toml:2:10: 'listen' in [hq] must be an address"));
        assert!(lines[1].starts_with("DIR/hq.toml:3:12: 'max_body' in [hq] must be a size"));
        assert!(
            lines[2].starts_with("DIR/hq.toml:4:20: cannot read token file 'DIR/missing.token'"),
            "{}",
            lines[2]
        );
        assert!(lines[3].starts_with("DIR/hq.toml:7:8: 'code' in [[store]] must be 1 to 64"));
        assert_eq!(
            lines[4],
            "DIR/hq.toml:8:14: token file 'DIR/empty.token' is empty"
        );
        assert!(
            lines[5].starts_with("DIR/hq.toml:10:1: missing 'code' in [[store]]"),
            "{}",
            lines[5]
        );
    }

    #[test]
    fn duplicate_codes_and_tokens_are_errors() {
        let dir = folder();
        let error = load_text(
            dir.path(),
            r#"[hq]
admin_token_file = "admin.token"
[[store]]
code = "S1"
token_file = "a.token"
[[store]]
code = "S1"
token_file = "b.token"
[[store]]
code = "S2"
token_file = "a.token"
[[store]]
code = "S3"
token_file = "admin.token"
"#,
        )
        .expect_err("fails");
        assert_eq!(
            error,
            "DIR/hq.toml:7:8: store 'S1' is configured twice (first at DIR/hq.toml:4:8)\n\
             DIR/hq.toml:11:14: the token of store 'S2' is the same as store 'S1' (at DIR/hq.toml:5:14); every store needs its own token\n\
             DIR/hq.toml:14:14: the token of store 'S3' is the same as the admin token (at DIR/hq.toml:2:20); every store needs its own token"
        );
    }

    #[test]
    fn no_store_is_an_error() {
        let dir = folder();
        let error = load_text(dir.path(), "[hq]\n").expect_err("fails");
        assert!(
            error.starts_with("DIR/hq.toml:1:1: no [[store]] configured"),
            "{error}"
        );
    }

    #[test]
    fn drop_ins_merge_hq_and_append_stores() {
        let dir = folder();
        std::fs::create_dir(dir.path().join("config.d")).expect("mkdir");
        std::fs::write(
            dir.path().join("config.d/10-more.toml"),
            "[hq]\nmax_body = 4096\n[[store]]\ncode = \"S2\"\ntoken_file = \"b.token\"\n",
        )
        .expect("write drop-in");
        let settings = load_text(
            dir.path(),
            "[hq]\nlisten = \"127.0.0.1:1\"\nmax_body = \"1MiB\"\n[[store]]\ncode = \"S1\"\ntoken_file = \"a.token\"\n",
        )
        .expect("loads");
        assert_eq!(settings.max_body, 4096);
        assert_eq!(settings.listen.port(), 1);
        let codes: Vec<&str> = settings.stores.iter().map(|s| s.code.as_str()).collect();
        assert_eq!(codes, ["S1", "S2"]);
        assert_eq!(settings.files.len(), 2);
    }

    /// Three stores, two regions, and a hash of "pw".
    fn regions_base() -> (tempfile::TempDir, String) {
        let dir = folder();
        std::fs::write(dir.path().join("c.token"), "tok-c").expect("write token");
        let hash = crate::hq::access::hash_password("pw").expect("hash");
        let text = r#"[hq]
admin_token_file = "admin.token"
[[store]]
code = "S1"
token_file = "a.token"
[[store]]
code = "S2"
token_file = "b.token"
[[store]]
code = "S3"
token_file = "c.token"
"#;
        (dir, format!("{text}HASH={hash}\n"))
    }

    #[test]
    fn a_region_naming_an_unknown_notify_target_is_an_error() {
        let (dir, base) = regions_base();
        let (text, _) = base.split_once("HASH=").expect("hash");
        let error = load_text(
            dir.path(),
            &format!("{text}\n[[region]]\nid = \"r\"\nstores = [\"S1\"]\nnotify = [\"nobody\"]\n"),
        )
        .expect_err("refused");
        assert!(
            error.contains("notify target 'nobody' of a [[region]] is not a configured [[notify]]"),
            "{error}"
        );
    }

    #[test]
    fn regions_and_users_load() {
        let (dir, base) = regions_base();
        let (text, hash) = base.split_once("HASH=").expect("hash");
        let hash = hash.trim();
        std::fs::write(dir.path().join("li.token"), "tok-li").expect("write token");
        std::fs::write(
            dir.path().join("wz.url"),
            "https://qyapi.weixin.qq.com/x?key=k",
        )
        .expect("write url");
        let settings = load_text(
            dir.path(),
            &format!(
                r#"{text}
[[notify]]
id = "east-wz-supervisors"
kind = "wecom"
url_file = "wz.url"
[[region]]
id = "east-wz"
name = "温州片区"
stores = ["S1", "S2"]
notify = ["east-wz-supervisors"]
[[region]]
id = "north"
stores = ["S3"]
[[user]]
name = "boss"
role = "admin"
password_hash = "{hash}"
[[user]]
name = "li.min"
role = "region"
region = "east-wz"
password_hash = "{hash}"
token_file = "li.token"
[[user]]
name = "wang"
role = "store"
store = "S3"
password_hash = "{hash}"
"#
            ),
        )
        .expect("loads");
        assert_eq!(settings.regions.len(), 2);
        assert_eq!(settings.regions[0].name, "温州片区");
        assert_eq!(settings.regions[0].stores, ["S1", "S2"]);
        assert_eq!(settings.regions[0].notify, ["east-wz-supervisors"]);
        assert_eq!(settings.regions[1].name, "north");
        let roles: Vec<&Role> = settings.users.iter().map(|user| &user.role).collect();
        assert_eq!(
            roles,
            [
                &Role::Admin,
                &Role::Region("east-wz".into()),
                &Role::Store("S3".into())
            ]
        );
        assert_eq!(settings.users[1].token.as_deref(), Some("tok-li"));
        assert_eq!(settings.users[0].password_hash.as_deref(), Some(hash));
    }

    #[test]
    fn region_and_user_mistakes_are_positioned_errors() {
        let (dir, base) = regions_base();
        let (text, hash) = base.split_once("HASH=").expect("hash");
        let hash = hash.trim();
        let error = load_text(
            dir.path(),
            &format!(
                r#"{text}[[region]]
id = "r1"
stores = ["S1", "S9"]
[[region]]
id = "r2"
stores = ["S1", "S2"]
[[region]]
id = "r1"
stores = []
[[user]]
name = "a"
role = "region"
region = "nowhere"
password_hash = "{hash}"
[[user]]
name = "a"
role = "store"
region = "r1"
store = "S1"
password_hash = "{hash}"
[[user]]
name = "b"
role = "boss"
password_hash = "$argon2id$v=19$..."
[[user]]
name = "c"
role = "store"
token_file = "b.token"
"#
            ),
        )
        .expect_err("fails");
        let lines: Vec<&str> = error.lines().collect();
        let expected = [
            "DIR/hq.toml:14:17: store 'S9' of region 'r1' is not configured as a [[store]]",
            "DIR/hq.toml:17:11: store 'S1' is in two regions: 'r2' and 'r1' (at DIR/hq.toml:14:11); a store belongs to one region",
            "DIR/hq.toml:19:6: region 'r1' is configured twice (first at DIR/hq.toml:13:6)",
            "DIR/hq.toml:24:10: user 'a' names region 'nowhere', which is not a [[region]] (known: r1, r2)",
            "DIR/hq.toml:27:8: user 'a' is configured twice (first at DIR/hq.toml:22:8)",
            "DIR/hq.toml:29:10: user 'a' has role 'store', which takes no 'region'",
            "DIR/hq.toml:34:8: 'role' of user 'b' must be admin, region or store, found 'boss'",
            "DIR/hq.toml:35:17: 'password_hash' of user 'b' is not an argon2id hash",
            "DIR/hq.toml:38:8: user 'c' has role 'store' but no 'store' (a [[store]] code)",
            "DIR/hq.toml:39:14: the token of user 'c' is the same as store 'S2'",
        ];
        assert_eq!(lines.len(), expected.len(), "{error}");
        for (line, expected) in lines.iter().zip(expected) {
            assert!(line.starts_with(expected), "{line}\nexpected {expected}");
        }
    }

    #[test]
    fn shipped_example_parses() {
        // The shipped example names token files under /etc; only its syntax and keys are
        // checked here, by parsing it into the raw structs.
        let text = include_str!("../../config/hq.toml");
        let mut report = Report::default();
        let file = report.add_file(PathBuf::from("config/hq.toml"), text.to_string());
        let raw = report.parse::<RawHqConfig>(file);
        assert_eq!(report.problem_count(), 0);
        let raw = raw.expect("parses");
        assert!(raw.hq.is_some());
        assert!(!raw.store.unwrap_or_default().is_empty());
    }
}
