//! Integration tests that drive the built `posgw` binary like a user would: real pseudo-terminals
//! for the scanners, real HTTP on loopback for the API, real signals (SIGTERM, SIGKILL).

mod fake_hq;
mod harness;
mod hq_dashboard;
mod hq_e2e;
mod mosquitto;

mod api_access;
mod api_bounds;
mod browser;
mod cli;
mod crash;
mod duplex;
mod journal_damage;
mod metrics;
mod mqtt_devices;
mod mqtt_once;
mod mqtt_oversize;
mod mqtt_prompts;
mod mqtt_uplink;
mod noise;
mod prompts;
mod registers;
mod serial;
mod uplink;
