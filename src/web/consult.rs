//! The consultation endpoints: open, list, record a step, close (docs/local-api.md). Their
//! events reach the page through the one SSE stream (`event: consultation`, see `api`).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::api::{clerk, parse, ApiError, StationQuery};
use super::WebState;
use crate::consult::{ConsultError, StepInput};

/// Longest member id accepted, in characters (cards carry far fewer).
const MAX_CUSTOMER: usize = 64;

/// `POST /api/v1/consultations` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenBody {
    station: String,
    flow: String,
    #[serde(default)]
    clerk: Option<String>,
    /// A member id typed or scanned at the counter; only its reference is kept.
    #[serde(default)]
    customer: Option<String>,
}

/// `POST /api/v1/consultations/{id}/close` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseBody {
    outcome: CloseAs,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum CloseAs {
    Completed,
    Abandoned,
}

/// `POST /api/v1/consultations`: 201 and the consultation.
pub(super) async fn open(State(state): State<WebState>, body: Bytes) -> Result<Response, ApiError> {
    // serde's message quotes the value it could not read, and `customer` may be a member id:
    // the answer says what is expected without repeating what was sent.
    let body: OpenBody = parse(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid request body: expected a JSON object {\"station\", \"flow\", \"clerk\"?, \
             \"customer\"?} whose values are text"
                .into(),
        )
    })?;
    if !state.stations.contains(&body.station) {
        return Err(ApiError::unprocessable(format!(
            "no station '{}' is configured",
            body.station
        )));
    }
    let clerk = clerk(body.clerk)?;
    if body
        .customer
        .as_ref()
        .is_some_and(|customer| customer.chars().count() > MAX_CUSTOMER)
    {
        return Err(ApiError::unprocessable(format!(
            "customer is longer than {MAX_CUSTOMER} characters"
        )));
    }
    let view = state
        .consult
        .open(&body.station, &body.flow, clerk, body.customer.as_deref())
        .await
        .map_err(consult_error)?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `GET /api/v1/consultations?station=S`.
pub(super) async fn list(
    State(state): State<WebState>,
    Query(query): Query<StationQuery>,
) -> Result<Response, ApiError> {
    let open = state
        .consult
        .list(query.station.as_deref())
        .await
        .map_err(consult_error)?;
    Ok(Json(open).into_response())
}

/// `POST /api/v1/consultations/{id}/steps/{key}`.
pub(super) async fn step(
    State(state): State<WebState>,
    Path((id, key)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut input: StepInput = parse(&body)?;
    input.clerk = clerk(input.clerk)?;
    let view = state
        .consult
        .step(&id, &key, input)
        .await
        .map_err(consult_error)?;
    Ok(Json(view).into_response())
}

/// `POST /api/v1/consultations/{id}/close`.
pub(super) async fn close(
    State(state): State<WebState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: CloseBody = parse(&body)?;
    let abandon = matches!(body.outcome, CloseAs::Abandoned);
    let view = state
        .consult
        .close(&id, abandon)
        .await
        .map_err(consult_error)?;
    Ok(Json(view).into_response())
}

/// 404 unknown, 409 closed, 422 refused, 503 engine or journal down.
fn consult_error(problem: ConsultError) -> ApiError {
    let status = match &problem {
        ConsultError::NotFound(_) => StatusCode::NOT_FOUND,
        ConsultError::Closed(_) => StatusCode::CONFLICT,
        ConsultError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ConsultError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, problem.to_string())
}
