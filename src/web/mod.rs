//! The clerk page and the prompt and consultation endpoints of the local API (docs/local-api.md).
//!
//! | route | does |
//! |---|---|
//! | `GET /` | lists the stations, each linking to its counter screen |
//! | `GET /station/{station}` | the counter screen (404 for a station not configured); its `<script id="config">` JSON carries `station`, the prompts' `skip_reasons` and `flows` (`[{"id","name"}]`, the flows 新问诊 offers, as configured when the page loaded) |
//! | `GET /assets/app.js`, `GET /assets/style.css`, `GET /assets/pair.js` | the pages' scripts and style, built into the binary |
//! | `GET /pair`, `POST /api/v1/pair` | pairing a station beyond loopback (see [`access`]) |
//! | `GET /api/v1/prompts?station=S` | open prompts (of S, or all), oldest first |
//! | `GET /api/v1/prompts/today` | today's figures per station (extension) |
//! | `GET /api/v1/events?station=S` | the SSE stream (below) |
//! | `POST /api/v1/prompts/{id}/answer` | `{"option","clerk"}` → 200 `{"outcome":"answered"}`, 404, 409, 422 |
//! | `POST /api/v1/prompts/{id}/skip` | `{"reason","clerk"}` → 200 `{"outcome":"skipped"}`, 404, 409, 422 |
//! | `POST /api/v1/consultations` | `{"station","flow","clerk"?,"customer"?}` → 201 the consultation, 422 |
//! | `GET /api/v1/consultations?station=S` | open consultations (of S, or all) |
//! | `POST /api/v1/consultations/{id}/steps/{key}` | `{"value"?,"values"?,"skip"?,"clerk"?}` → 200, 404, 409, 422 |
//! | `POST /api/v1/consultations/{id}/close` | `{"outcome":"completed"\|"abandoned"}` → 200, 404, 409 |
//!
//! Request bodies must be sent as `Content-Type: application/json` (415 otherwise, checked with
//! the Host, Origin and pairing rules by [`access`]) and be a JSON object: bad JSON, another
//! JSON value (`["doctor"]`) and an object of the wrong shape are all 400. Every error body is
//! `{"error":"…"}`.
//!
//! **The SSE stream.** On connect: `event: reset` (extension; data `{"station","now"}`, `now`
//! being the server's clock so the page can correct its countdowns; a client drops what it
//! showed), then `event: prompt` for every open prompt (oldest first), then `event: stats`
//! (extension; the station's figures). After that, as they happen: `event: prompt` (a prompt
//! JSON), `event: resolved` (`{"id","outcome","answer","station"}`), `event: stats` and
//! `event: consultation` (a consultation JSON at every change, its `state` saying whether it is
//! still open; the open ones are also sent after the prompts at connect). Without
//! `station` the stream carries every station. A subscriber that falls more than 1024 events
//! behind has its stream ended; the browser reconnects and gets a fresh snapshot, which is
//! simpler and safer than patching a gap. The stream also ends when the engine stops, so an
//! HTTP graceful shutdown is not held up by open pages.
//!
//! The page is plain HTML, CSS and JavaScript, no build step (`assets/`). Next to the prompts
//! it shows the station's open consultations as checklists, live from `event: consultation`:
//! one key or tap per step, chips for `choose` values, skips with one of the flow's reasons
//! only, a countdown while a scan is held, and 新问诊 with an optional member card (sent as
//! `customer`, never stored by the page). `app.js` lists the element ids and data attributes
//! that tests rely on, and the keys.

pub mod access;
mod api;
mod consult;
mod pages;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::consult::ConsultHandle;
use crate::prompts::PromptsHandle;

/// What the handlers share.
#[derive(Clone)]
struct WebState {
    /// The prompt engine.
    prompts: PromptsHandle,
    /// The consultation engine.
    consult: ConsultHandle,
    /// The configured stations, in configuration order.
    stations: Arc<[String]>,
}

/// The clerk page and the prompt endpoints; merge it into the API router.
pub fn routes(prompts: PromptsHandle, consult: ConsultHandle, stations: Vec<String>) -> Router {
    let state = WebState {
        prompts,
        consult,
        stations: stations.into(),
    };
    Router::new()
        .route("/", get(pages::index))
        .route("/station/{station}", get(pages::station))
        .route("/assets/{file}", get(pages::asset))
        .route("/api/v1/prompts", get(api::list))
        .route("/api/v1/prompts/today", get(api::today))
        .route("/api/v1/prompts/{id}/answer", post(api::answer))
        .route("/api/v1/prompts/{id}/skip", post(api::skip))
        .route("/api/v1/events", get(api::events))
        .route(
            "/api/v1/consultations",
            get(consult::list).post(consult::open),
        )
        .route(
            "/api/v1/consultations/{id}/steps/{key}",
            post(consult::step),
        )
        .route("/api/v1/consultations/{id}/close", post(consult::close))
        .with_state(state)
}
