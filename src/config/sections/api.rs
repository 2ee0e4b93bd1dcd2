//! `[api]`: where the local HTTP API and clerk page listen, and the host names they answer to:
//! the table as written, how a drop-in merges over it, its settings, and the validation between
//! them.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::source::{mergeable_table, Located, Report};

/// `[api] listen` when not set.
const DEFAULT_LISTEN: &str = "127.0.0.1:7380";

mergeable_table! {
    /// `[api]` as written.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RawApi {
        /// Address to bind; default `127.0.0.1:7380`.
        pub listen: Option<Located<String>>,
        /// Host names the API answers to besides IP addresses, localhost and the machine's name.
        pub hosts: Option<Located<Vec<Located<String>>>>,
    }
}

/// `[api]`: the local HTTP API and clerk page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// Address to bind; default `127.0.0.1:7380`.
    pub listen: SocketAddr,
    /// Extra host names the API answers to (lowercase), for the `Host` check.
    pub hosts: Vec<String>,
}

/// Validates `[api]`; every key has a default, so a missing section is the defaults.
pub(crate) fn validate(report: &mut Report, raw: Option<&Located<RawApi>>) -> Option<ApiSettings> {
    let listen = raw.and_then(|api| api.value.listen.as_ref());
    let hosts = raw.and_then(|api| api.value.hosts.as_ref());
    let mut names = Vec::new();
    for host in hosts
        .map(|hosts| hosts.value.as_slice())
        .unwrap_or_default()
    {
        let name = host.value.trim().trim_end_matches('.').to_ascii_lowercase();
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if valid {
            names.push(name);
        } else {
            report.error(
                &host.span,
                format!("'hosts' in [api] must be host names without port or scheme, like \"till-pc.store.example\", found '{}'", host.value),
            );
        }
    }
    let Some(listen) = listen else {
        return DEFAULT_LISTEN.parse().ok().map(|listen| ApiSettings {
            listen,
            hosts: names,
        });
    };
    match listen.value.parse::<SocketAddr>() {
        Ok(address) => Some(ApiSettings {
            listen: address,
            hosts: names,
        }),
        Err(_) => {
            report.error(
                &listen.span,
                format!("'listen' in [api] must be an IP address and port like \"127.0.0.1:7380\", found '{}'", listen.value),
            );
            None
        }
    }
}
