//! Device profiles: what a kind of device speaks, as data.
//!
//! Split by job: `settings` holds the validated types ([`Profile`], [`ProfileSet`], the line,
//! framing, payload and ESC/POS settings), `validate` reads one profile file into a [`Profile`]
//! (its raw serde structs, defaults, ranges and cross-field rules), and `load` gathers the
//! built-in profiles and those of `drivers.d/` into a [`ProfileSet`], a later one of a name
//! replacing the built-in one. None of them depends on the config file's sections: a
//! `[[device]]` refers to a profile (`sections::device`), never the other way round.
//!
//! A profile says which roles and transports it serves, which decoder turns its frames or
//! messages into records, the serial line defaults, how a serial byte stream is cut into frames,
//! how an MQTT payload is read, and (for receipt-printer taps) how ESC/POS text is decoded and
//! mined. Profiles are TOML files: the ones in the repository's `drivers/` folder are built into
//! the binary (`load::BUILT_IN`); a `drivers.d/` folder beside the config file adds profiles or
//! replaces a built-in one of the same name.
//!
//! # Format
//!
//! ```toml
//! name = "generic-scanner"          # default: the file name without .toml
//! description = "…"
//! roles = ["scanner"]               # scanner | register (required)
//! transports = ["serial"]           # serial | mqtt | tcp (required; tcp: escpos only)
//! decoder = "scan"                  # scan | json-sale | escpos (required); scan needs the scanner
//!                                   #   role, json-sale and escpos the register role
//! requires_passthrough = false      # devices using it must set `passthrough` (a printer tap)
//!
//! [serial]                          # line defaults; only with the serial transport
//! baud = 9600                       # default 9600
//! data_bits = 8                     # 5..8, default 8
//! parity = "none"                   # none | odd | even, default none
//! stop_bits = 1                     # 1 | 2, default 1
//! flow_control = "none"             # none | software | hardware, default none
//!
//! [framing]                         # how serial bytes become frames; only with the serial transport
//! terminators = ["cr", "lf"]        # any of cr, lf (CR LF counts once); [] for none; default both
//! suffix = ""                       # a custom terminator; escapes \t \r \n \\ \xNN; default none
//! strip_prefix = ""                 # removed from the start of a frame when present; default none
//! idle_gap = "80ms"                 # a frame also ends after this much silence; "0s" (default) disables
//! max_frame = 4096                  # longest frame in bytes (or a size like "64KiB"); default 4096
//!
//! [payload]                         # how an MQTT message is read; only with the mqtt transport
//! format = "auto"                   # auto (JSON object when it parses as one, else text) | text | json
//! code_field = "code"               # JSON field with the scanned data (AIM id included), default "code"
//! symbology_field = "symbology"     # JSON field with the AIM id when sent apart, default "symbology"
//!
//! [escpos]                          # ESC/POS receipt decoding; only with decoder = "escpos"
//! encoding = "gb18030"              # gb18030 | utf-8, default gb18030
//! chinese_mode = true               # FS & assumed on at start, default true
//! cr_ends_line = false              # some registers end lines with CR alone, default false
//! max_receipt = "256KiB"            # a receipt without a cut is closed at this size (default 256KiB)
//! receipt_timeout = "60s"           # ... or after this much silence with text pending (default 60s)
//! [escpos.patterns]                 # regexes applied to each decoded line; all optional
//! receipt = 'No[.:：]\s*(\S+)'     # capture group 1 = receipt number
//! clerk = '收银员[:：]\s*(\S+)'     # capture group 1 = clerk
//! total = '合计[:：]?\s*([0-9.]+)'   # capture group 1 = total
//! line = '(?P<name>\S+)\s+(?P<qty>\d+)\s+(?P<amount>[0-9.]+)'  # named groups: sku name qty unit_price amount
//! insurance_approved = '医保.*支付'   # a line saying the medical insurance paid
//! insurance_declined = '医保.*失败'   # ... or refused (looked at first)
//! ```
//!
//! Every section is optional and every key has a default, so a new kind of device is a new
//! file: adding `mqtt-scanner`, `json-register` or `escpos-tap` changes no existing profile.
//! Unknown keys and sections are errors, like in the config file.

mod load;
mod settings;
mod validate;

pub(crate) use load::load_profiles;
pub use settings::{
    DecoderKind, EscposSettings, FlowControl, FramingSettings, LineSettings, Parity, PayloadFormat,
    PayloadSettings, Profile, ProfileSet,
};
