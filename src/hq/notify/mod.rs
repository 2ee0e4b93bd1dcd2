//! Alert delivery to group robots (企业微信 WeCom, 钉钉 DingTalk, 飞书 Feishu/Lark) and plain
//! JSON webhooks. So far: the `[[notify]]` targets (`settings`), whose URL and signing secret
//! are read from files and never logged or put in error messages.
//!
//! # Code map
//!
//! - `settings`: `[[notify]]` as written ([`RawNotify`]) and validated ([`validate_notify`],
//!   called like `validate_users` in `config.rs`, giving [`NotifySettings`]); the URL rules.

// Nothing outside the tests calls into this module until HQ's config wires it in.
#![cfg_attr(not(test), allow(dead_code))]

mod settings;

// The API HQ's config calls; unused until it does.
#[allow(unused_imports)]
pub(crate) use settings::{validate_notify, NotifyKind, NotifySettings, RawNotify};
