//! Alert delivery to group robots (企业微信 WeCom, 钉钉 DingTalk, 飞书 Feishu/Lark) and plain
//! JSON webhooks. So far: the `[[notify]]` targets (`settings`), whose URL and signing secret
//! are read from files and never logged or put in error messages, and one delivery attempt
//! per kind (`vendor`, `sign`, `send`).
//!
//! # Code map
//!
//! - `settings`: `[[notify]]` as written ([`RawNotify`]) and validated ([`validate_notify`],
//!   called like `validate_users` in `config.rs`, giving [`NotifySettings`]); the URL rules.
//! - `handle`: the [`Notice`] delivered.
//! - `vendor`: message formats and answers per kind. `sign`: signatures. `send`: one attempt
//!   over HTTP, failure reasons scrubbed of the URL and secret.

// Nothing outside the tests calls into this module until HQ's config and server wire it in.
#![cfg_attr(not(test), allow(dead_code))]

mod handle;
mod send;
mod settings;
mod sign;
mod vendor;

// The API HQ's config and server call; unused until they do.
#[allow(unused_imports)]
pub(crate) use handle::Notice;
#[allow(unused_imports)]
pub(crate) use settings::{validate_notify, NotifyKind, NotifySettings, RawNotify};
