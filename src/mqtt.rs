//! MQTT connection settings shared by everything that talks to a broker (the MQTT uplink, MQTT
//! devices and the prompt channel): URL parsing, a stable client id, credentials and TLS (rustls
//! with the system's root certificates); and, in `oversize`, what keeps a message over the size
//! limit from stopping a connection to the store's broker.

mod oversize;

pub use oversize::{OversizeGuard, OversizeMarker};

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rumqttc::{MqttOptions, TlsConfiguration, Transport};

/// Keep-alive interval: a dead connection is noticed within about 1.5 times this.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// An `mqtt://` or `mqtts://` address, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// TLS when the scheme is `mqtts`.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port; 1883 (or 8883 with TLS) when absent.
    pub port: u16,
    /// The path without its leading `/` (the topic, for uplink endpoints); may be empty.
    pub path: String,
}

impl BrokerUrl {
    /// Parses `mqtt(s)://host[:port][/path]`.
    pub fn parse(url: &str) -> anyhow::Result<BrokerUrl> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            bail!("'{url}' is not an mqtt:// or mqtts:// address");
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port_text) = match authority.strip_prefix('[') {
            // An IPv6 address: [::1] or [::1]:1883.
            Some(rest) => {
                let (host, after) = rest
                    .split_once(']')
                    .with_context(|| format!("unclosed '[' in '{url}'"))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port_text {
            Some(port) => port
                .parse::<u16>()
                .with_context(|| format!("bad port in '{url}'"))?,
            None => default_port,
        };
        if host.is_empty() {
            bail!("'{url}' has no host");
        }
        Ok(BrokerUrl {
            tls,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// A stable client id for one role of one gateway, so the broker keeps its session across
/// restarts: `posgw-{store}-{gateway}-{role}`.
pub fn client_id(store: &str, gateway: &str, role: &str) -> String {
    format!("posgw-{store}-{gateway}-{role}")
}

/// Connection options: persistent session (clean session off), keep-alive, credentials, TLS.
pub fn options(
    url: &BrokerUrl,
    client_id: &str,
    credentials: Option<(String, String)>,
    max_packet: usize,
) -> anyhow::Result<MqttOptions> {
    let mut options = MqttOptions::new(client_id, url.host.clone(), url.port);
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(false)
        .set_max_packet_size(max_packet, max_packet);
    if let Some((username, password)) = credentials {
        options.set_credentials(username, password);
    }
    if url.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config()?),
        )));
    }
    Ok(options)
}

/// Connection options for the store's own broker (`[mqtt]`), used by MQTT devices and the
/// prompt channel: client id `posgw-{store}-{gateway}-{role}` and [`store_credentials`].
pub fn store_broker_options(
    settings: &crate::config::MqttSettings,
    store: &str,
    gateway: &str,
    role: &str,
    max_packet: usize,
) -> anyhow::Result<MqttOptions> {
    let url = BrokerUrl::parse(&settings.url)?;
    options(
        &url,
        &client_id(store, gateway, role),
        store_credentials(settings)?,
        max_packet,
    )
}

/// The user name and password for the store's broker, if any: the password is the content of
/// `password_file` without its line break. A password file without a user name is an error.
pub fn store_credentials(
    settings: &crate::config::MqttSettings,
) -> anyhow::Result<Option<(String, String)>> {
    let password = match &settings.password_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read [mqtt] password_file {}", path.display()))?;
            // Editors and `echo` add a newline; anything else is part of the password.
            let password = text.strip_suffix('\n').unwrap_or(&text);
            Some(password.strip_suffix('\r').unwrap_or(password).to_owned())
        }
        None => None,
    };
    match (&settings.username, password) {
        (Some(username), password) => Ok(Some((username.clone(), password.unwrap_or_default()))),
        (None, Some(_)) => {
            bail!("[mqtt] password_file is set but username is not (MQTT needs a user name with a password)")
        }
        (None, None) => Ok(None),
    }
}

/// rustls client configuration with the system's root certificates and the ring provider.
fn tls_config() -> anyhow::Result<rustls::ClientConfig> {
    let roots = system_roots();
    if roots.is_empty() {
        bail!("no usable root certificates found on this system for mqtts://");
    }
    client_tls_config(roots)
}

/// The system's root certificates (also for `hq::pg`'s TLS).
pub(crate) fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A single unparsable system certificate must not disable TLS altogether.
        let _ = roots.add(cert);
    }
    roots
}

/// A rustls client configuration trusting `roots`, with the ring provider.
pub(crate) fn client_tls_config(
    roots: rustls::RootCertStore,
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_settings_and_the_password_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret \r\n").expect("write");
        let settings = |username: Option<&str>, password_file| crate::config::MqttSettings {
            url: "mqtt://127.0.0.1".into(),
            username: username.map(str::to_owned),
            password_file,
            max_message: 1024 * 1024,
        };
        assert_eq!(store_credentials(&settings(None, None)).expect("ok"), None);
        assert_eq!(
            store_credentials(&settings(Some("pos"), None)).expect("ok"),
            Some(("pos".into(), String::new()))
        );
        assert_eq!(
            store_credentials(&settings(Some("pos"), Some(file.clone()))).expect("ok"),
            Some(("pos".into(), "s3cret ".into())),
            "only the line break is dropped"
        );
        let error = store_credentials(&settings(None, Some(file))).unwrap_err();
        assert!(error.to_string().contains("username"), "{error}");
        let missing = dir.path().join("missing");
        let error = store_credentials(&settings(Some("pos"), Some(missing))).unwrap_err();
        assert!(error.to_string().contains("password_file"), "{error}");
    }

    #[test]
    fn parses_broker_urls() {
        let url = BrokerUrl::parse("mqtt://127.0.0.1:1884/hq/records").unwrap();
        assert_eq!(
            url,
            BrokerUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 1884,
                path: "hq/records".into()
            }
        );
        let url = BrokerUrl::parse("mqtts://broker.example").unwrap();
        assert_eq!((url.tls, url.port, url.path.as_str()), (true, 8883, ""));
        assert_eq!(BrokerUrl::parse("mqtt://[::1]:1884/t").unwrap().host, "::1");
        assert_eq!(BrokerUrl::parse("mqtt://[::1]:1884/t").unwrap().port, 1884);
        assert_eq!(BrokerUrl::parse("mqtt://[::1]/t").unwrap().port, 1883);
        assert!(BrokerUrl::parse("http://x/y").is_err());
        assert!(BrokerUrl::parse("mqtt://:1883").is_err());
        assert!(BrokerUrl::parse("mqtt://h:99999").is_err());
    }

    #[test]
    fn client_ids_are_stable() {
        assert_eq!(
            client_id("WZ-LC-001", "gw-1", "uplink"),
            "posgw-WZ-LC-001-gw-1-uplink"
        );
    }
}
