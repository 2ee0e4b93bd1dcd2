//! Stage 3 of loading: the merged raw configuration into typed [`Settings`], section by section.
//!
//! Each section validates itself, in its own file under `sections/`, the way zincati's
//! `Settings::validate` hands each part of its configuration to that part's own constructor:
//! `[uplink]` is checked by `sections::uplink::validate`, and so on. This file only walks the
//! sections, hands each what it needs of the others (the profiles and whether `[mqtt]` is
//! present to `[[device]]`, the raw campaigns to `[answer_codes]`), and assembles [`Settings`]
//! when none of them recorded a problem.
//!
//! Every rule reports through [`Report`] with the position of the value (or, for a missing key,
//! of its table) and carries on, so one run lists every problem.

use std::path::{Path, PathBuf};

use super::profile::ProfileSet;
use super::raw::RawConfig;
use super::sections::{
    answer_codes, api, campaign, device, fleet, flow, gateway, mqtt, privacy, prompts, uplink,
};
use super::settings::Settings;
use super::source::Report;

/// Validates the merged configuration; `None` when a problem was recorded.
pub(crate) fn validate(
    report: &mut Report,
    raw: RawConfig,
    main_file: usize,
    path: &Path,
    base_dir: &Path,
    files: Vec<PathBuf>,
    profiles: ProfileSet,
) -> Option<Settings> {
    // The order matters only for problems at one position (a table's start), which keep it.
    let gateway = gateway::validate(report, raw.gateway.as_ref(), main_file, base_dir);
    let api = api::validate(report, raw.api.as_ref());
    let mqtt = raw
        .mqtt
        .as_ref()
        .and_then(|mqtt| mqtt::validate(report, mqtt, base_dir));
    let devices = device::validate(
        report,
        raw.device.as_deref().unwrap_or_default(),
        &profiles,
        raw.mqtt.is_some(),
        base_dir,
    );
    let campaigns = campaign::validate(report, raw.campaign.as_deref().unwrap_or_default());
    let answer_codes = answer_codes::validate(
        report,
        raw.answer_codes.as_ref(),
        raw.campaign.as_deref().unwrap_or_default(),
    );
    let uplink = raw
        .uplink
        .as_ref()
        .and_then(|uplink| uplink::validate(report, uplink, base_dir));
    let prompts = prompts::validate(report, raw.prompts.as_ref());
    let flows = flow::validate(
        report,
        raw.flow.as_deref().unwrap_or_default(),
        campaign::ids(raw.campaign.as_deref().unwrap_or_default()),
    );
    let privacy = privacy::validate(report, raw.privacy.as_ref(), base_dir);
    // `Some(None)`: a `[fleet]` with a problem (recorded).
    let fleet = raw
        .fleet
        .as_ref()
        .map(|section| fleet::validate(report, section, raw.uplink.as_ref(), base_dir));
    Some(Settings {
        path: path.to_path_buf(),
        files,
        gateway: gateway?,
        api: api?,
        prompts: prompts?,
        devices: devices?,
        mqtt,
        campaigns: campaigns?,
        answer_codes: answer_codes?,
        uplink,
        flows: flows?,
        privacy: privacy?,
        fleet: match fleet {
            Some(settings) => Some(settings?),
            None => None,
        },
        profiles,
    })
}
