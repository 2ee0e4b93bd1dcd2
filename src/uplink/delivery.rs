//! [`Delivery`]: HQ's verdict on one delivery attempt, as each transport (`http`, `mqtt`) reports
//! it to the uplink task. Its own module so the transports need nothing else from `uplink`.

use std::time::Duration;

/// HQ's verdict on one delivery attempt.
#[derive(Debug)]
pub enum Delivery {
    /// Every record is durably stored at HQ.
    Accepted,
    /// The body was too large (413).
    TooLarge,
    /// HQ refused the records for good (400, 422), with its reason.
    Rejected(String),
    /// Try again later; `after` is HQ's `Retry-After`, when it gave one.
    Retry {
        /// What went wrong, for the status.
        error: String,
        /// HQ's `Retry-After`.
        after: Option<Duration>,
    },
}
