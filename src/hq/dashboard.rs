//! The HQ dashboard (`GET /`, docs/hq-protocol.md) and the one endpoint it needs besides
//! `/v1/stats` and `/v1/records`: `GET /v1/trace`, a receipt traced back to its scans and to
//! its consultation.
//!
//! # The page
//!
//! Plain HTML, CSS and JavaScript built into the binary (`assets/`, served at `/` and
//! `/assets/NAME`), no build step, no framework and nothing fetched from elsewhere: charts are
//! CSS bars and inline SVG. The script is a set of ES modules: `dashboard.js` (polling,
//! navigation, the overview and the traceability view) imports `common.js` (DOM builders,
//! formats, the HTTP calls), `flows.js` (step-completeness tables), `manage.js` (the
//! management views) and `fleet.js` (the fleet view and the campaign and flow editor). The page itself is public (it holds no data); every figure comes from
//! the read endpoints, called with the session cookie of `/login` or with `Authorization:
//! Bearer TOKEN`. A token comes from `?token=…` (kept in `sessionStorage`, then removed from
//! the address bar with `history.replaceState`) or from a small form; a 401 says so and shows
//! the form again. `Referrer-Policy: no-referrer` keeps a token still in the address bar out of
//! any referrer, and a `Content-Security-Policy` of `'self'` only means nothing in a record can
//! run as script (the page also only ever inserts record text with `textContent`).
//!
//! The address's hash picks the view (`#overview`, `#trace`, `#stores`, `#store/CODE`,
//! `#regions`, `#regions/ID`, `#alerts`, `#alerts/ID`, `#fleet`, `#editor`), so a link lands where it points: the
//! robot message's `/#alerts/ID` opened without a session goes to `/login#alerts/ID`, and the
//! login page comes back to the hash. `GET /v1/me` tells the role: an admin and a region user
//! have the stores, regions and fleet views, an admin the editor too (anyone else opening
//! `#editor` is told it is not allowed); a store's manager lands on their store's page.
//!
//! The page polls every 2 s, one request after the other (never overlapping):
//! - `GET /v1/stats`: per campaign, over all stores or the store picked, prompts opened,
//!   answered, skipped and timed out, completeness (answered ÷ opened) against the 85 % goal,
//!   answer shares and the median answer latency, plus a row per store; per consultation flow,
//!   consultations by outcome, each step's completeness (done ÷ consultations) with its done,
//!   skipped and missing counts and skip reasons, held scans by how they were released, and a
//!   table of step completeness per store (over all stores) or per clerk (in the store picked);
//! - `GET /v1/records?kind=attribution&after=A` and `…kind=sale&after=B`, incrementally: `A`
//!   and `B` are the `posgw-next-after` of the previous page, so each poll reads only what
//!   arrived since. The first poll starts 200,000 records before the newest (`hq_seq` of the
//!   stats) rather than at 0, so opening the page costs the same on a large HQ. Attributions
//!   feed the list of the 50 latest (time, store, station, product, answer or outcome, clerk,
//!   receipt), sales the list of the 100 latest receipts of the traceability view;
//! - every fifth poll (and at once after a filter, a period or an action), `GET
//!   /v1/yardsticks` and `GET /v1/alerts` for the management views (`manage.js`): the header's
//!   three yardsticks (过程数据完整率, 预警响应及时率, 销售行为可追溯率) of the chain, the user's
//!   region or store, each against its goal and industry baseline; the stores table (sortable,
//!   a sparkline of daily completeness per store, built off-document and put in at once, so
//!   127 stores of 90 days cost one layout); a store's page (its yardsticks, day trend, step
//!   completeness by step and clerk from `/v1/stats`, its open alerts); the regions' heat map;
//!   and the alerts, acknowledged (`POST /v1/alerts/{id}/ack`) and resolved (`…/resolve`)
//!   from the page. A region user's page draws only its own region's stores, clerks and
//!   alerts, and the other regions as the heat map's aggregates;
//! - while the fleet view or the editor is shown, `GET /v1/fleet` (a row per store, offline
//!   first: online, last seen, config version applied against HQ's, devices down, backlog)
//!   and, in the editor, `GET /v1/fleet/editor` (every campaign and flow with its source and
//!   targets, the version history); its forms `PUT` and `DELETE` `/v1/fleet/campaigns/{id}`
//!   and `/v1/fleet/flows/{id}` and show a 422's errors and a 409 as the server wrote them.
//!
//! Polling rather than SSE: the receiver has no push channel, and a 2 s poll of in-memory
//! figures plus two empty pages costs next to nothing.
//!
//! # `GET /v1/trace?receipt=R[&store=S][&hq_seq=N]` (admin token)
//!
//! ```json
//! {"receipt": "R-1001",
//!  "sale": SALE_RECORD,                      // as in /v1/records, with "hq_seq"
//!  "matches": [{"hq_seq": 57, "store": "WZ-LC-001", "ts": "…"}],   // every sale found with
//!                                            //   this receipt, newest first (sale = the first)
//!  "lines": [{"line": SALE_LINE,             // data.lines[i] of the sale
//!             "attribution": RECORD | null,  // the attribution whose prompt = line.prompt
//!             "scan": RECORD | null}],       // the scan whose id = attribution.data.scan
//!  "consultation": null | {                  // the consultation the sale belongs to
//!     "id": "k7q2m9xw",                      //   the sale's data.consultation (or the record's
//!                                            //   data.id when found by receipt)
//!     "record": RECORD | null,               //   the consultation record, with its steps
//!     "scans": [{"id": "…", "scan": RECORD | null}]},   // its data.scans, in order
//!  "complete": true}                         // false: a search window ran out before every
//!                                            //   prompt, scan and consultation was found
//! ```
//! 404 when no sale has that receipt (in that store), 400 for a bad query. `consultation` is
//! null when the sale names none (no `data.consultation`) and no consultation record of the
//! sale's store in the window has the sale's receipt as its `data.receipt`.
//!
//! HQ keeps no index by receipt, prompt or record id, so the trace is a bounded linear scan
//! over stored records, which is fine for a reference receiver (an analyst's click, not a hot
//! path) and keeps the write path free of extra indexes:
//! 1. the sale: with `hq_seq` (the page passes the one of its receipt list) that one record is
//!    read; otherwise the sales of the latest [`RECEIPT_SEARCH_RECORDS`] records (of `store`
//!    when given, through the store index) are searched and the newest match wins;
//! 2. the attributions of the sale's store within [`LINK_WINDOW_RECORDS`] records before and
//!    after the sale (a prompt resolves shortly before or after its sale, and one gateway's
//!    records arrive in journal order), stopping once every prompt of the sale is found;
//! 3. the consultation, in the same window: the record whose `data.id` is the sale's
//!    `data.consultation`; for a sale without one, the first whose `data.receipt` is the sale's
//!    receipt, looked for only when the store has consultation records at all (its totals by
//!    kind say), so tracing plain sales costs nothing more. A consultation closes once its
//!    sale is linked and its steps settled, or when the clerk closes it, so it is normally near
//!    its sale; one left open for hours may fall outside the window (`complete: false`);
//! 4. the scans named by those attributions and by the consultation's `data.scans`, in the
//!    same window, in one pass.
//!
//! Lines are cheaply pre-filtered by substring before being parsed, so a pass costs about a
//! read of its window. A request examines at most the search window plus the link window three
//! times (3.2 million records), and each pass may run past its window by one read of the store
//! (at most 1,000,000 records examined, as for `/v1/records`).

use std::collections::{HashMap, HashSet};

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::access::Scope;
use super::storage::StoreHandle;
use super::store::RecordQuery;

const PAGE_HTML: &str = include_str!("assets/dashboard.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");

/// The files under `/assets/`: name, body, content type. The page's script is a module
/// (`dashboard.js`) importing the others by relative path.
const ASSETS: [(&str, &str, &str); 7] = [
    (
        "dashboard.js",
        include_str!("assets/dashboard.js"),
        JAVASCRIPT,
    ),
    ("common.js", include_str!("assets/common.js"), JAVASCRIPT),
    ("flows.js", include_str!("assets/flows.js"), JAVASCRIPT),
    ("manage.js", include_str!("assets/manage.js"), JAVASCRIPT),
    ("fleet.js", include_str!("assets/fleet.js"), JAVASCRIPT),
    ("login.js", include_str!("assets/login.js"), JAVASCRIPT),
    ("dashboard.css", include_str!("assets/dashboard.css"), CSS),
];
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The page may load only its own assets and talk only to this receiver.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A receipt number is searched among this many of the latest records.
pub(super) const RECEIPT_SEARCH_RECORDS: u64 = 2_000_000;
/// Attributions and scans of a sale are looked for this many records either side of it.
pub(super) const LINK_WINDOW_RECORDS: u64 = 200_000;
/// Records per read while searching (the reader's `limit`).
const PAGE_RECORDS: usize = 10_000;

/// `GET /`: the dashboard page.
pub(super) async fn page() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(PAGE_HTML),
    )
        .into_response()
}

/// `GET /login`: the login page (its script posts to `/v1/login`).
pub(super) async fn login_page() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(LOGIN_HTML),
    )
        .into_response()
}

/// `GET /assets/{file}`: the page's scripts and style sheet.
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    let Some((_, body, content_type)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    // no-cache: the browser revalidates, so an upgraded receiver serves the new page at once.
    (
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        *body,
    )
        .into_response()
}

/// `GET /v1/trace`, once the caller has shown the admin token (checked by the server).
pub(super) async fn trace(store: &StoreHandle, uri: &Uri, scope: &Scope) -> Response {
    let mut query = match TraceQuery::from_uri(uri) {
        Ok(query) => query,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match (&query.store, scope) {
        (Some(code), scope) if !scope.sees_store(code) => {
            return error(
                StatusCode::FORBIDDEN,
                format!("store '{code}' is outside what this user may see"),
            )
        }
        (None, Scope::Store(code)) => query.store = Some(code.clone()),
        _ => {}
    }
    match trace_receipt(store, &query, scope).await {
        Ok(Traced::Found(report)) => Json(report).into_response(),
        Ok(Traced::OutOfScope(code)) => error(
            StatusCode::FORBIDDEN,
            format!(
                "receipt '{}' is a sale of store '{code}', outside what this user may see",
                query.receipt
            ),
        ),
        Ok(Traced::NotFound) => {
            let store = match &query.store {
                Some(store) => format!(" in store '{store}'"),
                None => String::new(),
            };
            let place = match query.hq_seq {
                Some(seq) => format!(" at hq_seq {seq}"),
                None => format!(" among the latest {RECEIPT_SEARCH_RECORDS} records"),
            };
            error(
                StatusCode::NOT_FOUND,
                format!("no sale with receipt '{}'{store}{place}", query.receipt),
            )
        }
        Err(failure) => {
            tracing::error!(error = format!("{failure:#}"), "tracing a receipt failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read records: {failure:#}"),
            )
        }
    }
}

/// An error answer shaped like the other endpoints' (`{"error": …}`).
fn error(status: StatusCode, message: String) -> Response {
    let mut response = (status, Json(serde_json::json!({ "error": message }))).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The query string of `/v1/trace`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceParams {
    /// The receipt number.
    receipt: Option<String>,
    /// Only this store's sales.
    store: Option<String>,
    /// The sale's hq_seq, when known.
    hq_seq: Option<String>,
}

/// A checked `/v1/trace` query.
#[derive(Debug, PartialEq, Eq)]
struct TraceQuery {
    /// The receipt number, exactly as in the sale record.
    receipt: String,
    /// Only this store's sales.
    store: Option<String>,
    /// The sale record's hq_seq: skips the search.
    hq_seq: Option<u64>,
}

impl TraceQuery {
    fn from_uri(uri: &Uri) -> Result<TraceQuery, String> {
        let params = match uri.query() {
            None => TraceParams::default(),
            Some(_) => {
                axum::extract::Query::<TraceParams>::try_from_uri(uri)
                    .map_err(|rejection| format!("bad query: {}", rejection.body_text()))?
                    .0
            }
        };
        let present = |value: Option<String>| value.filter(|text| !text.trim().is_empty());
        let receipt = present(params.receipt)
            .ok_or_else(|| "'receipt' is required: /v1/trace?receipt=R-1001".to_string())?;
        let hq_seq = match present(params.hq_seq) {
            None => None,
            Some(text) => Some(
                text.parse::<u64>()
                    .ok()
                    .filter(|seq| *seq >= 1)
                    .ok_or_else(|| {
                        format!("'hq_seq' must be an hq_seq (1 or more), found '{text}'")
                    })?,
            ),
        };
        Ok(TraceQuery {
            receipt: receipt.trim().to_string(),
            store: present(params.store),
            hq_seq,
        })
    }
}

/// The body of `/v1/trace`.
#[derive(Debug, Serialize)]
struct TraceReport {
    /// The receipt asked for.
    receipt: String,
    /// The sale record traced (the newest match).
    sale: Value,
    /// Every sale found with this receipt, newest first.
    matches: Vec<SaleMatch>,
    /// Each line of the sale with its attribution and scan.
    lines: Vec<TraceLine>,
    /// The consultation the sale belongs to, if any.
    consultation: Option<TraceConsultation>,
    /// `false` when a window ran out before every linked record was found.
    complete: bool,
}

/// The consultation of a sale, traced.
#[derive(Debug, Serialize)]
struct TraceConsultation {
    /// Its id: the sale's `data.consultation`, or the record's `data.id` when found by receipt.
    id: Option<String>,
    /// The consultation record (with its steps), when found.
    record: Option<Value>,
    /// The scans its `data.scans` names, in order.
    scans: Vec<TraceScan>,
}

/// One scan a consultation names.
#[derive(Debug, Serialize)]
struct TraceScan {
    /// The scan record's id.
    id: String,
    /// The scan record, when found.
    scan: Option<Value>,
}

/// A sale with the receipt asked for.
#[derive(Debug, Serialize)]
struct SaleMatch {
    /// Its hq_seq (pass it back as `hq_seq` to trace this one).
    hq_seq: u64,
    /// Its store.
    store: Value,
    /// Its `ts`.
    ts: Value,
}

/// One line of the sale, traced.
#[derive(Debug, Serialize)]
struct TraceLine {
    /// The line as in the sale record.
    line: Value,
    /// The attribution record of the line's prompt, when the line has one and it was found.
    attribution: Option<Value>,
    /// The scan record that opened that prompt, when found.
    scan: Option<Value>,
}

/// What tracing a receipt found.
enum Traced {
    /// The sale and its linked records.
    Found(TraceReport),
    /// No sale matches.
    NotFound,
    /// Sales match, but only of stores outside the caller's scope (one of them).
    OutOfScope(String),
}

impl Traced {
    /// The report, if the sale was found (for tests).
    #[cfg(test)]
    fn found(self) -> Option<TraceReport> {
        match self {
            Traced::Found(report) => Some(report),
            _ => None,
        }
    }
}

/// Finds the sale and its linked records, among the sales of stores `scope` sees.
async fn trace_receipt(
    store: &StoreHandle,
    query: &TraceQuery,
    scope: &Scope,
) -> anyhow::Result<Traced> {
    let mut sales = find_sales(store, query).await?;
    let first_outside = sales
        .iter()
        .filter_map(|sale| sale["store"].as_str())
        .find(|code| !scope.sees_store(code))
        .map(str::to_owned);
    sales.retain(|sale| {
        sale["store"]
            .as_str()
            .is_some_and(|code| scope.sees_store(code))
    });
    // Newest first: the analyst almost always means the latest receipt with that number.
    sales.sort_by_key(|sale| std::cmp::Reverse(hq_seq_of(sale)));
    let Some(sale) = sales.first().cloned() else {
        return Ok(match first_outside {
            Some(code) => Traced::OutOfScope(code),
            None => Traced::NotFound,
        });
    };
    let matches = sales
        .iter()
        .map(|sale| SaleMatch {
            hq_seq: hq_seq_of(sale),
            store: sale["store"].clone(),
            ts: sale["ts"].clone(),
        })
        .collect();
    let sale_seq = hq_seq_of(&sale);
    let sale_store = sale["store"].as_str().map(str::to_owned);
    let window = Window::around(sale_seq);
    let lines: Vec<Value> = sale["data"]["lines"]
        .as_array()
        .cloned()
        .unwrap_or_default();

    let prompts: HashSet<String> = lines
        .iter()
        .filter_map(|line| line["prompt"].as_str().map(str::to_owned))
        .collect();
    let attributions = find_by(
        store,
        sale_store.clone(),
        "attribution",
        window,
        &prompts,
        |record| record["data"]["prompt"].as_str().map(str::to_owned),
    )
    .await?;
    let consultation = find_consultation(store, &sale, sale_store.clone(), window).await?;
    let mut scan_ids: HashSet<String> = attributions
        .values()
        .filter_map(|record| record["data"]["scan"].as_str().map(str::to_owned))
        .collect();
    let consultation_scan_ids = consultation_scans(
        consultation
            .as_ref()
            .and_then(|(_, record)| record.as_ref()),
    );
    scan_ids.extend(consultation_scan_ids.iter().cloned());
    let scans = find_by(store, sale_store, "scan", window, &scan_ids, |record| {
        record["id"].as_str().map(str::to_owned)
    })
    .await?;

    let mut complete = true;
    let consultation = match consultation {
        None => None,
        Some((id, record)) => {
            let scans: Vec<TraceScan> = consultation_scan_ids
                .into_iter()
                .map(|id| TraceScan {
                    scan: scans.get(&id).cloned(),
                    id,
                })
                .collect();
            if record.is_none() || scans.iter().any(|scan| scan.scan.is_none()) {
                complete = false;
            }
            Some(TraceConsultation { id, record, scans })
        }
    };
    let lines = lines
        .into_iter()
        .map(|line| {
            let attribution = line["prompt"]
                .as_str()
                .and_then(|prompt| attributions.get(prompt).cloned());
            let scan = attribution
                .as_ref()
                .and_then(|record| record["data"]["scan"].as_str())
                .and_then(|id| scans.get(id).cloned());
            let wanted_attribution = line["prompt"].is_string();
            let wanted_scan = attribution
                .as_ref()
                .is_some_and(|record| record["data"]["scan"].is_string());
            if (wanted_attribution && attribution.is_none()) || (wanted_scan && scan.is_none()) {
                complete = false;
            }
            TraceLine {
                line,
                attribution,
                scan,
            }
        })
        .collect();
    Ok(Traced::Found(TraceReport {
        receipt: query.receipt.clone(),
        sale,
        matches,
        lines,
        consultation,
        complete,
    }))
}

/// The consultation of `sale`: `(id, record)`, the record `None` when the sale names one that
/// is not in the window; `None` when the sale names none and none in the window has its receipt.
async fn find_consultation(
    store: &StoreHandle,
    sale: &Value,
    sale_store: Option<String>,
    window: Window,
) -> anyhow::Result<Option<(Option<String>, Option<Value>)>> {
    if let Some(id) = sale["data"]["consultation"].as_str() {
        let wanted = HashSet::from([id.to_owned()]);
        let mut found = find_by(
            store,
            sale_store,
            "consultation",
            window,
            &wanted,
            |record| record["data"]["id"].as_str().map(str::to_owned),
        )
        .await?;
        return Ok(Some((Some(id.to_owned()), found.remove(id))));
    }
    let Some(receipt) = sale["data"]["receipt"].as_str() else {
        return Ok(None);
    };
    // Most sales have no consultation: only stores that sent consultations are searched.
    if !store.holds_kind(sale_store.as_deref(), "consultation") {
        return Ok(None);
    }
    let wanted = HashSet::from([receipt.to_owned()]);
    let mut found = find_by(
        store,
        sale_store,
        "consultation",
        window,
        &wanted,
        |record| record["data"]["receipt"].as_str().map(str::to_owned),
    )
    .await?;
    Ok(found.remove(receipt).map(|record| {
        let id = record["data"]["id"].as_str().map(str::to_owned);
        (id, Some(record))
    }))
}

/// The scan ids a consultation record names (`data.scans`), in order.
fn consultation_scans(record: Option<&Value>) -> Vec<String> {
    record
        .and_then(|record| record["data"]["scans"].as_array())
        .map(|scans| {
            scans
                .iter()
                .filter_map(|id| id.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The sales with the receipt: the one at `hq_seq`, or all in the search window.
async fn find_sales(store: &StoreHandle, query: &TraceQuery) -> anyhow::Result<Vec<Value>> {
    let is_match = |record: &Value| {
        record["data"]["receipt"].as_str() == Some(query.receipt.as_str())
            && query
                .store
                .as_deref()
                .is_none_or(|code| record["store"].as_str() == Some(code))
    };
    if let Some(seq) = query.hq_seq {
        let page = store
            .read(RecordQuery {
                store: query.store.clone(),
                kind: Some("sale".into()),
                after: seq - 1,
                limit: 1,
                within: None,
            })
            .await?;
        let found = lines(&page.body)
            .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
            .filter(|record| hq_seq_of(record) == seq && is_match(record))
            .collect();
        return Ok(found);
    }
    let newest = store.stats().hq_seq;
    let window = Window {
        after: newest.saturating_sub(RECEIPT_SEARCH_RECORDS),
        until: newest,
    };
    let needle = prefilter(&query.receipt);
    let mut found = Vec::new();
    scan_window(store, query.store.clone(), "sale", window, |line| {
        if needle.is_some_and(|needle| !contains(line, needle)) {
            return true;
        }
        if let Ok(record) = serde_json::from_slice::<Value>(line) {
            if is_match(&record) {
                found.push(record);
            }
        }
        true
    })
    .await?;
    Ok(found)
}

/// Records of `kind` in `window` whose `key` is one of `wanted`, by key (the newest wins).
async fn find_by(
    store: &StoreHandle,
    store_code: Option<String>,
    kind: &str,
    window: Window,
    wanted: &HashSet<String>,
    key: impl Fn(&Value) -> Option<String>,
) -> anyhow::Result<HashMap<String, Value>> {
    let mut found: HashMap<String, Value> = HashMap::new();
    if wanted.is_empty() {
        return Ok(found);
    }
    // Only keys made of characters JSON never escapes can be looked for as plain substrings;
    // record ids contain `/`, which a sender may write as `\/`.
    let needles: Option<Vec<&str>> = wanted.iter().map(|key| prefilter(key)).collect();
    scan_window(store, store_code, kind, window, |line| {
        if let Some(needles) = &needles {
            if !needles.iter().any(|needle| contains(line, needle)) {
                return true;
            }
        }
        if let Ok(record) = serde_json::from_slice::<Value>(line) {
            if let Some(key) = key(&record).filter(|key| wanted.contains(key)) {
                found.insert(key, record);
            }
        }
        // Keep going until every key is found: a later copy (another epoch) would win anyway,
        // but one of each is all the trace needs.
        found.len() < wanted.len()
    })
    .await?;
    Ok(found)
}

/// A range of hq_seqs to read: after `after`, up to about `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    /// Records after this hq_seq.
    after: u64,
    /// Reading stops once past this hq_seq (the last page may run a little beyond it).
    until: u64,
}

impl Window {
    /// [`LINK_WINDOW_RECORDS`] either side of `seq`.
    fn around(seq: u64) -> Window {
        Window {
            after: seq.saturating_sub(LINK_WINDOW_RECORDS),
            until: seq.saturating_add(LINK_WINDOW_RECORDS),
        }
    }
}

/// Calls `visit` on every record line of `kind` (of `store_code` when given) in `window`, in
/// hq_seq order, until it returns `false` or the window or the stored records end.
async fn scan_window(
    store: &StoreHandle,
    store_code: Option<String>,
    kind: &str,
    window: Window,
    mut visit: impl FnMut(&[u8]) -> bool,
) -> anyhow::Result<()> {
    let mut after = window.after;
    while after < window.until {
        let page = store
            .read(RecordQuery {
                store: store_code.clone(),
                kind: Some(kind.into()),
                after,
                limit: PAGE_RECORDS,
                within: None,
            })
            .await?;
        for line in lines(&page.body) {
            if !visit(line) {
                return Ok(());
            }
        }
        // No progress means the reader reached the last durable record.
        if page.next_after <= after {
            return Ok(());
        }
        after = page.next_after;
    }
    Ok(())
}

/// The non-empty lines of an NDJSON body.
fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
}

/// The `hq_seq` HQ added to a record it served (0 if missing, which cannot happen).
fn hq_seq_of(record: &Value) -> u64 {
    record["hq_seq"].as_u64().unwrap_or(0)
}

/// `text` when it can only appear verbatim in a JSON line (no character JSON may escape).
fn prefilter(text: &str) -> Option<&str> {
    text.bytes()
        .all(|byte| {
            byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b':' | b'#' | b' ')
        })
        .then_some(text)
}

/// Whether `haystack` contains `needle` (both bytes).
fn contains(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hq::metrics::HqMetrics;
    use crate::hq::record::parse_batch;

    fn record(seq: u64, kind: &str, data: Value) -> String {
        serde_json::json!({
            "id": format!("S1/gw-1/ep1/{seq}"), "store": "S1", "gateway": "gw-1", "epoch": "ep1",
            "seq": seq, "ts": "2026-11-27T16:01:02.345+08:00", "kind": kind, "data": data,
        })
        .to_string()
    }

    fn attribution(seq: u64, prompt: &str, scan: u64, answer: Option<&str>) -> String {
        record(
            seq,
            "attribution",
            serde_json::json!({
                "prompt": prompt, "campaign": "c1", "station": "till-1", "sku": "6901234567892",
                "scan": format!("S1/gw-1/ep1/{scan}"), "question": "推荐话术来源",
                "outcome": if answer.is_some() { "answered" } else { "timeout" },
                "answer": answer, "answer_label": answer.map(|_| "医生推荐"), "channel": "web",
                "clerk": "c-17", "opened_at": "2026-11-27T16:01:02.345+08:00",
                "resolved_at": "2026-11-27T16:01:06.345+08:00", "latency_ms": 4000,
                "skip_reason": null, "receipt": null,
            }),
        )
    }

    fn scan(seq: u64) -> String {
        record(
            seq,
            "scan",
            serde_json::json!({"device": "scanner-1", "station": "till-1", "raw": "]E06901234567892",
                               "code": "6901234567892", "code_kind": "ean13"}),
        )
    }

    fn sale(seq: u64, receipt: &str, prompts: &[Option<&str>]) -> String {
        let lines: Vec<Value> = prompts
            .iter()
            .enumerate()
            .map(|(i, prompt)| {
                serde_json::json!({"sku": format!("sku-{i}"), "name": "感冒灵", "qty": 1,
                                   "unit_price": 25.0, "amount": 25.0, "prompt": prompt})
            })
            .collect();
        record(
            seq,
            "sale",
            serde_json::json!({"device": "till-1-register", "station": "till-1", "receipt": receipt,
                               "clerk": "c-17", "lines": lines, "total": 25.0, "currency": "CNY"}),
        )
    }

    /// A sale of one line, naming `consultation` when given.
    fn consulted_sale(seq: u64, receipt: &str, consultation: Option<&str>) -> String {
        let mut record: Value = serde_json::from_str(&sale(seq, receipt, &[None])).expect("json");
        if let Some(id) = consultation {
            record["data"]["consultation"] = Value::from(id);
            record["data"]["payments"] =
                serde_json::json!([{"method": "medical_insurance", "status": "approved"}]);
        }
        record.to_string()
    }

    /// A closed consultation `id` whose flow products' scans are the records `scans`.
    fn consultation(seq: u64, id: &str, receipt: Option<&str>, scans: &[u64]) -> String {
        let step = |key: &str, label: &str, at: Option<&str>, skipped: Option<&str>| {
            serde_json::json!({"key": key, "label": label, "at": at, "value": null, "values": null,
                               "skipped": skipped, "clerk": at.map(|_| "c-17")})
        };
        let at = Some("2026-11-27T16:02:00.000+08:00");
        record(
            seq,
            "consultation",
            serde_json::json!({
                "id": id, "flow": "rx-5step", "station": "till-1", "clerk": "c-17",
                "customer": null, "opened_at": "2026-11-27T16:00:00.000+08:00",
                "closed_at": "2026-11-27T16:05:00.000+08:00", "outcome": "incomplete",
                "steps": [step("consult", "客户问诊", at, None),
                          step("symptoms", "症状记录", at, Some("客户明确拒绝")),
                          step("guidance", "用药指导", None, None)],
                "scans": scans.iter().map(|seq| format!("S1/gw-1/ep1/{seq}")).collect::<Vec<_>>(),
                "receipt": receipt, "held_ms": 4100, "released_by": "steps",
            }),
        )
    }

    async fn store_with(lines: &[String]) -> (tempfile::TempDir, StoreHandle) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StoreHandle::open(dir.path(), chrono_tz::Asia::Shanghai, HqMetrics::new())
            .await
            .expect("open");
        let body = lines.join("\n").into_bytes();
        let batch = parse_batch(body, "S1").expect("valid batch");
        store.ingest(batch).await.expect("stored");
        (dir, store)
    }

    fn query(text: &str) -> Result<TraceQuery, String> {
        TraceQuery::from_uri(&format!("/v1/trace?{text}").parse().expect("uri"))
    }

    #[test]
    fn trace_queries() {
        assert_eq!(
            query("receipt=R-1&store=S1&hq_seq=7"),
            Ok(TraceQuery {
                receipt: "R-1".into(),
                store: Some("S1".into()),
                hq_seq: Some(7)
            })
        );
        assert_eq!(
            query("receipt=R-1&store="),
            Ok(TraceQuery {
                receipt: "R-1".into(),
                store: None,
                hq_seq: None
            })
        );
        for bad in [
            "store=S1",
            "receipt=",
            "receipt=R&hq_seq=0",
            "receipt=R&hq_seq=x",
            "rcpt=R",
        ] {
            assert!(query(bad).is_err(), "{bad}");
        }
        let missing = TraceQuery::from_uri(&"/v1/trace".parse().expect("uri"));
        assert!(missing.is_err());
    }

    #[test]
    fn prefilter_only_takes_text_json_writes_verbatim() {
        assert_eq!(prefilter("R-1001"), Some("R-1001"));
        assert_eq!(prefilter("S1/gw/ep/1"), None);
        assert_eq!(prefilter("小票1"), None);
        assert!(contains(b"{\"receipt\":\"R-1001\"}", "R-1001"));
        assert!(!contains(b"{\"receipt\":\"R-1002\"}", "R-1001"));
    }

    #[tokio::test]
    async fn a_receipt_is_traced_to_its_answers_and_scans() {
        let (_dir, store) = store_with(&[
            scan(1),
            scan(2),
            attribution(3, "p1", 1, Some("doctor")),
            scan(4),
            sale(5, "R-1", &[Some("p1"), None, Some("p2")]),
            // Resolved after the sale: still found, the window reaches past it.
            attribution(6, "p2", 4, None),
            sale(7, "R-2", &[]),
        ])
        .await;
        let report = trace_receipt(&store, &query("receipt=R-1").expect("query"), &Scope::All)
            .await
            .expect("read")
            .found()
            .expect("found");
        assert!(report.complete);
        assert!(report.consultation.is_none());
        assert_eq!(report.sale["hq_seq"], 5);
        assert_eq!(report.lines.len(), 3);
        let first = &report.lines[0];
        assert_eq!(
            first.attribution.as_ref().expect("attribution")["data"]["answer"],
            "doctor"
        );
        assert_eq!(first.scan.as_ref().expect("scan")["id"], "S1/gw-1/ep1/1");
        assert!(report.lines[1].attribution.is_none() && report.lines[1].scan.is_none());
        assert_eq!(report.lines[2].scan.as_ref().expect("scan")["seq"], 4);

        let by_seq = trace_receipt(
            &store,
            &query("receipt=R-1&hq_seq=5").expect("query"),
            &Scope::All,
        )
        .await
        .expect("read");
        assert_eq!(by_seq.found().expect("found").sale["hq_seq"], 5);
        for missing in [
            "receipt=R-3",
            "receipt=R-1&hq_seq=7",
            "receipt=R-1&store=S2",
        ] {
            let report = trace_receipt(&store, &query(missing).expect("query"), &Scope::All)
                .await
                .expect("read");
            assert!(report.found().is_none(), "{missing}");
        }
        store.close().await;
    }

    #[tokio::test]
    async fn a_receipt_is_traced_to_its_consultation_and_its_scans() {
        let (_dir, store) = store_with(&[
            scan(1),
            record(
                2,
                "consultation_step",
                serde_json::json!({"consultation": "k7q2m9xw", "flow": "rx-5step",
                                   "station": "till-1", "key": "consult"}),
            ),
            consulted_sale(3, "R-1", Some("k7q2m9xw")),
            // Closed after its sale, as when the sale settles the last step.
            consultation(4, "k7q2m9xw", Some("R-1"), &[1]),
            // A sale that does not name its consultation: found by the receipt.
            consulted_sale(5, "R-2", None),
            consultation(6, "b3n8p4rt", Some("R-2"), &[1, 99]),
            consulted_sale(7, "R-3", Some("gone")),
            consulted_sale(8, "R-4", None),
        ])
        .await;
        let trace = |text: &'static str| {
            let store = store.clone();
            async move {
                trace_receipt(&store, &query(text).expect("query"), &Scope::All)
                    .await
                    .expect("read")
                    .found()
                    .expect("found")
            }
        };
        let report = trace("receipt=R-1").await;
        assert!(report.complete);
        let consultation = report.consultation.expect("a consultation");
        assert_eq!(consultation.id.as_deref(), Some("k7q2m9xw"));
        let found = consultation.record.expect("its record");
        assert_eq!(found["hq_seq"], 4);
        assert_eq!(found["data"]["steps"][1]["skipped"], "客户明确拒绝");
        assert_eq!(consultation.scans.len(), 1);
        assert_eq!(consultation.scans[0].id, "S1/gw-1/ep1/1");
        let scan = consultation.scans[0].scan.as_ref().expect("the scan");
        assert_eq!(scan["data"]["device"], "scanner-1");

        let report = trace("receipt=R-2").await;
        let consultation = report.consultation.expect("found by receipt");
        assert_eq!(consultation.id.as_deref(), Some("b3n8p4rt"));
        assert!(consultation.scans[0].scan.is_some());
        assert!(
            consultation.scans[1].scan.is_none(),
            "scan 99 was never sent"
        );
        assert!(!report.complete);

        let report = trace("receipt=R-3").await;
        let consultation = report.consultation.expect("named by the sale");
        assert_eq!(consultation.id.as_deref(), Some("gone"));
        assert!(consultation.record.is_none() && consultation.scans.is_empty());
        assert!(!report.complete);

        let report = trace("receipt=R-4").await;
        assert!(report.consultation.is_none());
        assert!(report.complete);
        store.close().await;
    }

    #[tokio::test]
    async fn the_newest_of_equal_receipts_wins_and_missing_links_are_reported() {
        let (_dir, store) =
            store_with(&[sale(1, "R-1", &[]), sale(2, "R-1", &[Some("gone")])]).await;
        let report = trace_receipt(&store, &query("receipt=R-1").expect("query"), &Scope::All)
            .await
            .expect("read")
            .found()
            .expect("found");
        assert_eq!(report.sale["hq_seq"], 2);
        let seqs: Vec<u64> = report.matches.iter().map(|m| m.hq_seq).collect();
        assert_eq!(seqs, [2, 1]);
        assert!(!report.complete, "the prompt 'gone' has no attribution");
        store.close().await;
    }
}
