//! Integration tests that drive the built `posgw` binary like a user would: real pseudo-terminals
//! for the scanners, real HTTP on loopback for the API, real signals (SIGTERM, SIGKILL).

mod fake_hq;
mod harness;
mod hq_dashboard;
mod hq_e2e;
mod mosquitto;

mod browser;
mod cli;
mod crash;
mod mqtt_devices;
mod mqtt_once;
mod mqtt_prompts;
mod mqtt_uplink;
mod prompts;
mod registers;
mod serial;
mod uplink;
