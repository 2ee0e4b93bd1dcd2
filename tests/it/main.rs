//! The one integration test binary. Most modules drive the built `posgw` binary like a user
//! would: real pseudo-terminals for the scanners, real HTTP on loopback for the API, real signals
//! (SIGTERM, SIGKILL). `config` loads configuration files through the library, `hq` runs the
//! reference HQ receiver over loopback, `pg` starts a throw-away PostgreSQL cluster (initdb in a
//! temp folder), and `packaging` checks the Debian package metadata and the systemd units against
//! the repository.

mod fake_hq;
mod harness;
mod hq;
mod hq_alerts;
mod hq_dashboard;
mod hq_e2e;
mod hq_fleet_dashboard;
mod hq_flow;
mod hq_management_dashboard;
mod hq_pg;
mod hq_users;
mod hq_yardsticks;
mod mosquitto;
mod pg;

mod api_access;
mod api_bounds;
mod browser;
mod cli;
mod config;
mod consult;
mod crash;
mod duplex;
mod fleet;
mod journal_damage;
mod metrics;
mod mqtt_devices;
mod mqtt_once;
mod mqtt_oversize;
mod mqtt_prompts;
mod mqtt_uplink;
mod noise;
mod packaging;
mod pg_cluster;
mod prompts;
mod registers;
mod serial;
mod uplink;
