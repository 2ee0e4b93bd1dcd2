//! Each kind of target's message format and what answer counts as delivered, as pure
//! functions: [`message`] turns a [`Notice`] into the URL and JSON body of one attempt (signed
//! afresh with the time given), [`judge`] reads the answer.
//!
//! | kind | body | signing | success |
//! |---|---|---|---|
//! | wecom | `{"msgtype":"markdown","markdown":{"content"}}`, content ≤ 4096 bytes | none | 2xx and `errcode` 0 |
//! | dingtalk | `{"msgtype":"markdown","markdown":{"title","text"}}` | `&timestamp=&sign=` in the query | 2xx and `errcode` 0 |
//! | feishu | `{"msg_type":"interactive","card":…}`, a markdown element | `"timestamp"`, `"sign"` in the body | 2xx and `code` (or older `StatusCode`) 0 |
//! | webhook | the alert JSON as given | none | 2xx |

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::handle::Notice;
use super::settings::{NotifyKind, NotifySettings};
use super::sign;

/// WeCom's limit on a markdown message's content, in bytes of UTF-8.
pub(crate) const WECOM_CONTENT_MAX: usize = 4096;
/// Most characters of a vendor's error message kept in a failure's reason.
const VENDOR_MESSAGE_MAX: usize = 200;

/// One attempt's request: where to post and what.
pub(crate) struct Message {
    /// The target's URL, with DingTalk's signature appended when it signs; never logged.
    pub url: String,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// The request delivering `notice` to `target`, signed for `now` where the kind signs.
pub(crate) fn message(target: &NotifySettings, notice: &Notice, now: DateTime<Utc>) -> Message {
    let (url, body) = match target.kind {
        NotifyKind::Wecom => {
            let content = cut_utf8(
                &format!("{}\n{}", notice.title, notice.markdown),
                WECOM_CONTENT_MAX,
            );
            (
                target.url.clone(),
                json!({"msgtype": "markdown", "markdown": {"content": content}}),
            )
        }
        NotifyKind::Dingtalk => {
            // DingTalk shows `title` only in the conversation list; the body repeats it as a
            // heading, as its documentation's examples do.
            let text = format!("#### {}\n\n{}", notice.title, notice.markdown);
            let url = match &target.secret {
                Some(secret) => {
                    sign::dingtalk_signed_url(&target.url, secret, now.timestamp_millis())
                }
                None => target.url.clone(),
            };
            (
                url,
                json!({"msgtype": "markdown", "markdown": {"title": notice.title, "text": text}}),
            )
        }
        NotifyKind::Feishu => {
            let mut body = json!({
                "msg_type": "interactive",
                "card": {
                    "header": {
                        "template": "red",
                        "title": {"tag": "plain_text", "content": notice.title},
                    },
                    "elements": [{"tag": "markdown", "content": notice.markdown}],
                },
            });
            if let Some(secret) = &target.secret {
                let timestamp = now.timestamp();
                body["timestamp"] = Value::String(timestamp.to_string());
                body["sign"] = Value::String(sign::feishu_sign(secret, timestamp));
            }
            (target.url.clone(), body)
        }
        NotifyKind::Webhook => (target.url.clone(), notice.alert.clone()),
    };
    Message {
        url,
        // Serialising a `Value` cannot fail.
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

/// `text` cut to at most `max` bytes on a character boundary, ending with "…" when cut.
pub(crate) fn cut_utf8(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    const ELLIPSIS: &str = "…";
    let mut end = max.saturating_sub(ELLIPSIS.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &text[..end])
}

/// Whether an answer means delivered: `Ok`, or the reason it does not (the vendor's code and
/// message, never the URL). `body` is `None` when it was larger than the bound read.
pub(crate) fn judge(kind: NotifyKind, status: u16, body: Option<&[u8]>) -> Result<(), String> {
    let vendor = body.and_then(|body| vendor_answer(kind, body));
    if !(200..300).contains(&status) {
        return Err(match vendor {
            Some((code, message)) => format!("HTTP {status} (code {code}: {message})"),
            None => format!("HTTP {status}"),
        });
    }
    if kind == NotifyKind::Webhook {
        return Ok(());
    }
    let Some(body) = body else {
        return Err(format!(
            "HTTP {status} with an answer too large to be the {} robot's",
            kind.name()
        ));
    };
    match vendor {
        Some((0, _)) => Ok(()),
        Some((code, message)) => Err(format!("HTTP {status}, code {code}: {message}")),
        None => Err(format!(
            "HTTP {status} without the {} robot's result code ({} bytes)",
            kind.name(),
            body.len()
        )),
    }
}

/// The vendor's result code and message in an answer body, if it has one.
fn vendor_answer(kind: NotifyKind, body: &[u8]) -> Option<(i64, String)> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    let (code, message) = match kind {
        NotifyKind::Wecom | NotifyKind::Dingtalk => (answer.get("errcode")?, answer.get("errmsg")),
        // Current answers carry `code`/`msg`; older ones only `StatusCode`/`StatusMessage`.
        NotifyKind::Feishu => match answer.get("code") {
            Some(code) => (code, answer.get("msg")),
            None => (answer.get("StatusCode")?, answer.get("StatusMessage")),
        },
        NotifyKind::Webhook => return None,
    };
    let message = message.and_then(Value::as_str).unwrap_or("");
    let message: String = message.chars().take(VENDOR_MESSAGE_MAX).collect();
    Some((code.as_i64()?, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice() -> Notice {
        Notice {
            alert_id: "a-1".into(),
            title: "【预警】WZ-LC-001 医保核验通过率连续2天低于65%".into(),
            markdown: "- 11-26: 60%\n- 11-27: 58%".into(),
            text: "11-26: 60%, 11-27: 58%".into(),
            alert: json!({"id": "a-1"}),
        }
    }

    fn target(kind: NotifyKind, secret: Option<&str>) -> NotifySettings {
        NotifySettings {
            id: "t".into(),
            kind,
            url: "https://robot.example/send?access_token=tok".into(),
            secret: secret.map(str::to_string),
        }
    }

    fn json_of(message: &Message) -> Value {
        serde_json::from_slice(&message.body).expect("json")
    }

    #[test]
    fn wecom_sends_title_and_markdown_as_content() {
        let message = message(&target(NotifyKind::Wecom, None), &notice(), Utc::now());
        let body = json_of(&message);
        assert_eq!(body["msgtype"], "markdown");
        assert_eq!(
            body["markdown"]["content"],
            format!("{}\n{}", notice().title, notice().markdown)
        );
        assert_eq!(message.url, "https://robot.example/send?access_token=tok");
    }

    #[test]
    fn wecom_content_is_cut_on_a_character_boundary() {
        let mut long = notice();
        long.markdown = "预警".repeat(2000); // 12000 bytes
        let message = message(&target(NotifyKind::Wecom, None), &long, Utc::now());
        let content = json_of(&message)["markdown"]["content"]
            .as_str()
            .expect("content")
            .to_string();
        assert!(content.len() <= WECOM_CONTENT_MAX, "{}", content.len());
        assert!(content.len() > WECOM_CONTENT_MAX - 6, "{}", content.len());
        assert!(content.ends_with('…'));
        assert_eq!(cut_utf8("abc", 3), "abc");
        assert_eq!(cut_utf8("abcdef", 5), "ab…");
        assert_eq!(cut_utf8("预警预警", 8), "预…");
    }

    #[test]
    fn dingtalk_signs_in_the_query_for_that_moment() {
        let now = DateTime::from_timestamp_millis(1_700_000_000_000).expect("time");
        let message = message(&target(NotifyKind::Dingtalk, Some("SECx")), &notice(), now);
        assert_eq!(
            message.url,
            format!(
                "https://robot.example/send?access_token=tok&timestamp=1700000000000&sign={}",
                sign::dingtalk_sign("SECx", 1_700_000_000_000)
            )
        );
        let body = json_of(&message);
        assert_eq!(body["msgtype"], "markdown");
        assert_eq!(body["markdown"]["title"], notice().title);
        assert!(body["markdown"]["text"]
            .as_str()
            .expect("text")
            .ends_with(&notice().markdown));
        let unsigned = super::message(&target(NotifyKind::Dingtalk, None), &notice(), now);
        assert_eq!(unsigned.url, "https://robot.example/send?access_token=tok");
    }

    #[test]
    fn feishu_sends_a_card_signed_in_the_body() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let message = message(&target(NotifyKind::Feishu, Some("SECx")), &notice(), now);
        let body = json_of(&message);
        assert_eq!(body["msg_type"], "interactive");
        assert_eq!(body["card"]["header"]["title"]["content"], notice().title);
        assert_eq!(body["card"]["elements"][0]["tag"], "markdown");
        assert_eq!(body["card"]["elements"][0]["content"], notice().markdown);
        assert_eq!(body["timestamp"], "1700000000");
        assert_eq!(body["sign"], sign::feishu_sign("SECx", 1_700_000_000));
        let unsigned = super::message(&target(NotifyKind::Feishu, None), &notice(), now);
        assert!(json_of(&unsigned).get("sign").is_none());
    }

    #[test]
    fn webhook_posts_the_alert_as_is() {
        let message = message(&target(NotifyKind::Webhook, None), &notice(), Utc::now());
        assert_eq!(json_of(&message), json!({"id": "a-1"}));
    }

    #[test]
    fn answers_are_judged_by_status_and_vendor_code() {
        use NotifyKind::*;
        let ok = Some(&br#"{"errcode":0,"errmsg":"ok"}"#[..]);
        assert_eq!(judge(Wecom, 200, ok), Ok(()));
        assert_eq!(judge(Dingtalk, 200, ok), Ok(()));
        assert_eq!(
            judge(
                Wecom,
                200,
                Some(br#"{"errcode":93000,"errmsg":"invalid webhook url"}"#)
            ),
            Err("HTTP 200, code 93000: invalid webhook url".into())
        );
        assert_eq!(
            judge(
                Dingtalk,
                200,
                Some(br#"{"errcode":310000,"errmsg":"sign not match"}"#)
            ),
            Err("HTTP 200, code 310000: sign not match".into())
        );
        assert_eq!(
            judge(
                Feishu,
                200,
                Some(br#"{"code":0,"msg":"success","data":{}}"#)
            ),
            Ok(())
        );
        assert_eq!(
            judge(
                Feishu,
                200,
                Some(br#"{"StatusCode":0,"StatusMessage":"success"}"#)
            ),
            Ok(())
        );
        assert_eq!(
            judge(
                Feishu,
                200,
                Some(br#"{"code":19021,"msg":"sign match fail"}"#)
            ),
            Err("HTTP 200, code 19021: sign match fail".into())
        );
        assert!(judge(Wecom, 200, Some(b"<html>ok</html>")).is_err());
        assert!(judge(Wecom, 200, None).is_err());
        assert_eq!(judge(Wecom, 500, Some(b"oops")), Err("HTTP 500".into()));
        assert_eq!(
            judge(
                Dingtalk,
                429,
                Some(br#"{"errcode":130101,"errmsg":"send too fast"}"#)
            ),
            Err("HTTP 429 (code 130101: send too fast)".into())
        );
        assert_eq!(judge(Webhook, 204, None), Ok(()));
        assert_eq!(judge(Webhook, 200, Some(b"anything")), Ok(()));
        assert_eq!(judge(Webhook, 404, Some(b"")), Err("HTTP 404".into()));
    }
}
