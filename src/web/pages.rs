//! The HTML pages and static assets, built into the binary.
//!
//! The pages are templates with `{{…}}` placeholders filled here, so the page has what it needs
//! (the station, the prompts' skip reasons, the consultation flows `[{"id","name"}]` offered by
//! 新问诊) without an extra request. Everything inserted is escaped for where it goes: HTML text,
//! a URL path segment, or JSON inside a `<script>` element.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::WebState;

const INDEX_HTML: &str = include_str!("assets/index.html");
const STATION_HTML: &str = include_str!("assets/station.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const PAIR_JS: &str = include_str!("assets/pair.js");

/// `GET /`: the station chooser.
pub(super) async fn index(State(state): State<WebState>) -> Response {
    let links: String = state
        .stations
        .iter()
        .map(|station| {
            format!(
                "<li><a class=\"station-link\" data-station=\"{name}\" href=\"/station/{path}\">{name}</a></li>\n",
                name = escape_html(station),
                path = escape_path(station),
            )
        })
        .collect();
    let links = if links.is_empty() {
        "<li class=\"none\">未配置收银台 No stations configured</li>".to_owned()
    } else {
        links
    };
    page(INDEX_HTML.replace("{{STATIONS}}", &links))
}

/// `GET /station/{station}`: the counter screen.
pub(super) async fn station(
    State(state): State<WebState>,
    Path(station): Path<String>,
) -> Response {
    if !state.stations.contains(&station) {
        let body = format!(
            "<!doctype html><meta charset=\"utf-8\"><title>404</title>\
             <p>未知收银台 Unknown station '{}'. <a href=\"/\">收银台列表 All stations</a></p>",
            escape_html(&station)
        );
        return (StatusCode::NOT_FOUND, Html(body)).into_response();
    }
    // The flows offered by 新问诊, as configured now (a reload shows on the next page load).
    let flows: Vec<serde_json::Value> = state
        .consult
        .flows()
        .borrow()
        .iter()
        .map(|flow| serde_json::json!({ "id": flow.id, "name": flow.name }))
        .collect();
    let config = serde_json::json!({
        "station": station,
        "skip_reasons": &*state.prompts.skip_reasons(),
        "flows": flows,
    });
    page(
        STATION_HTML
            .replace("{{STATION}}", &escape_html(&station))
            .replace("{{CONFIG}}", &script_json(&config)),
    )
}

/// `GET /assets/{file}`.
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        "pair.js" => (PAIR_JS, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    // no-cache: the browser revalidates, so a gateway upgrade reaches every screen at once.
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn page(html: String) -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(html)).into_response()
}

/// Escapes text for HTML content and quoted attribute values.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Percent-encodes a URL path segment (everything but RFC 3986 unreserved characters).
fn escape_path(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// JSON safe inside `<script type="application/json">`: no `<` can close the element.
fn script_json(value: &serde_json::Value) -> String {
    value.to_string().replace('<', "\\u003c")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            escape_html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(escape_path("till 1/收"), "till%201%2F%E6%94%B6");
        assert_eq!(
            script_json(&serde_json::json!({"s": "</script>"})),
            "{\"s\":\"\\u003c/script>\"}"
        );
    }
}
