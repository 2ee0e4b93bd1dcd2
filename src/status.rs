//! `posgw status`: a running gateway's `/api/v1/status`, as a summary a store IT admin can read
//! over the phone: devices, journal backlog, uplink, HQ's configuration (its version, where each
//! campaign and flow comes from, a refusal), open prompts and today's completeness.

use std::fmt::Write;

use serde_json::Value;

/// Renders a status body (docs/local-api.md plus this build's extensions) as text.
pub fn render(status: &Value) -> String {
    let text = |value: &Value| value.as_str().map_or_else(|| "-".to_owned(), str::to_owned);
    let number = |value: &Value| value.as_u64().unwrap_or(0);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "store {}  gateway {}  posgw {}",
        text(&status["store"]),
        text(&status["gateway"]),
        text(&status["version"])
    );
    let _ = writeln!(out, "devices:");
    for device in status["devices"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:<14} {:<9} {:<7} {:<10} {:<12} last frame {}",
            text(&device["id"]),
            text(&device["role"]),
            text(&device["transport"]),
            text(&device["station"]),
            text(&device["state"]),
            text(&device["last_frame_at"]),
        );
        if device["state"] != "connected" {
            let _ = writeln!(out, "    {}", text(&device["detail"]));
        }
    }
    let journal = &status["journal"];
    let _ = writeln!(
        out,
        "journal: epoch {}, next seq {}, backlog {} records ({} bytes), dead letters {}",
        text(&journal["epoch"]),
        number(&journal["next_seq"]),
        number(&journal["backlog_records"]),
        number(&journal["backlog_bytes"]),
        number(&journal["dead_records"]),
    );
    if let Some(reason) = journal["replaced"]["reason"].as_str() {
        let _ = writeln!(
            out,
            "  damaged at start, moved to {}: {reason} (run `posgw journal salvage` with the gateway stopped)",
            text(&journal["replaced"]["quarantine"]),
        );
    }
    let uplink = &status["uplink"];
    let _ = writeln!(
        out,
        "uplink: {}, last success {}, sent {}, retries {}",
        text(&uplink["state"]),
        text(&uplink["last_success_at"]),
        number(&uplink["sent_records"]),
        number(&uplink["retries"]),
    );
    if let Some(error) = uplink["last_error"].as_str() {
        let _ = writeln!(out, "  last error: {error}");
    }
    if let Some(oldest) = uplink["oldest_pending_ts"].as_str() {
        let _ = writeln!(out, "  oldest record not yet at HQ: {oldest}");
    }
    let fleet = &status["fleet"];
    if fleet.is_object() {
        let version = fleet["version"]
            .as_u64()
            .map_or_else(|| "none".to_owned(), |version| format!("v{version}"));
        let from = match fleet["source"].as_str() {
            Some("copy") => " (from the last good copy)",
            _ => "",
        };
        let _ = writeln!(
            out,
            "fleet: HQ configuration {version}{from}, {}, last fetch {}, last heartbeat {}",
            text(&fleet["url"]),
            text(&fleet["last_fetch_at"]),
            text(&fleet["last_heartbeat_at"]),
        );
        if let Some(error) = fleet["last_error"].as_str() {
            let _ = writeln!(out, "  last error: {error}");
        }
        if fleet["refused"].is_object() {
            let _ = writeln!(
                out,
                "  HQ configuration v{} refused at {} (the one in force stays):",
                number(&fleet["refused"]["version"]),
                text(&fleet["refused"]["at"]),
            );
            for error in fleet["refused"]["errors"].as_array().into_iter().flatten() {
                let _ = writeln!(out, "    {}", text(error));
            }
        }
        for clash in fleet["clashes"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  clash: {}", text(clash));
        }
    }
    for (key, what) in [("campaigns", "campaigns"), ("flows", "flows")] {
        if let Some(entries) = status[key].as_array().filter(|list| !list.is_empty()) {
            let listed: Vec<String> = entries
                .iter()
                .map(|entry| format!("{} ({})", text(&entry["id"]), text(&entry["source"])))
                .collect();
            let _ = writeln!(out, "{what}: {}", listed.join(", "));
        }
    }
    let open = status["prompts"]["open"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(out, "open prompts: {}", open.len());
    for prompt in &open {
        let _ = writeln!(
            out,
            "  {:<10} {:<12} {:<16} {:<14} expires {}",
            text(&prompt["station"]),
            text(&prompt["id"]),
            text(&prompt["campaign"]),
            text(&prompt["sku"]),
            text(&prompt["expires_at"]),
        );
    }
    for today in status["prompts"]["today"].as_array().into_iter().flatten() {
        let completeness = today["completeness"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |c| format!("{:.0}%", c * 100.0));
        let _ = writeln!(
            out,
            "today {}: opened {}, answered {}, skipped {}, timed out {}, completeness {}",
            text(&today["station"]),
            number(&today["opened"]),
            number(&today["answered"]),
            number(&today["skipped"]),
            number(&today["timeout"]),
            completeness,
        );
    }
    if let Some(token) = status["pairing_token"].as_str() {
        let _ = writeln!(
            out,
            "pairing token (for clerk screens on other machines, at /pair): {token}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_part_and_tolerates_missing_fields() {
        let status = serde_json::json!({
            "store": "WZ-LC-001", "gateway": "gw-1", "version": "0.1.0",
            "devices": [{"id": "scanner-1", "role": "scanner", "transport": "serial",
                         "station": "till-1", "state": "disconnected", "last_frame_at": null,
                         "detail": "cannot open /dev/ttyACM0: No such file or directory"}],
            "journal": {"epoch": "7f3a9c21", "next_seq": 42, "backlog_records": 3,
                        "backlog_bytes": 1500, "dead_records": 0},
            "uplink": {"state": "retrying", "last_success_at": null,
                       "last_error": "cannot reach HQ", "sent_records": 0, "retries": 4},
            "prompts": {"open": [{"id": "abc", "station": "till-1", "campaign": "x",
                                  "sku": "6901234567892", "expires_at": "t"}],
                        "today": [{"station": "till-1", "opened": 4, "answered": 3,
                                   "skipped": 0, "timeout": 1, "completeness": 0.75}]},
            "pairing_token": "0123456789abcdef0123456789abcdef",
            "campaigns": [{"id": "xinsong-2026q4", "source": "hq"}, {"id": "own", "source": "local"}],
            "flows": [],
            "fleet": {"version": 7, "source": "hq", "clashes": ["campaign 'own' from HQ has the id of a campaign in the local configuration; the local campaign stays"],
                      "url": "https://hq/v1/fleet", "poll_ms": 60000, "last_fetch_at": "t1",
                      "last_heartbeat_at": "t2", "last_error": null, "failures": 0,
                      "refused": {"version": 8, "errors": ["HQ config v8, campaign 'x':3:11: bad"], "at": "t3"}}
        });
        let text = render(&status);
        assert!(text.contains("store WZ-LC-001  gateway gw-1"), "{text}");
        assert!(text.contains("disconnected"), "{text}");
        assert!(text.contains("No such file or directory"), "{text}");
        assert!(text.contains("backlog 3 records (1500 bytes)"), "{text}");
        assert!(text.contains("last error: cannot reach HQ"), "{text}");
        assert!(text.contains("open prompts: 1"), "{text}");
        assert!(text.contains("completeness 75%"), "{text}");
        assert!(text.contains("pairing token (for clerk screens on other machines, at /pair): 0123456789abcdef0123456789abcdef"), "{text}");
        assert!(!text.contains("damaged at start"), "{text}");
        assert!(
            text.contains(
                "fleet: HQ configuration v7, https://hq/v1/fleet, last fetch t1, last heartbeat t2"
            ),
            "{text}"
        );
        assert!(text.contains("HQ configuration v8 refused at t3 (the one in force stays):\n    HQ config v8, campaign 'x':3:11: bad"), "{text}");
        assert!(text.contains("clash: campaign 'own' from HQ"), "{text}");
        assert!(
            text.contains("campaigns: xinsong-2026q4 (hq), own (local)"),
            "{text}"
        );
        assert!(!text.contains("flows:"), "{text}");
        let mut replaced = status.clone();
        replaced["journal"]["replaced"] = serde_json::json!({
            "reason": "segment file segments/00000000000000003606.seg is missing",
            "quarantine": "/var/lib/posgw/quarantine-20261206T210000Z"
        });
        let text = render(&replaced);
        assert!(
            text.contains("damaged at start, moved to /var/lib/posgw/quarantine-20261206T210000Z: segment file segments/00000000000000003606.seg is missing"),
            "{text}"
        );
        // An older gateway without the extensions still renders.
        let text = render(&serde_json::json!({"store": "S"}));
        assert!(text.contains("open prompts: 0"), "{text}");
    }
}
