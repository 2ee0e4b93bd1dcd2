//! `[[notify]]`: the group robots and webhooks alerts are delivered to, as written
//! ([`RawNotify`]) and validated ([`NotifySettings`], by [`validate_notify`]).
//!
//! A target's URL and signing secret live in files (`url_file`, `secret_file`, relative to the
//! config file's folder like every `*_file` key), because a robot's URL is itself a credential:
//! anyone holding a WeCom or DingTalk robot URL can post to the group. Neither is ever logged
//! or put in an error message; `NotifySettings`'s `Debug` prints `<redacted>` for both.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::check;
use crate::config::source::{Located, Report, Span};

/// Characters besides ASCII letters and digits allowed in a target id.
const ID_EXTRA: &[char] = &['-', '_', '.'];
/// Most bytes of a URL or secret file read: far above any real URL or secret.
const FILE_LIMIT: u64 = 64 * 1024;

/// Which kind of robot a target is, which decides the message format, signing and what
/// answer counts as a success (`vendor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum NotifyKind {
    /// 企业微信 (WeCom) group robot: markdown, no signing, `errcode` in the answer.
    Wecom,
    /// 钉钉 (DingTalk) custom robot: markdown, optional signing in the query, `errcode`.
    Dingtalk,
    /// 飞书 (Feishu/Lark) custom bot: a card with markdown, optional signing in the body, `code`.
    Feishu,
    /// A plain JSON webhook: the alert JSON as is; any 2xx is a success.
    Webhook,
}

impl NotifyKind {
    /// The name as written in the config (`kind = "wecom"`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            NotifyKind::Wecom => "wecom",
            NotifyKind::Dingtalk => "dingtalk",
            NotifyKind::Feishu => "feishu",
            NotifyKind::Webhook => "webhook",
        }
    }

    /// Whether the kind signs its messages with a secret (`secret_file` allowed).
    fn signs(self) -> bool {
        matches!(self, NotifyKind::Dingtalk | NotifyKind::Feishu)
    }
}

/// The kinds by config name, for [`check::choice`].
const KINDS: &[(&str, NotifyKind)] = &[
    ("wecom", NotifyKind::Wecom),
    ("dingtalk", NotifyKind::Dingtalk),
    ("feishu", NotifyKind::Feishu),
    ("webhook", NotifyKind::Webhook),
];

/// One validated `[[notify]]` target.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct NotifySettings {
    /// The target's id, which `[[region]] notify` lists name.
    pub id: String,
    /// The robot's kind.
    pub kind: NotifyKind,
    /// The URL messages are posted to (first line of `url_file`); a credential, never logged.
    pub url: String,
    /// The signing secret (first line of `secret_file`; dingtalk and feishu only); never logged.
    pub secret: Option<String>,
}

impl std::fmt::Debug for NotifySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifySettings")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("url", &"<redacted>")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One `[[notify]]` as written. The lead adds `notify: Option<Vec<Located<RawNotify>>>` to
/// the HQ config's raw struct; drop-ins append, as for `[[store]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    /// Target id; required, unique.
    pub id: Option<Located<String>>,
    /// `wecom`, `dingtalk`, `feishu` or `webhook`; required.
    pub kind: Option<Located<String>>,
    /// File whose first line is the robot's webhook URL; required.
    pub url_file: Option<Located<String>>,
    /// File whose first line is the signing secret (dingtalk and feishu only); optional.
    pub secret_file: Option<Located<String>>,
}

/// `[[notify]]`: ids unique, kinds known, URL and secret files readable, the URL http(s)
/// (https for the robots unless the host is loopback), `secret_file` only where it is used.
/// Every problem is reported at the key it is about; only valid targets are returned.
pub(crate) fn validate_notify(
    report: &mut Report,
    raw: Vec<Located<RawNotify>>,
    base_dir: &Path,
) -> Vec<NotifySettings> {
    let mut targets = Vec::new();
    let mut ids: HashMap<String, Span> = HashMap::new();
    for target in raw {
        let table = target.span.clone();
        let target = target.value;
        let id = match &target.id {
            Some(id) => check::identifier(report, id, "'id' in [[notify]]", ID_EXTRA),
            None => {
                report.error(
                    &table,
                    "missing 'id' in [[notify]] (like \"east-wz-supervisors\")",
                );
                None
            }
        };
        let mut twice = false;
        if let (Some(id), Some(written)) = (&id, &target.id) {
            if let Some(first) = ids.get(id) {
                twice = true;
                let first = report.describe(first);
                report.error(
                    &written.span,
                    format!("notify target '{id}' is configured twice (first at {first})"),
                );
            } else {
                ids.insert(id.clone(), written.span.clone());
            }
        }
        let label = id.clone().unwrap_or_else(|| "?".to_string());
        let kind = match &target.kind {
            Some(kind) => {
                check::choice(report, kind, &format!("'kind' of notify '{label}'"), KINDS)
            }
            None => {
                report.error(
                    &table,
                    format!(
                        "missing 'kind' in [[notify]] '{label}' (wecom, dingtalk, feishu or webhook)"
                    ),
                );
                None
            }
        };
        let url = match &target.url_file {
            Some(file) => read_first_line(report, base_dir, file, "url_file", &label).and_then(
                |(url, path)| match check_url(&url, kind) {
                    Ok(()) => Some(url),
                    Err(problem) => {
                        report.error(
                            &file.span,
                            format!(
                                "the URL in url_file '{}' of notify '{label}' {problem}",
                                path.display()
                            ),
                        );
                        None
                    }
                },
            ),
            None => {
                report.error(
                    &table,
                    format!(
                        "missing 'url_file' in [[notify]] '{label}' (a file holding the robot's \
                         webhook URL)"
                    ),
                );
                None
            }
        };
        let secret = match (&target.secret_file, kind) {
            (None, _) => Some(None),
            (Some(file), Some(kind)) if !kind.signs() => {
                report.error(
                    &file.span,
                    format!(
                        "notify '{label}' is of kind '{}', which takes no 'secret_file' (only \
                         dingtalk and feishu robots sign their messages)",
                        kind.name()
                    ),
                );
                None
            }
            (Some(file), _) => read_first_line(report, base_dir, file, "secret_file", &label)
                .map(|(secret, _)| Some(secret)),
        };
        if let (Some(id), Some(kind), Some(url), Some(secret)) = (id, kind, url, secret) {
            if !twice {
                targets.push(NotifySettings {
                    id,
                    kind,
                    url,
                    secret,
                });
            }
        }
    }
    targets
}

/// The first line of the file `value` names, trimmed, and the file's path; problems (never
/// the content) are reported at the key.
fn read_first_line(
    report: &mut Report,
    base_dir: &Path,
    value: &Located<String>,
    key: &str,
    label: &str,
) -> Option<(String, PathBuf)> {
    use std::io::Read as _;
    let path = check::path(
        report,
        base_dir,
        value,
        &format!("'{key}' of notify '{label}'"),
    )?;
    let mut bytes = Vec::new();
    let read = std::fs::File::open(&path).and_then(|file| {
        if file.metadata()?.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "it is a folder",
            ));
        }
        file.take(FILE_LIMIT).read_to_end(&mut bytes)
    });
    if let Err(error) = read {
        report.error(
            &value.span,
            format!(
                "cannot read {key} '{}' of notify '{label}': {error}",
                path.display()
            ),
        );
        return None;
    }
    let Ok(text) = String::from_utf8(bytes) else {
        report.error(
            &value.span,
            format!(
                "{key} '{}' of notify '{label}' is not UTF-8 text",
                path.display()
            ),
        );
        return None;
    };
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        report.error(
            &value.span,
            format!(
                "{key} '{}' of notify '{label}' is empty (its first line is used)",
                path.display()
            ),
        );
        return None;
    }
    Some((line.to_string(), path))
}

/// Checks a target's URL; the problem, if any, completes "the URL in url_file 'PATH' of notify
/// 'ID' …" and never quotes the URL. `kind` is `None` when the kind itself was invalid.
fn check_url(text: &str, kind: Option<NotifyKind>) -> Result<(), String> {
    let url = reqwest::Url::parse(text)
        .map_err(|error| format!("is not a valid http or https URL ({error})"))?;
    let Some(host) = url.host_str().filter(|host| !host.is_empty()) else {
        return Err("has no host".to_string());
    };
    // `host_str` writes an IPv6 address in brackets.
    let loopback = match host.trim_start_matches('[').trim_end_matches(']').parse() {
        Ok(address) => std::net::IpAddr::is_loopback(&address),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    match (url.scheme(), kind) {
        ("https", _) => Ok(()),
        ("http", Some(NotifyKind::Webhook) | None) => Ok(()),
        ("http", Some(_)) if loopback => Ok(()),
        ("http", Some(kind)) => Err(format!(
            "must start with https:// (a {} robot's URL is a credential; plain http is allowed \
             only to a loopback host)",
            kind.name()
        )),
        (scheme, _) => Err(format!(
            "has scheme '{scheme}', expected http:// or https://"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a config file with only `[[notify]]` tables parses into.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        notify: Option<Vec<Located<RawNotify>>>,
    }

    /// A config folder with URL and secret files.
    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in [
            (
                "wecom.url",
                "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k-123\n",
            ),
            (
                "ding.url",
                "  https://oapi.dingtalk.com/robot/send?access_token=t-456  \nsecond line\n",
            ),
            (
                "feishu.url",
                "https://open.feishu.cn/open-apis/bot/v2/hook/h-789",
            ),
            ("hook.url", "http://alerts.example.com/posgw"),
            (
                "plain.url",
                "http://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k",
            ),
            (
                "local.url",
                "http://127.0.0.1:9000/cgi-bin/webhook/send?key=k",
            ),
            ("ftp.url", "ftp://example.com/x"),
            ("junk.url", "not a url"),
            ("ding.secret", "SECabc\n"),
            ("empty.secret", "\n\n"),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        dir
    }

    /// Validates `text` as a config file in `dir`: the targets, or the report's lines.
    fn load(dir: &Path, text: &str) -> Result<Vec<NotifySettings>, String> {
        let mut report = Report::default();
        let file = report.add_file(dir.join("hq.toml"), text.to_string());
        let raw = report.parse::<File>(file).expect("parses");
        let targets = validate_notify(&mut report, raw.notify.unwrap_or_default(), dir);
        report
            .finish(targets)
            .map_err(|error| error.to_string().replace(&dir.display().to_string(), "DIR"))
    }

    #[test]
    fn every_kind_loads_with_first_lines_trimmed() {
        let dir = folder();
        let targets = load(
            dir.path(),
            r#"
[[notify]]
id = "east-wz-supervisors"
kind = "wecom"
url_file = "wecom.url"
[[notify]]
id = "east-ding"
kind = "dingtalk"
url_file = "ding.url"
secret_file = "ding.secret"
[[notify]]
id = "east-feishu"
kind = "feishu"
url_file = "feishu.url"
[[notify]]
id = "ops"
kind = "webhook"
url_file = "hook.url"
[[notify]]
id = "local"
kind = "wecom"
url_file = "local.url"
"#,
        )
        .expect("loads");
        let kinds: Vec<(&str, NotifyKind)> = targets
            .iter()
            .map(|target| (target.id.as_str(), target.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("east-wz-supervisors", NotifyKind::Wecom),
                ("east-ding", NotifyKind::Dingtalk),
                ("east-feishu", NotifyKind::Feishu),
                ("ops", NotifyKind::Webhook),
                ("local", NotifyKind::Wecom),
            ]
        );
        assert_eq!(
            targets[1].url,
            "https://oapi.dingtalk.com/robot/send?access_token=t-456"
        );
        assert_eq!(targets[1].secret.as_deref(), Some("SECabc"));
        assert_eq!(targets[0].secret, None);
    }

    #[test]
    fn debug_redacts_url_and_secret() {
        let target = NotifySettings {
            id: "east-ding".into(),
            kind: NotifyKind::Dingtalk,
            url: "https://oapi.dingtalk.com/robot/send?access_token=t-456".into(),
            secret: Some("SECabc".into()),
        };
        let text = format!("{target:?} {target:#?}");
        assert!(!text.contains("t-456"), "{text}");
        assert!(!text.contains("dingtalk.com"), "{text}");
        assert!(!text.contains("SECabc"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        assert!(text.contains("east-ding"), "{text}");
    }

    #[test]
    fn every_mistake_is_a_positioned_error_without_the_url() {
        let dir = folder();
        let error = load(
            dir.path(),
            r#"[[notify]]
id = "a"
kind = "wechat"
url_file = "wecom.url"
[[notify]]
id = "b"
kind = "wecom"
url_file = "missing.url"
[[notify]]
id = "c"
kind = "wecom"
url_file = "plain.url"
[[notify]]
id = "d"
kind = "wecom"
url_file = "wecom.url"
secret_file = "ding.secret"
[[notify]]
id = "a"
kind = "webhook"
url_file = "hook.url"
[[notify]]
id = "e"
kind = "dingtalk"
url_file = "ftp.url"
secret_file = "empty.secret"
[[notify]]
kind = "webhook"
url_file = "junk.url"
[[notify]]
id = "f"
kind = "webhook"
url_file = "hook.url"
secret_file = "ding.secret"
"#,
        )
        .expect_err("fails");
        let lines: Vec<&str> = error.lines().collect();
        let expected = [
            "DIR/hq.toml:3:8: 'kind' of notify 'a' must be one of wecom, dingtalk, feishu, webhook, found 'wechat'",
            "DIR/hq.toml:8:12: cannot read url_file 'DIR/missing.url' of notify 'b': No such file",
            "DIR/hq.toml:12:12: the URL in url_file 'DIR/plain.url' of notify 'c' must start with https:// (a wecom robot's URL is a credential; plain http is allowed only to a loopback host)",
            "DIR/hq.toml:17:15: notify 'd' is of kind 'wecom', which takes no 'secret_file'",
            "DIR/hq.toml:19:6: notify target 'a' is configured twice (first at DIR/hq.toml:2:6)",
            "DIR/hq.toml:25:12: the URL in url_file 'DIR/ftp.url' of notify 'e' has scheme 'ftp', expected http:// or https://",
            "DIR/hq.toml:26:15: secret_file 'DIR/empty.secret' of notify 'e' is empty",
            "DIR/hq.toml:27:1: missing 'id' in [[notify]]",
            "DIR/hq.toml:29:12: the URL in url_file 'DIR/junk.url' of notify '?' is not a valid http or https URL (relative URL without a base)",
            "DIR/hq.toml:34:15: notify 'f' is of kind 'webhook', which takes no 'secret_file'",
        ];
        assert_eq!(lines.len(), expected.len(), "{error}");
        for (line, expected) in lines.iter().zip(expected) {
            assert!(line.starts_with(expected), "{line}\nexpected {expected}");
        }
        for secret in ["k-123", "qyapi", "SECabc", "example.com"] {
            assert!(!error.contains(secret), "{secret} in {error}");
        }
    }

    #[test]
    fn urls_are_checked_by_kind_and_host() {
        use NotifyKind::*;
        assert!(check_url("https://qyapi.weixin.qq.com/x?key=1", Some(Wecom)).is_ok());
        assert!(check_url("http://qyapi.weixin.qq.com/x?key=1", Some(Wecom)).is_err());
        assert!(check_url("http://oapi.dingtalk.com/robot/send", Some(Dingtalk)).is_err());
        assert!(check_url("http://open.feishu.cn/hook/1", Some(Feishu)).is_err());
        assert!(check_url("http://127.0.0.1:1234/x", Some(Dingtalk)).is_ok());
        assert!(check_url("http://127.8.9.1:1234/x", Some(Feishu)).is_ok());
        assert!(check_url("http://[::1]:1234/x", Some(Wecom)).is_ok());
        assert!(check_url("http://localhost:1234/x", Some(Wecom)).is_ok());
        assert!(check_url("http://localhost.evil.com/x", Some(Wecom)).is_err());
        assert!(check_url("http://10.0.0.1/x", Some(Webhook)).is_ok());
        assert!(check_url("file:///etc/passwd", Some(Webhook)).is_err());
        let problem = check_url("https://", Some(Wecom)).expect_err("no host");
        assert!(!problem.contains("https://"), "{problem}");
    }
}
