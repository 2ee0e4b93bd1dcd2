//! The prompt endpoints: list, answer, skip, today's figures and the SSE stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::broadcast;

use super::WebState;
use crate::consult::ConsultEvent;
use crate::prompts::{PromptError, PromptEvent};
use crate::record::attribution::Channel;

/// Longest clerk id accepted, in characters.
const MAX_CLERK: usize = 64;

/// Longest skip reason accepted, in characters.
const MAX_REASON: usize = 200;

/// How long a browser waits before reconnecting a dropped stream (the default is 3 s).
const RETRY: Duration = Duration::from_secs(1);

/// How often an idle stream sends `event: ping` (the page reconnects after 40 s of silence).
const PING: Duration = Duration::from_secs(15);

/// `?station=S`.
#[derive(Debug, Deserialize)]
pub(super) struct StationQuery {
    /// The counter; all of them when absent.
    pub(super) station: Option<String>,
}

/// `POST /api/v1/prompts/{id}/answer` body.
#[derive(Debug, Deserialize)]
struct AnswerBody {
    /// The option key.
    option: String,
    /// The clerk's id, when entered.
    #[serde(default)]
    clerk: Option<String>,
}

/// `POST /api/v1/prompts/{id}/skip` body.
#[derive(Debug, Deserialize)]
struct SkipBody {
    /// Why; must not be blank.
    reason: String,
    /// The clerk's id, when entered.
    #[serde(default)]
    clerk: Option<String>,
}

/// `GET /api/v1/prompts`.
pub(super) async fn list(
    State(state): State<WebState>,
    Query(query): Query<StationQuery>,
) -> Response {
    Json(state.prompts.open_prompts(query.station.as_deref()).await).into_response()
}

/// `GET /api/v1/prompts/today`: every configured station, plus any other with prompts today.
pub(super) async fn today(State(state): State<WebState>) -> Response {
    Json(state.prompts.today_with(&state.stations).await).into_response()
}

/// `POST /api/v1/prompts/{id}/answer`.
pub(super) async fn answer(
    State(state): State<WebState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: AnswerBody = parse(&body)?;
    let clerk = clerk(body.clerk)?;
    let resolution = state
        .prompts
        .answer(&id, &body.option, clerk, Channel::Web)
        .await
        .map_err(|problem| ApiError::prompt(&id, problem))?;
    Ok(Json(serde_json::json!({
        "outcome": resolution.outcome,
        "prompt": resolution.prompt,
        "answer": resolution.answer,
    }))
    .into_response())
}

/// `POST /api/v1/prompts/{id}/skip`.
pub(super) async fn skip(
    State(state): State<WebState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: SkipBody = parse(&body)?;
    let clerk = clerk(body.clerk)?;
    if body.reason.chars().count() > MAX_REASON {
        return Err(ApiError::unprocessable(format!(
            "skip reason is longer than {MAX_REASON} characters"
        )));
    }
    let resolution = state
        .prompts
        .skip(&id, &body.reason, clerk)
        .await
        .map_err(|problem| ApiError::prompt(&id, problem))?;
    Ok(Json(serde_json::json!({
        "outcome": resolution.outcome,
        "prompt": resolution.prompt,
    }))
    .into_response())
}

/// `GET /api/v1/events`: the snapshot, then live events (see the module doc).
pub(super) async fn events(
    State(state): State<WebState>,
    Query(query): Query<StationQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let subscription = state.prompts.subscription(query.station.as_deref()).await;
    // Without the consultation engine the stream carries prompts only.
    let (open, consultations) = match state.consult.subscribe().await {
        Ok((open, events)) => (open, Some(events)),
        Err(_) => (Vec::new(), None),
    };
    let reset = serde_json::json!({
        "station": query.station,
        "now": subscription.now.to_rfc3339_opts(chrono::SecondsFormat::Millis, false),
    });
    let mut first = vec![Event::default()
        .event("reset")
        .retry(RETRY)
        .data(reset.to_string())];
    first.extend(
        subscription
            .prompts
            .iter()
            .map(|prompt| sse_event(&PromptEvent::Prompt(prompt.clone()))),
    );
    first.extend(
        subscription
            .today
            .into_iter()
            .map(|today| sse_event(&PromptEvent::Stats(today))),
    );
    first.extend(
        open.iter()
            .filter(|view| query.station.as_deref().is_none_or(|s| s == view.station))
            .map(consultation_event),
    );
    let live = stream::unfold(
        (subscription.events, consultations, query.station),
        |(mut events, mut consultations, station)| async move {
            loop {
                let next = match consultations.as_mut() {
                    Some(consultations) => tokio::select! {
                        event = events.recv() => Live::Prompt(event),
                        event = consultations.recv() => Live::Consultation(event),
                    },
                    None => Live::Prompt(events.recv().await),
                };
                let (event, for_station) = match next {
                    Live::Prompt(Ok(event)) => {
                        let station_of = event.station().to_owned();
                        (sse_event(&event), station_of)
                    }
                    Live::Consultation(Ok(ConsultEvent::Changed(view))) => {
                        (consultation_event(&*view), view.station.clone())
                    }
                    Live::Prompt(Err(broadcast::error::RecvError::Lagged(missed)))
                    | Live::Consultation(Err(broadcast::error::RecvError::Lagged(missed))) => {
                        // End the stream: the browser reconnects and starts from a fresh snapshot.
                        tracing::debug!(missed, "event stream subscriber lagged; closing it");
                        return None;
                    }
                    Live::Prompt(Err(broadcast::error::RecvError::Closed))
                    | Live::Consultation(Err(broadcast::error::RecvError::Closed)) => return None,
                };
                if station.as_deref().is_none_or(|s| s == for_station) {
                    return Some((event, (events, consultations, station)));
                }
            }
        },
    );
    // A named event rather than a comment, so the page sees it and can spot a dead connection.
    let ping = KeepAlive::new()
        .interval(PING)
        .event(Event::default().event("ping").data("{}"));
    Sse::new(stream::iter(first).chain(live).map(Ok)).keep_alive(ping)
}

/// What woke the live part of the stream.
enum Live {
    Prompt(Result<PromptEvent, broadcast::error::RecvError>),
    Consultation(Result<ConsultEvent, broadcast::error::RecvError>),
}

/// A consultation's change as an SSE event.
fn consultation_event(view: &impl serde::Serialize) -> Event {
    Event::default()
        .event("consultation")
        .data(serde_json::to_string(view).unwrap_or_else(|_| "{}".to_owned()))
}

/// One engine event as an SSE event.
fn sse_event(event: &PromptEvent) -> Event {
    let (name, data) = match event {
        PromptEvent::Prompt(prompt) => ("prompt", serde_json::to_string(prompt)),
        PromptEvent::Resolved {
            id,
            station,
            outcome,
            answer,
        } => (
            "resolved",
            serde_json::to_string(&serde_json::json!({
                "id": id,
                "outcome": outcome,
                "answer": answer,
                "station": station,
            })),
        ),
        PromptEvent::Stats(today) => ("stats", serde_json::to_string(today)),
    };
    // These types always serialise; an empty object is a harmless fallback.
    Event::default()
        .event(name)
        .data(data.unwrap_or_else(|_| "{}".to_owned()))
}

/// Reads a JSON body: malformed JSON, a value that is not an object (serde would take an array
/// such as `["doctor"]` for a struct) and the wrong shape are all 400.
pub(super) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let bad = |message: String| ApiError {
        status: StatusCode::BAD_REQUEST,
        message,
    };
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|problem| bad(format!("invalid request body: {problem}")))?;
    if !value.is_object() {
        return Err(bad(
            "request body must be a JSON object like {\"option\":\"doctor\"}".to_owned(),
        ));
    }
    serde_json::from_value(value).map_err(|problem| bad(format!("invalid request body: {problem}")))
}

/// A clerk id: trimmed, blank means none, at most [`MAX_CLERK`] characters.
pub(super) fn clerk(clerk: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(clerk) = clerk else { return Ok(None) };
    let clerk = clerk.trim();
    if clerk.chars().count() > MAX_CLERK {
        return Err(ApiError::unprocessable(format!(
            "clerk is longer than {MAX_CLERK} characters"
        )));
    }
    Ok((!clerk.is_empty()).then(|| clerk.to_owned()))
}

/// A failed request: its status and a `{"error":"…"}` body.
#[derive(Debug)]
pub(super) struct ApiError {
    /// The HTTP status.
    status: StatusCode,
    /// What went wrong, for the `error` field.
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: String) -> Self {
        ApiError { status, message }
    }

    pub(super) fn unprocessable(message: String) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message,
        }
    }

    /// 404 unknown, 409 already resolved, 422 bad option or reason, 503 engine or journal down.
    fn prompt(id: &str, problem: PromptError) -> Self {
        let status = match &problem {
            PromptError::NotFound => StatusCode::NOT_FOUND,
            PromptError::AlreadyResolved => StatusCode::CONFLICT,
            PromptError::OptionNotOffered(_)
            | PromptError::EmptyReason
            | PromptError::UnknownCampaign(_) => StatusCode::UNPROCESSABLE_ENTITY,
            PromptError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError {
            status,
            message: format!("prompt '{id}': {problem}"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}
