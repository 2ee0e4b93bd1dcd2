//! Campaigns and flows from HQ, and heartbeats (placeholder, filled in below).

pub mod wire;
