//! posgw's configuration: the gateway config file, its drop-ins, and device profiles.
//!
//! [`load()`] turns `posgw.toml` into [`Settings`] in three stages, after zincati:
//!
//! 1. **Raw**: serde structs mirroring the TOML, every field optional, unknown keys rejected
//!    (`unknown key 'baudrate' in [[device]], did you mean 'baud'?`), every value wrapped with
//!    its file and byte span (`source::Located`; `source` also turns serde's errors into ours).
//! 2. **Merge** (`raw::RawConfig::merge`): the main file, then each `config.d/*.toml` beside it
//!    in file-name order. Tables merge key by key (later wins), `[[device]]` and `[[campaign]]`
//!    append, `[answer_codes]` merges key by key. Device profiles are loaded alongside: the
//!    built-in `drivers/*.toml`, overridden or extended by `drivers.d/*.toml` beside the config.
//! 3. **Validate** (`validate`): defaults filled in, values parsed (durations, sizes, dates,
//!    addresses), cross-field rules checked, relative paths resolved against the config file's
//!    folder. Every problem is collected, not just the first.
//!
//! The code is cut by section, not by stage, like zincati's `Settings::validate` handing each
//! part of its config to that part's own constructor: `sections/NAME.rs` holds everything about
//! one table of the file (`sections/uplink.rs` for `[uplink]`, `sections/device.rs` for
//! `[[device]]`): the table as written, how drop-ins merge over it, its settings type, its
//! defaults and ranges, and its `validate`. So a new `[uplink]` key touches `uplink.rs` alone.
//! The stage files only put the sections together: `raw` (the whole file as written), `validate`
//! (walks the sections in order, handing each what it needs of the others) and `settings` (the
//! whole [`Settings`] and its summary). `profile/` is the same pipeline for device profiles,
//! split by job: `load` (built-in and `drivers.d/` files), `validate` (one file) and `settings`
//! (the types). Around them: `load` (the pipeline), `check` (value checks the sections share),
//! `units` (durations, sizes, escapes), `device_kind` (`Role` and `Transport`, which both a
//! `[[device]]` and a profile use), `error`, and `fleet` (HQ's campaigns, flows, answer codes
//! and skip reasons as JSON in the gateway's keys, joined to the local files by
//! [`load_with_fleet`] before validation, and rendered back from settings for HQ to serve).
//!
//! Errors come back as one [`ConfigError`] listing `PATH:LINE:COL: message` lines, which
//! `posgw check-config` prints as is (exit status 2).

pub(crate) mod check;
mod device_kind;
mod error;
pub(crate) mod fleet;
mod load;
mod profile;
pub(crate) mod raw;
pub(crate) mod sections;
mod settings;
pub(crate) mod source;
mod units;
mod validate;

pub use device_kind::{Role, Transport};
pub use error::{ConfigError, Diagnostic, Position};
pub use fleet::{campaign_json, flow_json, option_keys, FleetApplied, FleetDocument};
pub use load::{load, load_with_fleet, Loaded};
pub use profile::{
    DecoderKind, EscposSettings, FlowControl, FramingSettings, LineSettings, Parity, PayloadFormat,
    PayloadSettings, Profile, ProfileSet,
};
pub use sections::api::ApiSettings;
pub use sections::campaign::{CampaignSettings, PromptOption, SkuPattern};
pub use sections::device::{DeviceSettings, SerialSettings, TcpTapSettings};
pub use sections::fleet::FleetSettings;
pub use sections::gateway::GatewaySettings;
pub use sections::mqtt::MqttSettings;
pub use sections::privacy::PrivacySettings;
pub use sections::prompts::PromptSettings;
pub use sections::uplink::{Compression, UplinkSettings};
pub use settings::Settings;
pub use units::{format_duration, format_size, parse_duration, parse_size};
