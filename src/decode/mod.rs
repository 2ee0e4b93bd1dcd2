//! Scan decoding: turns one scanned frame into the decode fields of a `scan` record.
//!
//! Everything here is pure (no I/O, no clock, no async): the caller passes the bytes of one frame
//! (already cut out of the serial stream by `devices::framing`, or taken from an MQTT payload) and a
//! [`DecodeContext`], and gets a [`DecodedScan`] back. Nothing in here panics on any input; a frame
//! that cannot be decoded still yields a `DecodedScan` whose `error` says why.
//!
//! # Steps
//! 1. `aim`: an AIM symbology identifier (`]` + code letter + modifier, ISO/IEC 15424) is split off
//!    when present; `symbology` keeps it (`"]E0"`), `code` is the rest.
//! 2. `scan` classifies, in the order DOMAIN.md section 3 fixes (the order matters, because a GS1
//!    parser happily reads a 20-digit `8…` trace code as AIs):
//!    1. GS1 element string: a GS1 identifier (`]C1 ]d2 ]d5 ]Q3 ]Q4 ]e0`), or no identifier and the
//!       data starts with `01` + 14 digits with a valid check digit → `gs1` (module `gs1` parses it).
//!    2. exactly 20 digits starting with `8`, identifier `]C0` or none → `cn_trace` (format check only:
//!       the check position's algorithm is not published).
//!    3. retail codes (`retail`): `]E…` identifiers by length (13 → `ean13`, or `upca` when it starts
//!       with `0`; 12 → `upca`; 8 under `]E0` → UPC-E expanded to UPC-A; `]E4` → `ean8`; add-on packets
//!       keep the main code's GTIN); `]I0`/`]I1` with 14 digits → `itf14`. Without an identifier:
//!       13, 12, 8 or 14 digits *with a valid check digit* → `ean13`/`upca`, `upca`, `ean8`, `itf14`.
//!       With an identifier a bad check digit is an `error` (the scanner said what it read); without
//!       one, digits that fail the check are just some other code (`other`, no error), as DOMAIN.md's
//!       rule (3)/(4) says.
//!    4. `]Q…` (not GS1) → `qr`; `]C…` (not GS1) → `code128`; anything else → `other`, kept as is.
//!
//! # Text representation
//! - `code` and `trace_code` are JSON strings holding the data itself: GS stays the real character
//!   U+001D (serde_json writes it as `\u001d`). Bytes that are not valid UTF-8 are replaced by U+FFFD
//!   and `error` says so; the exact bytes are always recoverable from `raw`.
//! - `raw` is [`escape_raw`]: printable ASCII and printable non-ASCII UTF-8 as is, a backslash as
//!   `\\`, every other byte (controls, DEL, invalid UTF-8, the bytes of a Unicode control character)
//!   as `\xNN` with lowercase hex. The escaping is reversible: read `\\` as `\` and `\xNN` as the byte.
//!
//! # Errors
//! A decode problem never hides the data: `code`, `symbology`, `code_kind` (what the code looked
//! like) are always filled. Check-digit failures leave `gtin` empty. For GS1 strings the element
//! fields (`ai`, `gtin`, `expiry`, `lot`, `serial`) hold what was read *before* the failing element,
//! and `trace_code` holds the whole scanned string either way: a consumer that needs a trusted
//! trace code checks `error` first.

mod aim;
pub mod escpos;
mod gs1;
mod kind;
mod raw;
mod retail;
mod scan;

pub use kind::CodeKind;
pub use raw::{escape_raw, noise_reason};
pub use retail::check_digit;
pub use scan::{decode_scan, DecodeContext, DecodedScan};
