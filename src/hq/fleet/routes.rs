//! The fleet's HTTP endpoints (docs/hq-protocol.md, "Fleet"): a store's configuration and
//! heartbeat, the fleet view, and the editor. Who is calling is decided by the server's own
//! identification (tokens, sessions), handed in as an [`Identify`]; each handler then applies
//! its rule: a store's token for its own store, readers within their scope, the editor for
//! admins only.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;

use super::actor::FleetHandle;
use super::content::Kind;
use crate::fleet::wire::Heartbeat;
use crate::hq::access::{Caller, Scope};
use crate::hq::metrics::HqMetrics;

/// Largest heartbeat body: a gateway's is a few KiB (its lists are bounded).
pub const MAX_HEARTBEAT_BODY: usize = 64 * 1024;
/// Largest editor body: one campaign or flow.
pub const MAX_EDITOR_BODY: usize = 256 * 1024;

/// Who sent a request (the server's token and session check).
pub type Identify = Arc<dyn Fn(&HeaderMap) -> Caller + Send + Sync>;

/// The fleet's owner when this receiver runs it (`None`: another receiver does, or none
/// yet; `hq::manage`).
pub type Current = Arc<dyn Fn() -> Option<FleetHandle> + Send + Sync>;

/// What the handlers share.
#[derive(Clone)]
struct Fleet {
    /// The fleet's owner, when running here.
    handle: Current,
    /// Who is calling.
    identify: Identify,
    /// Request counters.
    metrics: HqMetrics,
}

/// The fleet's routes, with their state (merged into the server's router).
pub fn routes(handle: Current, metrics: HqMetrics, identify: Identify) -> Router {
    let state = Fleet {
        handle,
        identify,
        metrics,
    };
    Router::new()
        .route("/v1/fleet", get(get_fleet))
        .route("/v1/fleet/editor", get(get_editor))
        .route(
            "/v1/fleet/campaigns/{id}",
            put(put_campaign)
                .delete(delete_campaign)
                .layer(DefaultBodyLimit::max(MAX_EDITOR_BODY)),
        )
        .route(
            "/v1/fleet/flows/{id}",
            put(put_flow)
                .delete(delete_flow)
                .layer(DefaultBodyLimit::max(MAX_EDITOR_BODY)),
        )
        .route("/v1/fleet/{store}/config", get(get_config))
        .route(
            "/v1/fleet/{store}/heartbeat",
            post(post_heartbeat).layer(DefaultBodyLimit::max(MAX_HEARTBEAT_BODY)),
        )
        .with_state(state)
}

/// An error answer: a status and `{"error": .., "errors": [..]?}`.
#[derive(Debug)]
struct Refusal {
    /// The status code.
    status: StatusCode,
    /// What went wrong.
    message: String,
    /// The validators' problems (a 422 of the editor).
    errors: Vec<String>,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
            errors: Vec::new(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if !self.errors.is_empty() {
            body["errors"] = json!(self.errors);
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"posgw-hq\""),
            );
        }
        response
    }
}

/// A handler's result as an answer.
fn answer(result: Result<Response, Refusal>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1/fleet/{store}/config`: the store's token (or a reader who sees the store).
async fn get_config(
    State(fleet): State<Fleet>,
    Path(store): Path<String>,
    headers: HeaderMap,
) -> Response {
    let response = answer(config(&fleet, &store, &headers));
    fleet
        .metrics
        .request("fleet_config", response.status().as_u16());
    response
}

fn config(fleet: &Fleet, store: &str, headers: &HeaderMap) -> Result<Response, Refusal> {
    match (fleet.identify)(headers) {
        Caller::Store(code) if code == store => {}
        Caller::Store(_) => {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "a store's token reads only its own store's configuration",
            ))
        }
        Caller::Reader { scope, .. } if scope.sees_store(store) => {}
        Caller::Reader { .. } => {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("store '{store}' is outside what this user may see"),
            ))
        }
        Caller::Unknown => {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "the store's token is required: Authorization: Bearer TOKEN",
            ))
        }
    }
    let Some(document) = fleet.owner()?.document(store) else {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("store '{store}' is not configured"),
        ));
    };
    let etag = HeaderValue::from_str(&document.etag).unwrap_or(HeaderValue::from_static("\"\""));
    if if_none_match(headers, &document.etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        document.body.clone(),
    )
        .into_response())
}

/// Whether `If-None-Match` names `etag` (or is `*`); weak tags compare by their value.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag == etag)
}

/// `POST /v1/fleet/{store}/heartbeat`: the store's token only; 204.
async fn post_heartbeat(
    State(fleet): State<Fleet>,
    Path(store): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = answer(heartbeat(&fleet, &store, &headers, &body).await);
    fleet
        .metrics
        .request("fleet_heartbeat", response.status().as_u16());
    response
}

async fn heartbeat(
    fleet: &Fleet,
    store: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refusal> {
    match (fleet.identify)(headers) {
        Caller::Store(code) if code == store => {}
        Caller::Unknown => {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "the store's token is required: Authorization: Bearer TOKEN",
            ))
        }
        _ => {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "only the store's own token posts its heartbeat",
            ))
        }
    }
    let beat: Heartbeat = serde_json::from_slice(body).map_err(|problem| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not a heartbeat: {problem}"),
        )
    })?;
    fleet
        .owner()?
        .heartbeat(store, beat)
        .await
        .map(|()| StatusCode::NO_CONTENT.into_response())
        .ok_or_else(shutting_down)
}

impl Fleet {
    /// The fleet's owner; 503 on a receiver that does not run it now.
    fn owner(&self) -> Result<FleetHandle, Refusal> {
        (self.handle)().ok_or_else(|| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this receiver does not run the fleet now: another one holds the management \
                 lock (GET /healthz/manage answers 200 there)",
            )
        })
    }
}

/// 503 while the fleet's owner stops.
fn shutting_down() -> Refusal {
    Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
}

/// The caller's name and scope when it is a reader; the error answer otherwise.
fn reader(fleet: &Fleet, headers: &HeaderMap) -> Result<(String, Scope), Refusal> {
    match (fleet.identify)(headers) {
        Caller::Reader { name, scope } => Ok((name, scope)),
        Caller::Store(_) => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "a store's token cannot read the fleet",
        )),
        Caller::Unknown => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "sign in at /login, or send the admin or a user's token: Authorization: Bearer TOKEN",
        )),
    }
}

/// `GET /v1/fleet`: admins every store, region users their region's; store users 403.
async fn get_fleet(State(fleet): State<Fleet>, headers: HeaderMap) -> Response {
    let response = answer(
        async {
            match reader(&fleet, &headers)? {
                (_, Scope::Store(_)) => Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    "the fleet view is for admins and region users",
                )),
                (_, scope) => fleet
                    .owner()?
                    .view(scope)
                    .await
                    .map(|view| Json(view).into_response())
                    .ok_or_else(shutting_down),
            }
        }
        .await,
    );
    fleet.metrics.request("fleet", response.status().as_u16());
    response
}

/// The admin's name; the error answer for anyone else.
fn admin(fleet: &Fleet, headers: &HeaderMap) -> Result<String, Refusal> {
    match reader(fleet, headers)? {
        (name, Scope::All) => Ok(name),
        _ => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "the fleet editor is for admins",
        )),
    }
}

/// `GET /v1/fleet/editor`.
async fn get_editor(State(fleet): State<Fleet>, headers: HeaderMap) -> Response {
    let response = answer(
        async {
            admin(&fleet, &headers)?;
            fleet
                .owner()?
                .editor()
                .await
                .map(|listing| Json(listing).into_response())
                .ok_or_else(shutting_down)
        }
        .await,
    );
    fleet
        .metrics
        .request("fleet_editor", response.status().as_u16());
    response
}

async fn put_campaign(
    State(fleet): State<Fleet>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    save(&fleet, Kind::Campaign, &id, &headers, &body).await
}

async fn put_flow(
    State(fleet): State<Fleet>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    save(&fleet, Kind::Flow, &id, &headers, &body).await
}

async fn delete_campaign(
    State(fleet): State<Fleet>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    remove(&fleet, Kind::Campaign, &id, &headers).await
}

async fn delete_flow(
    State(fleet): State<Fleet>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    remove(&fleet, Kind::Flow, &id, &headers).await
}

/// `PUT /v1/fleet/{campaigns,flows}/{id}`: JSON only (a cross-site form cannot send it).
async fn save(fleet: &Fleet, kind: Kind, id: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let response = answer(
        async {
            let by = admin(fleet, headers)?;
            let json_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.split(';').next())
                .is_some_and(|value| value.trim().eq_ignore_ascii_case("application/json"));
            if !json_type {
                return Err(Refusal::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "the body must be application/json",
                ));
            }
            let value: serde_json::Value = serde_json::from_slice(body).map_err(|problem| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not JSON: {problem}"),
                )
            })?;
            editor_answer(fleet.owner()?.put(kind, id, value, &by).await)
        }
        .await,
    );
    fleet
        .metrics
        .request("fleet_editor", response.status().as_u16());
    response
}

/// `DELETE /v1/fleet/{campaigns,flows}/{id}`.
async fn remove(fleet: &Fleet, kind: Kind, id: &str, headers: &HeaderMap) -> Response {
    let response = answer(match admin(fleet, headers) {
        Err(refusal) => Err(refusal),
        Ok(by) => match fleet.owner() {
            Ok(owner) => editor_answer(owner.delete(kind, id, &by).await),
            Err(refusal) => Err(refusal),
        },
    });
    fleet
        .metrics
        .request("fleet_editor", response.status().as_u16());
    response
}

/// The editor's result as an answer.
fn editor_answer(
    result: Result<serde_json::Value, super::actor::EditorError>,
) -> Result<Response, Refusal> {
    match result {
        Ok(body) => Ok(Json(body).into_response()),
        Err(refusal) => Err(Refusal {
            status: StatusCode::from_u16(refusal.status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: refusal.message,
            errors: refusal.errors,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let mut headers = HeaderMap::new();
        assert!(!if_none_match(&headers, "\"a\""));
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"a\""),
        );
        assert!(if_none_match(&headers, "\"a\""));
        assert!(!if_none_match(&headers, "\"b\""));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(if_none_match(&headers, "\"b\""));
    }
}
