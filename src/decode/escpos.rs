//! ESC/POS receipt decoding: turns the byte stream a register sends to its receipt printer into
//! receipts (text lines, QR payloads), and mines sale fields out of those lines.
//!
//! Everything here is pure (no I/O, no clock, no async). The serial tap hands every byte it
//! forwards to the printer to [`EscposDecoder::push`], in whatever pieces the port delivered, and
//! gets back a [`Receipt`] for each paper cut. Its silence timer calls [`EscposDecoder::close`]
//! (the decoder only says, through [`EscposDecoder::in_receipt`], whether a timer is worth
//! arming; `receipt_timeout` is the caller's business). [`extract`] then applies the profile's
//! patterns to a receipt's lines. DOMAIN.md section 4 is the specification.
//!
//! # Design
//! The decoder is a byte-level state machine, so any split of the input decodes identically:
//! - `Text`: a run of bytes >= 0x20 (found with one scan, not byte by byte) is appended raw to the
//!   current line; it is decoded only when the line ends, the text mode changes or the line grows
//!   too long. A GB18030 character split across pushes therefore just waits in the raw buffer.
//!   GB18030 never uses a byte below 0x30 inside a multi-byte character, so control bytes are
//!   always controls.
//! - `Command`: ESC, GS, FS or DLE starts a command; its bytes collect in a small buffer until
//!   `parse` can say what it is (fixed-length, or a header announcing a payload). A command acts
//!   only once all its declared bytes have arrived.
//! - `Skip`: image, 2D-code and other payloads are skipped by the count in their header, never
//!   buffered and never scanned (they may contain LF, ESC, GS and `GS V`).
//! - `Qr`: the payload of `GS ( k … cn=0x31 fn='P'` (store QR data) is kept, up to [`MAX_QR`]
//!   bytes, and reported in [`Receipt::qr`].
//! - `UntilNul`: `GS k` barcodes of forms m = 0–6 and `ESC D` tab stops end at a NUL.
//! - `Resync`: a payload whose length cannot be trusted (see below) is skipped only up to the
//!   next `ESC @` or cut, where decoding starts again.
//!
//! # Commands
//! Every command of DOMAIN.md section 4 is recognised, plus a few common Epson ones whose
//! parameter bytes would otherwise leak into the text (`ESC SP`, `ESC U`, `ESC V`, `ESC %`,
//! `ESC T`, `ESC e`, `ESC ?`, `ESC c`, `ESC W`, `ESC S`, `ESC L`, `ESC <`, `GS I`, `GS r`, `GS a`,
//! `GS T`, `GS /`, `GS :`, `GS $`, `GS \`, `GS ^`, `GS *`, `FS p`, `FS 2`, `DLE ENQ`), and the old
//! cut commands `ESC i` / `ESC m`, which end a receipt like `GS V`. Every `ESC (`, `GS (` and
//! `FS (` function shares the `pL pH` length form, so all of them are skipped by it, not only
//! `GS ( k`, `GS ( L` and `FS ( X`. An unknown `ESC`/`GS`/`FS` sequence skips its two bytes and
//! is counted in [`Receipt::unknown_commands`]; `DLE` followed by anything but EOT, ENQ or DC4 is
//! dropped alone. Text styles (bold, size, alignment, international character sets) are ignored.
//!
//! # Lines
//! - LF ends a line; `ESC d`, `ESC J`, FF, `ESC @` and a cut end a pending line too. CR is
//!   ignored unless `cr_ends_line`; NUL, CAN and other control bytes are ignored; HT is a space.
//! - Trailing whitespace is trimmed (padding to the paper width is layout, as receipt-a.txt
//!   shows); leading spaces are kept.
//! - Blank lines (an LF with nothing before it) are kept between text lines, as the printer shows
//!   them, but a run of them counts once, and blank lines at the start or end of a receipt are
//!   dropped: they are paper feed, not content. Feeds (`ESC d n`) add no blank lines.
//! - A line reaching [`MAX_LINE`] bytes is cut there into pieces, so a stream without LF cannot
//!   grow a line without bound; a multi-byte character split by that cut still decodes whole.
//!
//! # Text encoding
//! Chinese mode is on at start when `chinese_mode` is set; `FS &` turns it on, `FS .` off, and
//! `ESC @` resets it (and the code page) to the start state. In Chinese mode bytes >= 0x80 decode
//! as GB18030 (or UTF-8 when `encoding = "utf-8"`). Outside it they follow the `ESC t` code page:
//! 0 = CP437, 16 = Windows-1252, 17 = CP866, 45–52 = Windows-1250, -1251, -1253, -1254, -1255,
//! -1256, -1257, -1258 (Epson's numbering). Any other page decodes bytes >= 0x80 as U+FFFD, like
//! malformed GB18030 does: a receipt is text for people, and a `\xNN` would be ambiguous with a
//! printed backslash.
//!
//! # Receipts
//! A cut (`GS V`, `ESC i`, `ESC m`) ends a receipt; bytes after it belong to the next one. A
//! receipt reaching `max_receipt` bytes without a cut is closed there ([`ClosedBy::Size`]); the
//! command state carries on, so a large image straddling that point is still skipped. The decoder
//! reports every receipt, including ones without text (a bare cut, or an init before the
//! silence); [`Receipt::is_blank`] tells the caller which ones carry nothing worth recording.
//! [`EscposDecoder::close`] also drops a half-received command: after a silence, a command cut
//! off in the middle (a register restarting) must not swallow the next receipt.
//!
//! # Resynchronisation
//! A payload length is trusted only while the decoder is in sync with the stream: at start,
//! after a cut, after `ESC @`, and after a silence ([`EscposDecoder::close`]). An unknown command
//! or a length longer than `max_receipt` (no receipt holds such an image: it is line noise or a
//! broken register) loses sync. Out of sync, a payload is skipped at most by its length, and
//! only up to the next `ESC @` or cut (`GS V`, `ESC i`, `ESC m`): a bogus length never swallows
//! the receipts after it. Every real receipt starts with `ESC @`, so the next one is found at
//! its first byte; found there, the `ESC @` also ends the receipt in progress (its bytes so far
//! are garbled, [`ClosedBy::Resync`]) and the next one starts clean. A receipt without `ESC @`
//! is found again at its cut, the bytes before it lost. Such lengths are counted in
//! [`Receipt::untrusted_lengths`]. The cost is only that an image in a receipt that already
//! had an unknown command may be cut short where its data looks like `ESC @` or a cut.
//!
//! Memory is bounded by `max_receipt`: the raw line is at most [`MAX_LINE`] bytes, a QR payload at
//! most [`MAX_QR`], and the lines of a receipt hold at most what its bytes decode to.
//!
//! # Extraction
//! [`extract`] applies the patterns line by line; see its doc for the rules. The shipped patterns
//! are in `drivers/escpos-tap.toml`.

use encoding_rs::{CoderResult, Decoder, Encoding};

/// Text encoding of bytes >= 0x80 in Chinese mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoding {
    /// GB18030 (a superset of GBK and GB2312).
    Gb18030,
    /// UTF-8.
    Utf8,
}

/// How to read one printer stream; the configuration converts a profile's `[escpos]` into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Text encoding of bytes >= 0x80 in Chinese mode.
    pub encoding: TextEncoding,
    /// Whether Chinese mode (`FS &`) is on at start.
    pub chinese_mode: bool,
    /// Whether CR alone ends a line (otherwise CR is ignored).
    pub cr_ends_line: bool,
    /// Printer bytes after which a receipt that never saw a cut is closed; also the longest
    /// image or other command payload trusted (a longer length is taken as garbled).
    pub max_receipt: usize,
}

impl Default for Options {
    /// GB18030, Chinese mode on, CR ignored, 256KiB (the defaults of `[escpos]`).
    fn default() -> Self {
        Options {
            encoding: TextEncoding::Gb18030,
            chinese_mode: true,
            cr_ends_line: false,
            max_receipt: 256 * 1024,
        }
    }
}

/// Regexes applied to each decoded receipt line by [`extract`].
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    /// Capture group 1 is the receipt number.
    pub receipt: Option<regex::Regex>,
    /// Capture group 1 is the clerk.
    pub clerk: Option<regex::Regex>,
    /// Capture group 1 is the total.
    pub total: Option<regex::Regex>,
    /// Named groups among `sku`, `name`, `qty`, `unit_price`, `amount` make one sale line.
    pub line: Option<regex::Regex>,
    /// A line saying the medical insurance paid (`医保统筹支付 12.00`).
    pub insurance_approved: Option<regex::Regex>,
    /// A line saying the medical insurance refused (`医保结算失败`); looked at first.
    pub insurance_declined: Option<regex::Regex>,
}

/// Longest line kept in one piece, in raw bytes; longer lines are cut into pieces.
pub const MAX_LINE: usize = 4096;

/// Most bytes of one QR payload kept; QR codes hold at most 7089 characters, so real ones fit.
pub const MAX_QR: usize = 8192;

/// Escape, the lead byte of most ESC/POS commands.
const ESC: u8 = 0x1B;
/// Group separator, the lead byte of the `GS` commands.
const GS: u8 = 0x1D;
/// File separator, the lead byte of the `FS` (Chinese/Kanji) commands.
const FS: u8 = 0x1C;
/// Data link escape, the lead byte of the real-time commands.
const DLE: u8 = 0x10;
/// End of transmission (`DLE EOT n`, status request).
const EOT: u8 = 0x04;
/// Enquiry (`DLE ENQ n`, real-time request).
const ENQ: u8 = 0x05;
/// Device control 4 (`DLE DC4 …`, real-time pulse and friends).
const DC4: u8 = 0x14;
/// Line feed: prints and ends the line.
const LF: u8 = 0x0A;
/// Carriage return: ignored unless `cr_ends_line`.
const CR: u8 = 0x0D;
/// Horizontal tab: printed as a space.
const HT: u8 = 0x09;
/// Form feed: prints the buffer, so it ends a pending line.
const FF: u8 = 0x0C;

/// Longest fixed command or payload header collected (`ESC W`, 10 bytes).
const MAX_COMMAND: usize = 10;

/// Why a receipt was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    /// A paper cut (`GS V`, `ESC i`, `ESC m`).
    Cut,
    /// It reached `max_receipt` bytes without a cut.
    Size,
    /// The line fell silent with a receipt pending.
    Timeout,
    /// The gateway is stopping.
    Shutdown,
    /// The stream had lost sync (garbled bytes, a bogus length) and found it again at an
    /// `ESC @`, which starts the next receipt.
    Resync,
}

/// One decoded receipt.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    /// Printed text lines, trailing whitespace trimmed (see the module doc for blank lines).
    pub lines: Vec<String>,
    /// What closed it.
    pub closed_by: ClosedBy,
    /// Printer bytes it spanned, commands and images included.
    pub bytes: usize,
    /// Unknown `ESC`/`GS`/`FS` sequences skipped.
    pub unknown_commands: u32,
    /// Payload lengths not trusted (longer than `max_receipt`, or after the stream lost sync):
    /// skipped only up to the next `ESC @` or cut.
    pub untrusted_lengths: u32,
    /// QR payloads stored for printing (`GS ( k` with cn = 0x31, fn = 'P'), in order.
    pub qr: Vec<String>,
}

impl Receipt {
    /// The lines joined with `\n` (no trailing newline): the `text` of a `sale` record.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// Whether it has neither text nor a QR payload (a bare cut, a stray init): nothing to record.
    pub fn is_blank(&self) -> bool {
        self.lines.is_empty() && self.qr.is_empty()
    }
}

/// How bytes >= 0x80 of text turn into characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextMode {
    /// Through an encoding_rs decoder (GB18030, UTF-8, Windows code pages, CP866).
    Encoded(&'static Encoding),
    /// Through [`CP437_HIGH`].
    Cp437,
    /// A code page we have no table for: U+FFFD.
    UnknownPage,
}

/// Where the byte-level state machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between commands: text and single control bytes.
    Text,
    /// Collecting a command's bytes in `EscposDecoder::command`.
    Command,
    /// Skipping this many payload bytes.
    Skip(u64),
    /// Keeping a QR payload of this many more bytes.
    Qr(u64),
    /// Skipping an untrusted payload: at most `left` more bytes, and only up to the next
    /// `ESC @` or cut (`at` is how much of one was seen).
    Resync {
        /// Bytes still allowed (`u64::MAX`: as many as it takes).
        left: u64,
        /// The part of a resync point seen so far.
        at: ResyncAt,
    },
    /// Skipping to a NUL, at most `left` more bytes; a control byte ends it early (unread) when
    /// `stop_on_control` (barcode data is printable, tab stops are not).
    UntilNul {
        /// Bytes still allowed before giving up.
        left: u16,
        /// Whether a byte below 0x20 ends the data (and is then read as itself).
        stop_on_control: bool,
    },
}

/// How much of a resync point (`ESC @`, `ESC i`, `ESC m`, `GS V m [n]`) the last bytes were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResyncAt {
    /// Nothing yet.
    Nothing,
    /// `ESC`.
    Esc,
    /// `GS`.
    Gs,
    /// `GS V`.
    GsV,
    /// `GS V m` with m = 65, 66, 97, 98, 103 or 104: one more byte and it is a cut.
    GsVm,
}

/// What a complete fixed-length command does to the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Nothing we track (styles, alignment, status requests…).
    Nothing,
    /// Prints the buffer: ends a pending line (`ESC d`, `ESC J`).
    EndLine,
    /// A paper cut: ends the receipt.
    Cut,
    /// `ESC @`: ends a pending line, resets Chinese mode and code page.
    Init,
    /// `ESC t n`: selects a code page.
    CodePage(u8),
    /// `FS &` (true) or `FS .` (false).
    Chinese(bool),
}

/// What the bytes collected so far of a command are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parse {
    /// Not complete yet.
    More,
    /// A complete fixed-length command.
    Done(Action),
    /// A complete header; this many payload bytes follow.
    Skip(u64),
    /// A complete QR store header; this many payload bytes follow.
    Qr(u64),
    /// A complete header of data that ends at a NUL.
    UntilNul {
        /// Most bytes before giving up.
        left: u16,
        /// Whether a control byte ends it.
        stop_on_control: bool,
    },
    /// An unknown two-byte sequence, both bytes consumed.
    Unknown,
    /// Unknown, but known as such only at its third byte: count it and read that byte again.
    UnknownRereadLast,
    /// `DLE` + something that is not a real-time command: drop the DLE, read the byte again.
    NotCommand,
}

/// A stateful, incremental ESC/POS decoder for one printer stream. See the module doc.
#[derive(Debug)]
pub struct EscposDecoder {
    /// Whether CR ends a line.
    cr_ends_line: bool,
    /// Chinese mode at start and after `ESC @`.
    chinese_at_start: bool,
    /// Encoding of Chinese mode.
    chinese_encoding: &'static Encoding,
    /// Receipt size that closes it without a cut; at least 1.
    max_receipt: usize,

    /// Where the state machine is.
    state: State,
    /// Bytes of the command being collected.
    command: [u8; MAX_COMMAND],
    /// How many of `command` are filled.
    command_len: usize,
    /// Whether Chinese mode is on.
    chinese: bool,
    /// The `ESC t` code page.
    code_page: u8,
    /// How text bytes decode now (from `chinese` and `code_page`).
    mode: TextMode,
    /// Streaming decoder of `mode` while a line is being decoded in pieces.
    decoder: Option<Decoder>,

    /// Text bytes of the current line not decoded yet, all in `mode`.
    raw: Vec<u8>,
    /// Decoded text of the current line so far.
    line_text: String,
    /// Raw bytes of the current line (piece), decoded or not; cut at [`MAX_LINE`].
    line_bytes: usize,
    /// Whether the current line was just cut at [`MAX_LINE`] (so an LF right after adds no blank).
    line_was_cut: bool,
    /// Whether a blank line is owed before the next text line.
    blank_pending: bool,

    /// Lines of the receipt in progress.
    lines: Vec<String>,
    /// QR payloads of the receipt in progress.
    qr: Vec<String>,
    /// The QR payload being received.
    qr_bytes: Vec<u8>,
    /// Unknown commands in the receipt in progress.
    unknown_commands: u32,
    /// Untrusted payload lengths in the receipt in progress.
    untrusted_lengths: u32,
    /// Whether payload lengths are trusted (see the module doc).
    in_sync: bool,
    /// Bytes of the receipt in progress.
    receipt_bytes: usize,
}

impl EscposDecoder {
    /// A decoder at the start of a stream, as the printer is after power-on.
    pub fn new(options: &Options) -> Self {
        let chinese_encoding = match options.encoding {
            TextEncoding::Gb18030 => encoding_rs::GB18030,
            TextEncoding::Utf8 => encoding_rs::UTF_8,
        };
        let mut decoder = EscposDecoder {
            cr_ends_line: options.cr_ends_line,
            chinese_at_start: options.chinese_mode,
            chinese_encoding,
            max_receipt: options.max_receipt.max(1),
            state: State::Text,
            command: [0; MAX_COMMAND],
            command_len: 0,
            chinese: options.chinese_mode,
            code_page: 0,
            mode: TextMode::Cp437,
            decoder: None,
            raw: Vec::new(),
            line_text: String::new(),
            line_bytes: 0,
            line_was_cut: false,
            blank_pending: false,
            lines: Vec::new(),
            qr: Vec::new(),
            qr_bytes: Vec::new(),
            unknown_commands: 0,
            untrusted_lengths: 0,
            in_sync: true,
            receipt_bytes: 0,
        };
        decoder.mode = decoder.current_mode();
        decoder
    }

    /// Feeds the next bytes as read from the line (any split, down to 1 byte). Receipts completed
    /// by a cut are pushed to `out`. A receipt reaching `max_receipt` bytes without a cut is
    /// closed there (`ClosedBy::Size`).
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Receipt>) {
        while !bytes.is_empty() {
            // Never read past the size limit, so the receipt closes at exactly that byte however
            // the input is split.
            let room = self.max_receipt - self.receipt_bytes;
            let window = &bytes[..bytes.len().min(room)];
            let (used, end) = self.feed(window);
            self.receipt_bytes += used;
            bytes = &bytes[used..];
            if let Some(why) = end {
                out.push(self.finish(why));
            } else if self.receipt_bytes >= self.max_receipt {
                out.push(self.finish(ClosedBy::Size));
            }
        }
    }

    /// Closes what is pending (silence timeout or shutdown): `Some(receipt)` when any bytes of a
    /// receipt are pending. A half-received command is dropped either way.
    pub fn close(&mut self, why: ClosedBy) -> Option<Receipt> {
        self.state = State::Text;
        self.command_len = 0;
        // After a silence the register starts afresh.
        self.in_sync = true;
        self.qr_bytes.clear();
        if self.receipt_bytes == 0 {
            return None;
        }
        Some(self.finish(why))
    }

    /// Whether a receipt is in progress (bytes seen since the last cut), so the caller knows to
    /// arm its timeout.
    pub fn in_receipt(&self) -> bool {
        self.receipt_bytes > 0
    }

    /// Runs the state machine over `input` until it is used up or a receipt ends (a cut, or an
    /// `ESC @` out of sync); returns the bytes consumed and why the receipt ended there.
    fn feed(&mut self, input: &[u8]) -> (usize, Option<ClosedBy>) {
        let mut at = 0;
        while at < input.len() {
            match self.state {
                State::Text => {
                    let rest = &input[at..];
                    let run = rest
                        .iter()
                        .position(|&byte| byte < 0x20 || byte == 0x7F)
                        .unwrap_or(rest.len());
                    if run > 0 {
                        self.text(&rest[..run]);
                        at += run;
                        continue;
                    }
                    let byte = rest[0];
                    at += 1;
                    match byte {
                        LF => self.end_line(true),
                        CR if self.cr_ends_line => self.end_line(true),
                        FF => self.end_line(false),
                        HT => self.text(b" "),
                        ESC | GS | FS | DLE => {
                            self.command[0] = byte;
                            self.command_len = 1;
                            self.state = State::Command;
                        }
                        // NUL, CAN, CR, DEL and the other control bytes do nothing we can see.
                        _ => {}
                    }
                }
                State::Command => {
                    if self.command_len >= MAX_COMMAND {
                        // `parse` decides within MAX_COMMAND bytes; this only keeps a slip from
                        // ever becoming a panic.
                        self.count_unknown();
                        self.state = State::Text;
                        self.command_len = 0;
                        continue;
                    }
                    self.command[self.command_len] = input[at];
                    self.command_len += 1;
                    at += 1;
                    let parsed = parse(&self.command[..self.command_len]);
                    if parsed != Parse::More {
                        self.state = State::Text;
                        self.command_len = 0;
                    }
                    match parsed {
                        Parse::More => {}
                        Parse::Done(action) => {
                            if let Some(end) = self.apply(action) {
                                return (at, Some(end));
                            }
                        }
                        Parse::Skip(count) | Parse::Qr(count)
                            if count > 0 && !self.trusted(count) =>
                        {
                            self.untrusted_lengths = self.untrusted_lengths.saturating_add(1);
                            // A bogus length says nothing about where the payload ends.
                            let left = if count > self.max_receipt as u64 {
                                u64::MAX
                            } else {
                                count
                            };
                            self.state = State::Resync {
                                left,
                                at: ResyncAt::Nothing,
                            };
                            self.in_sync = false;
                        }
                        Parse::Skip(count) if count > 0 => self.state = State::Skip(count),
                        Parse::Skip(_) => {}
                        Parse::Qr(count) => {
                            self.qr_bytes.clear();
                            if count > 0 {
                                self.state = State::Qr(count);
                            } else {
                                self.finish_qr();
                            }
                        }
                        Parse::UntilNul {
                            left,
                            stop_on_control,
                        } => {
                            self.state = State::UntilNul {
                                left,
                                stop_on_control,
                            }
                        }
                        Parse::Unknown => self.count_unknown(),
                        Parse::UnknownRereadLast => {
                            self.count_unknown();
                            at -= 1;
                        }
                        Parse::NotCommand => at -= 1,
                    }
                }
                State::Skip(count) => {
                    let take = skip_len(count, input.len() - at);
                    at += take;
                    let left = count - take as u64;
                    self.state = if left == 0 {
                        State::Text
                    } else {
                        State::Skip(left)
                    };
                }
                State::Resync { left, at: seen } => {
                    let (used, end) = self.resync(&input[at..], left, seen);
                    at += used;
                    if end.is_some() {
                        return (at, end);
                    }
                }
                State::Qr(count) => {
                    let take = skip_len(count, input.len() - at);
                    let room = MAX_QR.saturating_sub(self.qr_bytes.len());
                    self.qr_bytes
                        .extend_from_slice(&input[at..at + take.min(room)]);
                    at += take;
                    let left = count - take as u64;
                    if left == 0 {
                        self.state = State::Text;
                        self.finish_qr();
                    } else {
                        self.state = State::Qr(left);
                    }
                }
                State::UntilNul {
                    left,
                    stop_on_control,
                } => {
                    let byte = input[at];
                    if byte == 0 {
                        at += 1;
                        self.state = State::Text;
                    } else if stop_on_control && byte < 0x20 {
                        // Malformed barcode data: the printer would read this byte as itself.
                        self.state = State::Text;
                    } else {
                        at += 1;
                        self.state = if left <= 1 {
                            State::Text
                        } else {
                            State::UntilNul {
                                left: left - 1,
                                stop_on_control,
                            }
                        };
                    }
                }
            }
        }
        (at, None)
    }

    /// Whether a payload of `count` bytes may be skipped by its length (see the module doc).
    fn trusted(&self, count: u64) -> bool {
        self.in_sync && count <= self.max_receipt as u64
    }

    /// Skips untrusted payload bytes of `input` (at most `left`), looking for a resync point
    /// (`seen`: how much of one the bytes before were); returns the bytes consumed and, when
    /// the resync point ended the receipt, why. Leaves `state` where the bytes left it.
    fn resync(&mut self, input: &[u8], left: u64, mut seen: ResyncAt) -> (usize, Option<ClosedBy>) {
        let window = &input[..skip_len(left, input.len())];
        let mut at = 0;
        while at < window.len() {
            if seen == ResyncAt::Nothing {
                match window[at..]
                    .iter()
                    .position(|&byte| byte == ESC || byte == GS)
                {
                    Some(lead) => at += lead,
                    None => {
                        at = window.len();
                        break;
                    }
                }
            }
            let byte = window[at];
            at += 1;
            let action = match (seen, byte) {
                (ResyncAt::Esc, b'@') => Some(Action::Init),
                (ResyncAt::Esc, b'i' | b'm') => Some(Action::Cut),
                (ResyncAt::Gs, b'V') => {
                    seen = ResyncAt::GsV;
                    continue;
                }
                (ResyncAt::GsV, 0 | 1 | 48 | 49) | (ResyncAt::GsVm, _) => Some(Action::Cut),
                (ResyncAt::GsV, 65 | 66 | 97 | 98 | 103 | 104) => {
                    seen = ResyncAt::GsVm;
                    continue;
                }
                _ => None,
            };
            if let Some(action) = action {
                self.state = State::Text;
                return (at, self.apply(action));
            }
            seen = match byte {
                ESC => ResyncAt::Esc,
                GS => ResyncAt::Gs,
                _ => ResyncAt::Nothing,
            };
        }
        let left = left.saturating_sub(at as u64);
        self.state = if left == 0 {
            // The payload is over (still out of sync): what follows is read as usual.
            State::Text
        } else {
            State::Resync { left, at: seen }
        };
        (at, None)
    }

    /// Carries out a complete fixed-length command; says when it ends the receipt (a cut, or
    /// an `ESC @` that finds the stream again after it lost sync).
    fn apply(&mut self, action: Action) -> Option<ClosedBy> {
        match action {
            Action::Nothing => {}
            Action::EndLine => self.end_line(false),
            Action::Cut => {
                self.end_line(false);
                self.in_sync = true;
                return Some(ClosedBy::Cut);
            }
            Action::Init => {
                self.end_line(false);
                self.chinese = self.chinese_at_start;
                self.code_page = 0;
                self.update_mode();
                if !self.in_sync {
                    // What came before was garbled: it is not part of the receipt this starts.
                    self.in_sync = true;
                    return Some(ClosedBy::Resync);
                }
            }
            Action::CodePage(page) => {
                self.code_page = page;
                self.update_mode();
            }
            Action::Chinese(on) => {
                self.chinese = on;
                self.update_mode();
            }
        }
        None
    }

    /// Counts an unknown command, saturating (a receipt is closed long before it matters); the
    /// stream is out of sync from there.
    fn count_unknown(&mut self) {
        self.unknown_commands = self.unknown_commands.saturating_add(1);
        self.in_sync = false;
    }

    /// The text mode for the current Chinese mode and code page.
    fn current_mode(&self) -> TextMode {
        if self.chinese {
            return TextMode::Encoded(self.chinese_encoding);
        }
        let encoding = match self.code_page {
            0 => return TextMode::Cp437,
            16 => encoding_rs::WINDOWS_1252,
            17 => encoding_rs::IBM866,
            45 => encoding_rs::WINDOWS_1250,
            46 => encoding_rs::WINDOWS_1251,
            47 => encoding_rs::WINDOWS_1253,
            48 => encoding_rs::WINDOWS_1254,
            49 => encoding_rs::WINDOWS_1255,
            50 => encoding_rs::WINDOWS_1256,
            51 => encoding_rs::WINDOWS_1257,
            52 => encoding_rs::WINDOWS_1258,
            _ => return TextMode::UnknownPage,
        };
        TextMode::Encoded(encoding)
    }

    /// Switches the text mode after `FS &`, `FS .`, `ESC t` or `ESC @`, decoding what was
    /// received in the old one first.
    fn update_mode(&mut self) {
        let mode = self.current_mode();
        if mode != self.mode {
            self.decode_raw(true);
            self.mode = mode;
        }
    }

    /// Appends a run of text bytes to the current line, cutting the line at [`MAX_LINE`].
    fn text(&mut self, mut run: &[u8]) {
        while !run.is_empty() {
            let take = run.len().min(MAX_LINE - self.line_bytes);
            self.raw.extend_from_slice(&run[..take]);
            self.line_bytes += take;
            self.line_was_cut = false;
            run = &run[take..];
            if self.line_bytes >= MAX_LINE {
                // Not the end of the text: keep the decoder's partial character for the next piece.
                self.decode_raw(false);
                self.emit_line();
                self.line_was_cut = true;
            }
        }
    }

    /// Ends the current line: `lf` for a line feed (which prints a blank line when nothing is
    /// pending), false for the commands that only print what is pending.
    fn end_line(&mut self, lf: bool) {
        self.decode_raw(true);
        if self.line_text.trim_end().is_empty() {
            if lf && !self.line_was_cut {
                self.blank_pending = true;
            }
            self.line_text.clear();
            self.line_bytes = 0;
        } else {
            self.emit_line();
        }
        self.line_was_cut = false;
    }

    /// Moves the decoded line (trailing whitespace trimmed) into the receipt, after the blank
    /// line owed before it, if any and if it is not at the start.
    fn emit_line(&mut self) {
        let line = self.line_text.trim_end();
        if !line.is_empty() {
            if self.blank_pending && !self.lines.is_empty() {
                self.lines.push(String::new());
            }
            self.blank_pending = false;
            self.lines.push(line.to_string());
        }
        self.line_text.clear();
        self.line_bytes = 0;
    }

    /// Decodes `raw` into `line_text` in the current mode; `last` when no more bytes of this text
    /// follow (a partial multi-byte character then becomes U+FFFD).
    fn decode_raw(&mut self, last: bool) {
        match self.mode {
            TextMode::Encoded(encoding) => {
                if self.raw.is_empty() && (!last || self.decoder.is_none()) {
                    return;
                }
                let decoder = self
                    .decoder
                    .get_or_insert_with(|| encoding.new_decoder_without_bom_handling());
                decode_into(decoder, &self.raw, &mut self.line_text, last);
                if last {
                    self.decoder = None;
                }
            }
            TextMode::Cp437 => {
                for &byte in &self.raw {
                    self.line_text.push(if byte < 0x80 {
                        char::from(byte)
                    } else {
                        CP437_HIGH[usize::from(byte - 0x80)]
                    });
                }
            }
            TextMode::UnknownPage => {
                for &byte in &self.raw {
                    self.line_text.push(if byte < 0x80 {
                        char::from(byte)
                    } else {
                        char::REPLACEMENT_CHARACTER
                    });
                }
            }
        }
        self.raw.clear();
    }

    /// Reports the QR payload just received.
    fn finish_qr(&mut self) {
        // Registers send QR data as UTF-8 (URLs, e-invoice codes) or, on Chinese systems, GB18030.
        let payload = match std::str::from_utf8(&self.qr_bytes) {
            Ok(text) => text.to_string(),
            Err(_) => encoding_rs::GB18030
                .decode_without_bom_handling(&self.qr_bytes)
                .0
                .into_owned(),
        };
        self.qr_bytes.clear();
        self.qr.push(payload);
    }

    /// Closes the receipt in progress.
    fn finish(&mut self, why: ClosedBy) -> Receipt {
        self.end_line(false);
        self.blank_pending = false;
        let bytes = std::mem::take(&mut self.receipt_bytes);
        Receipt {
            lines: std::mem::take(&mut self.lines),
            closed_by: why,
            bytes,
            unknown_commands: std::mem::take(&mut self.unknown_commands),
            untrusted_lengths: std::mem::take(&mut self.untrusted_lengths),
            qr: std::mem::take(&mut self.qr),
        }
    }
}

/// How many of `available` bytes a skip of `count` more bytes takes.
fn skip_len(count: u64, available: usize) -> usize {
    usize::try_from(count).map_or(available, |count| count.min(available))
}

/// Decodes all of `bytes` onto `out`.
fn decode_into(decoder: &mut Decoder, mut bytes: &[u8], out: &mut String, last: bool) {
    loop {
        let room = decoder
            .max_utf8_buffer_length(bytes.len())
            .unwrap_or(bytes.len());
        out.reserve(room.max(4));
        let (result, read, _) = decoder.decode_to_string(bytes, out, last);
        bytes = &bytes[read..];
        if result == CoderResult::InputEmpty {
            return;
        }
    }
}

/// Says what the collected bytes of a command are (`command[0]` is ESC, GS, FS or DLE and at
/// least one more byte is there). Never asks for more than [`MAX_COMMAND`] bytes.
fn parse(command: &[u8]) -> Parse {
    let have = command.len();
    let (lead, op) = match command {
        [lead, op, ..] => (*lead, *op),
        _ => return Parse::More,
    };
    // The little-endian 16-bit value at `at`, once there.
    let word = |at: usize| u64::from(command[at]) | u64::from(command[at + 1]) << 8;
    match (lead, op) {
        // ESC * m nL nH + k columns (3 bytes each in the 24-dot modes).
        (ESC, b'*') if have < 5 => Parse::More,
        (ESC, b'*') => {
            let columns = word(3);
            Parse::Skip(if matches!(command[2], 32 | 33) {
                3 * columns
            } else {
                columns
            })
        }
        // ESC ( / GS ( / FS ( fn pL pH + p bytes; QR store data is GS ( k pL pH 0x31 'P' m + data.
        (ESC | GS | FS, b'(') if have < 5 => Parse::More,
        (GS, b'(') if command[2] == b'k' && word(3) >= 3 => {
            if have < 8 {
                Parse::More
            } else if command[5] == 0x31 && command[6] == b'P' {
                Parse::Qr(word(3) - 3)
            } else {
                Parse::Skip(word(3) - 3)
            }
        }
        (ESC | GS | FS, b'(') => Parse::Skip(word(3)),
        // ESC D n1 … NUL: at most 32 tab stops; their values are often below 0x20.
        (ESC, b'D') => Parse::UntilNul {
            left: 33,
            stop_on_control: false,
        },
        (GS, b'V') if have < 3 => Parse::More,
        (GS, b'V') => match command[2] {
            0 | 1 | 48 | 49 => Parse::Done(Action::Cut),
            65 | 66 | 97 | 98 | 103 | 104 if have < 4 => Parse::More,
            65 | 66 | 97 | 98 | 103 | 104 => Parse::Done(Action::Cut),
            _ => Parse::UnknownRereadLast,
        },
        // GS v 0 m xL xH yL yH + x·y bytes of raster.
        (GS, b'v') if have < 8 => Parse::More,
        (GS, b'v') => Parse::Skip(word(4) * word(6)),
        // GS 8 L p1 p2 p3 p4 + p bytes (large graphics).
        (GS, b'8') if have < 3 => Parse::More,
        (GS, b'8') if command[2] != b'L' => Parse::UnknownRereadLast,
        (GS, b'8') if have < 7 => Parse::More,
        (GS, b'8') => Parse::Skip(u64::from(u32::from_le_bytes([
            command[3], command[4], command[5], command[6],
        ]))),
        // GS k m: forms 0–6 end at NUL (printable data), forms 65–78 carry a length byte.
        (GS, b'k') if have < 3 => Parse::More,
        (GS, b'k') => match command[2] {
            0..=6 => Parse::UntilNul {
                left: 256,
                stop_on_control: true,
            },
            65..=78 if have < 4 => Parse::More,
            65..=78 => Parse::Skip(u64::from(command[3])),
            _ => Parse::UnknownRereadLast,
        },
        // GS * x y + x·y·8 bytes (downloaded bit image).
        (GS, b'*') if have < 4 => Parse::More,
        (GS, b'*') => Parse::Skip(u64::from(command[2]) * u64::from(command[3]) * 8),
        // FS 2 c1 c2 + 72 bytes (a user-defined 24×24 Chinese character).
        (FS, b'2') if have < 4 => Parse::More,
        (FS, b'2') => Parse::Skip(72),
        _ => match fixed_length(lead, op) {
            Some(length) if have < length => Parse::More,
            Some(_) => Parse::Done(action(lead, op, command)),
            None if lead == DLE => Parse::NotCommand,
            None => Parse::Unknown,
        },
    }
}

/// Total length of the fixed-length commands, lead byte included.
fn fixed_length(lead: u8, op: u8) -> Option<usize> {
    let length = match (lead, op) {
        (ESC, b'@' | b'2' | b'<' | b'i' | b'm' | b'S' | b'L') => 2,
        (
            ESC,
            b'!' | b'E' | b'-' | b'a' | b'd' | b'J' | b'M' | b't' | b'R' | b'3' | b'G' | b'{'
            | b'=' | b'r' | b' ' | b'U' | b'V' | b'%' | b'T' | b'e' | b'?',
        ) => 3,
        (ESC, b'$' | b'\\' | b'B' | b'c') => 4,
        (ESC, b'p') => 5,
        (ESC, b'W') => 10,
        (GS, b':') => 2,
        (GS, b'!' | b'B' | b'H' | b'f' | b'h' | b'w' | b'b' | b'I' | b'r' | b'a' | b'T' | b'/') => {
            3
        }
        (GS, b'L' | b'W' | b'P' | b'$' | b'\\') => 4,
        (GS, b'^') => 5,
        (FS, b'&' | b'.') => 2,
        (FS, b'!' | b'-' | b'C' | b'W') => 3,
        (FS, b'S' | b'p') => 4,
        (DLE, EOT | ENQ) => 3,
        (DLE, DC4) => 5,
        _ => return None,
    };
    Some(length)
}

/// What a complete fixed-length command does.
fn action(lead: u8, op: u8, command: &[u8]) -> Action {
    match (lead, op) {
        (ESC, b'd' | b'J') => Action::EndLine,
        (ESC, b'i' | b'm') => Action::Cut,
        (ESC, b'@') => Action::Init,
        (ESC, b't') => Action::CodePage(command.get(2).copied().unwrap_or(0)),
        (FS, b'&') => Action::Chinese(true),
        (FS, b'.') => Action::Chinese(false),
        _ => Action::Nothing,
    }
}

/// Code page 437, bytes 0x80–0xFF (the lower half is ASCII).
const CP437_HIGH: [char; 128] = [
    'Ç', 'ü', 'é', 'â', 'ä', 'à', 'å', 'ç', 'ê', 'ë', 'è', 'ï', 'î', 'ì', 'Ä', 'Å', //
    'É', 'æ', 'Æ', 'ô', 'ö', 'ò', 'û', 'ù', 'ÿ', 'Ö', 'Ü', '¢', '£', '¥', '₧', 'ƒ', //
    'á', 'í', 'ó', 'ú', 'ñ', 'Ñ', 'ª', 'º', '¿', '⌐', '¬', '½', '¼', '¡', '«', '»', //
    '░', '▒', '▓', '│', '┤', '╡', '╢', '╖', '╕', '╣', '║', '╗', '╝', '╜', '╛', '┐', //
    '└', '┴', '┬', '├', '─', '┼', '╞', '╟', '╚', '╔', '╩', '╦', '╠', '═', '╬', '╧', //
    '╨', '╤', '╥', '╙', '╘', '╒', '╓', '╫', '╪', '┘', '┌', '█', '▄', '▌', '▐', '▀', //
    'α', 'ß', 'Γ', 'π', 'Σ', 'σ', 'µ', 'τ', 'Φ', 'Θ', 'Ω', 'δ', '∞', 'φ', 'ε', '∩', //
    '≡', '±', '≥', '≤', '⌠', '⌡', '÷', '≈', '°', '∙', '·', '√', 'ⁿ', '²', '■', '\u{A0}',
];

/// Fields pulled out of a receipt's lines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    /// Receipt number: group 1 of the first line matching `receipt`.
    pub receipt: Option<String>,
    /// Clerk: group 1 of the first line matching `clerk`.
    pub clerk: Option<String>,
    /// Total: group 1 of the last line matching `total` that holds a number.
    pub total: Option<f64>,
    /// Sale lines, in receipt order.
    pub lines: Vec<ExtractedLine>,
    /// The medical insurance's answer, from the last line matching `insurance_declined` or
    /// `insurance_approved`: `true` approved.
    pub insurance: Option<bool>,
}

/// One sale line pulled out of a receipt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExtractedLine {
    /// Product code (EAN/GTIN or internal), when the receipt prints one.
    pub sku: Option<String>,
    /// Product name as printed (specification included).
    pub name: Option<String>,
    /// Quantity.
    pub qty: Option<f64>,
    /// Price of one.
    pub unit_price: Option<f64>,
    /// Line amount.
    pub amount: Option<f64>,
}

/// Pulls receipt number, clerk, total and sale lines out of the lines with the profile's patterns.
///
/// Rules, line by line:
/// - `receipt` and `clerk`: the first line that matches gives the value (a receipt prints its
///   header once). `total`: the last matching line wins, because receipts print the gross sum
///   (`合计`) before the amount due after discounts (`应收`).
/// - A line matching any of those three is never a sale line (`合计  3  58.00` looks like one).
/// - Other lines are tried with `line`. A match with only `sku` (a product code printed on its
///   own line) gives its code to the previous sale line when that one has none yet, else to the
///   next sale line: that handles codes printed after the name and codes printed before it. A
///   match without any group (a blank line) is ignored.
/// - Numbers tolerate a currency sign, thousands separators and an `x` before a quantity: only
///   digits, `.` and `-` are kept before parsing; what still does not parse is left out.
pub fn extract(lines: &[String], patterns: &Patterns) -> Extracted {
    let mut extracted = Extracted::default();
    // A code printed before its sale line, waiting for it.
    let mut waiting_sku: Option<String> = None;
    for line in lines {
        let receipt = group_one(patterns.receipt.as_ref(), line);
        let clerk = group_one(patterns.clerk.as_ref(), line);
        let total = group_one(patterns.total.as_ref(), line);
        let matches = |pattern: &Option<regex::Regex>| {
            pattern
                .as_ref()
                .is_some_and(|pattern| pattern.is_match(line))
        };
        let insurance = if matches(&patterns.insurance_declined) {
            Some(false)
        } else if matches(&patterns.insurance_approved) {
            Some(true)
        } else {
            None
        };
        if insurance.is_some() {
            extracted.insurance = insurance;
        }
        let field_line =
            receipt.is_some() || clerk.is_some() || total.is_some() || insurance.is_some();
        if extracted.receipt.is_none() {
            extracted.receipt = receipt.map(str::to_string);
        }
        if extracted.clerk.is_none() {
            extracted.clerk = clerk.map(str::to_string);
        }
        if let Some(total) = total.and_then(parse_number) {
            extracted.total = Some(total);
        }
        if field_line {
            continue;
        }
        let Some(captures) = patterns
            .line
            .as_ref()
            .and_then(|line_re| line_re.captures(line))
        else {
            continue;
        };
        let text = |name: &str| {
            captures
                .name(name)
                .map(|found| found.as_str().trim())
                .filter(|found| !found.is_empty())
        };
        let sku = text("sku").map(str::to_string);
        let item = ExtractedLine {
            sku: None,
            name: text("name").map(str::to_string),
            qty: text("qty").and_then(parse_number),
            unit_price: text("unit_price").and_then(parse_number),
            amount: text("amount").and_then(parse_number),
        };
        let code_only = item.name.is_none()
            && item.qty.is_none()
            && item.unit_price.is_none()
            && item.amount.is_none();
        if code_only {
            match extracted.lines.last_mut() {
                Some(previous) if previous.sku.is_none() && sku.is_some() => previous.sku = sku,
                _ => waiting_sku = sku.or(waiting_sku),
            }
            continue;
        }
        extracted.lines.push(ExtractedLine {
            sku: sku.or_else(|| waiting_sku.take()),
            ..item
        });
    }
    extracted
}

/// Capture group 1 of `pattern` on `line`, trimmed, when it matches and the group is not empty.
fn group_one<'a>(pattern: Option<&regex::Regex>, line: &'a str) -> Option<&'a str> {
    let captures = pattern?.captures(line)?;
    let value = captures.get(1)?.as_str().trim();
    (!value.is_empty()).then_some(value)
}

/// A printed number: keeps digits, `.` and `-` (dropping `¥`, `x`, thousands separators), then
/// parses; `None` when nothing sensible is left.
fn parse_number(text: &str) -> Option<f64> {
    let kept: String = text
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    kept.parse::<f64>().ok().filter(|value| value.is_finite())
}

#[cfg(test)]
mod tests {

    use proptest::prelude::*;

    use super::*;

    /// receipt-a from the repository's `tests/fixtures`.
    const RECEIPT_A: &[u8] = include_bytes!("../../tests/fixtures/receipt-a.bin");
    /// The lines receipt-a must decode to.
    const RECEIPT_A_TXT: &str = include_str!("../../tests/fixtures/receipt-a.txt");

    fn settings() -> Options {
        Options::default()
    }

    /// The `[escpos.patterns]` of drivers/escpos-tap.toml, as the profile loader compiles them.
    fn shipped_patterns() -> &'static Patterns {
        static PATTERNS: std::sync::OnceLock<Patterns> = std::sync::OnceLock::new();
        PATTERNS.get_or_init(|| {
            let profiles = crate::config::ProfileSet::built_in().expect("built-in profiles");
            let profile = profiles.get("escpos-tap").expect("escpos-tap is built in");
            profile.escpos.as_ref().expect("[escpos]").patterns.clone()
        })
    }

    /// Decodes `bytes` in one push, then closes with `Shutdown`.
    fn decode_all(settings: &Options, bytes: &[u8]) -> Vec<Receipt> {
        decode_chunked(settings, bytes, &[bytes.len().max(1)])
    }

    /// Decodes `bytes` in chunks of the given sizes (cycled), then closes with `Shutdown`.
    fn decode_chunked(settings: &Options, bytes: &[u8], sizes: &[usize]) -> Vec<Receipt> {
        let mut decoder = EscposDecoder::new(settings);
        let mut out = Vec::new();
        let mut rest = bytes;
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(size.clamp(1, rest.len()));
            decoder.push(chunk, &mut out);
            rest = tail;
        }
        out.extend(decoder.close(ClosedBy::Shutdown));
        out
    }

    fn gb(text: &str) -> Vec<u8> {
        encoding_rs::GB18030.encode(text).0.into_owned()
    }

    /// A typical Chinese pharmacy receipt as a register sends it: init, Chinese mode, a raster
    /// logo, double-size centred shop name, header, items with EAN-13 codes printed below the
    /// name (and one inline), totals with `¥` (GB18030 4-byte) and `￥`, a QR code, feed and cut.
    fn chinese_receipt() -> Vec<u8> {
        let mut bytes = vec![ESC, b'@', FS, b'&', ESC, b'a', 1];
        bytes.extend(raster(48, 40));
        bytes.extend([GS, b'!', 0x11]);
        bytes.extend(gb("康宁大药房（龙港店）\n"));
        bytes.extend([GS, b'!', 0x00, ESC, b'a', 0]);
        bytes.extend(gb("单号：XS20250101-0007\n"));
        bytes.extend(gb("收银员：张三    2025-01-01 10:30\n"));
        bytes.extend(gb("--------------------------------\n"));
        bytes.extend(gb("品名/规格          数量    金额\n"));
        bytes.extend(gb("参松养心胶囊 0.4g*36粒  1  25.00\n"));
        bytes.extend(gb("6901234567892\n"));
        bytes.extend(gb("阿莫西林胶囊 0.25g*24粒  2  12.50  25.00\n"));
        bytes.extend(gb("6923456789014\n"));
        bytes.extend(gb("6934567890128 维生素C片 100片  x1  8.50\n"));
        bytes.extend(gb("--------------------------------\n"));
        bytes.extend([ESC, b'E', 1]);
        bytes.extend(gb("合计：4件          ¥58.50\n"));
        bytes.extend(gb("应收：￥58.50\n"));
        bytes.extend([ESC, b'E', 0]);
        bytes.extend(gb("实收：100.00   找零：41.50\n"));
        bytes.extend(b"\n\n");
        bytes.extend(gb("谢谢惠顾，祝您健康！\n"));
        bytes.extend(qr(b"https://fp.example.cn/inv?no=XS20250101-0007"));
        bytes.extend([ESC, b'd', 4, GS, b'V', 66, 0]);
        bytes
    }

    /// `GS v 0` raster image of `width_bytes` × `height`, its data full of LF/ESC/GS/`GS V`.
    fn raster(width_bytes: u16, height: u16) -> Vec<u8> {
        let [xl, xh] = width_bytes.to_le_bytes();
        let [yl, yh] = height.to_le_bytes();
        let mut bytes = vec![GS, b'v', b'0', 0, xl, xh, yl, yh];
        let pattern = [LF, ESC, b'@', GS, b'V', 0, FS, b'.', b'X'];
        bytes.extend(
            pattern
                .iter()
                .cycle()
                .take(usize::from(width_bytes) * usize::from(height)),
        );
        bytes
    }

    /// The usual QR sequence: model, size, error level, store data, print.
    fn qr(data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![GS, b'(', b'k', 4, 0, 0x31, b'A', b'2', 0];
        bytes.extend([GS, b'(', b'k', 3, 0, 0x31, b'C', 6]);
        bytes.extend([GS, b'(', b'k', 3, 0, 0x31, b'E', b'0']);
        let [pl, ph] = u16::try_from(data.len() + 3)
            .expect("test QR fits")
            .to_le_bytes();
        bytes.extend([GS, b'(', b'k', pl, ph, 0x31, b'P', b'0']);
        bytes.extend(data);
        bytes.extend([GS, b'(', b'k', 3, 0, 0x31, b'Q', b'0']);
        bytes
    }

    #[test]
    fn receipt_a_decodes_to_its_text() {
        let receipts = decode_all(&settings(), RECEIPT_A);
        assert_eq!(receipts.len(), 1, "{receipts:?}");
        let receipt = &receipts[0];
        let expected: Vec<&str> = RECEIPT_A_TXT.lines().collect();
        assert_eq!(receipt.lines, expected);
        assert_eq!(receipt.closed_by, ClosedBy::Cut);
        assert_eq!(receipt.bytes, RECEIPT_A.len());
        assert_eq!(receipt.unknown_commands, 0);
        // The store function is GS ( k pL pH 0x31 'P' m=0x30 + data: the '0' is the m parameter.
        assert_eq!(receipt.qr, ["T20250101-0001"]);
        assert_eq!(receipt.text(), RECEIPT_A_TXT.trim_end());
    }

    #[test]
    fn receipt_a_extracts_with_shipped_patterns() {
        let receipts = decode_all(&settings(), RECEIPT_A);
        let extracted = extract(&receipts[0].lines, shipped_patterns());
        assert_eq!(extracted.total, Some(33.5));
        assert_eq!(extracted.receipt, None);
        assert_eq!(extracted.clerk, None);
        assert_eq!(
            extracted.lines,
            [
                ExtractedLine {
                    sku: None,
                    name: Some("Amoxicillin 0.25g".into()),
                    qty: Some(2.0),
                    unit_price: None,
                    amount: Some(25.0),
                },
                ExtractedLine {
                    sku: None,
                    name: Some("Vitamin C 100s".into()),
                    qty: Some(1.0),
                    unit_price: None,
                    amount: Some(8.5),
                },
            ]
        );
    }

    #[test]
    fn gb18030_yen_decodes() {
        let (text, _, errors) = encoding_rs::GB18030.decode(&[0x81, 0x30, 0x84, 0x36, 0xA3, 0xA4]);
        assert!(!errors);
        assert_eq!(text, "¥￥");
    }

    #[test]
    fn the_medical_insurance_answer_is_read_from_its_line_and_is_no_sale_line() {
        let lines = |text: &[&str]| -> Vec<String> { text.iter().map(|l| l.to_string()).collect() };
        let paid = extract(
            &lines(&[
                "参松养心胶囊 0.4g*36粒  1  25.00",
                "医保统筹支付  12.00",
                "现金  13.00",
            ]),
            shipped_patterns(),
        );
        assert_eq!(paid.insurance, Some(true));
        assert_eq!(paid.lines.len(), 1, "{:?}", paid.lines);
        let refused = extract(
            &lines(&["医保结算失败 请自费", "合计：25.00"]),
            shipped_patterns(),
        );
        assert_eq!(refused.insurance, Some(false));
        let none = extract(&lines(&["现金  25.00"]), shipped_patterns());
        assert_eq!(none.insurance, None);
    }

    #[test]
    fn chinese_pharmacy_receipt_decodes_and_extracts() {
        let bytes = chinese_receipt();
        let receipts = decode_all(&settings(), &bytes);
        assert_eq!(receipts.len(), 1, "{receipts:?}");
        let receipt = &receipts[0];
        assert_eq!(receipt.closed_by, ClosedBy::Cut);
        assert_eq!(receipt.unknown_commands, 0);
        assert_eq!(
            receipt.lines,
            [
                "康宁大药房（龙港店）",
                "单号：XS20250101-0007",
                "收银员：张三    2025-01-01 10:30",
                "--------------------------------",
                "品名/规格          数量    金额",
                "参松养心胶囊 0.4g*36粒  1  25.00",
                "6901234567892",
                "阿莫西林胶囊 0.25g*24粒  2  12.50  25.00",
                "6923456789014",
                "6934567890128 维生素C片 100片  x1  8.50",
                "--------------------------------",
                "合计：4件          ¥58.50",
                "应收：￥58.50",
                "实收：100.00   找零：41.50",
                "",
                "谢谢惠顾，祝您健康！",
            ]
        );
        assert_eq!(receipt.qr, ["https://fp.example.cn/inv?no=XS20250101-0007"]);

        let extracted = extract(&receipt.lines, shipped_patterns());
        assert_eq!(extracted.receipt.as_deref(), Some("XS20250101-0007"));
        assert_eq!(extracted.clerk.as_deref(), Some("张三"));
        assert_eq!(extracted.total, Some(58.5));
        assert_eq!(
            extracted.lines,
            [
                ExtractedLine {
                    sku: Some("6901234567892".into()),
                    name: Some("参松养心胶囊 0.4g*36粒".into()),
                    qty: Some(1.0),
                    unit_price: None,
                    amount: Some(25.0),
                },
                ExtractedLine {
                    sku: Some("6923456789014".into()),
                    name: Some("阿莫西林胶囊 0.25g*24粒".into()),
                    qty: Some(2.0),
                    unit_price: Some(12.5),
                    amount: Some(25.0),
                },
                ExtractedLine {
                    sku: Some("6934567890128".into()),
                    name: Some("维生素C片 100片".into()),
                    qty: Some(1.0),
                    unit_price: None,
                    amount: Some(8.5),
                },
            ]
        );
    }

    #[test]
    fn sku_printed_before_the_name_goes_to_the_next_line() {
        let lines: Vec<String> = [
            "6901234567892",
            "参松养心胶囊 0.4g*36粒  1  25.00",
            "6923456789014",
            "阿莫西林胶囊 0.25g*24粒  2  25.00",
            "应收：58.50",
        ]
        .map(String::from)
        .to_vec();
        let extracted = extract(&lines, shipped_patterns());
        let skus: Vec<_> = extracted.lines.iter().map(|l| l.sku.as_deref()).collect();
        assert_eq!(skus, [Some("6901234567892"), Some("6923456789014")]);
        assert_eq!(extracted.total, Some(58.5));
    }

    #[test]
    fn total_takes_the_last_match_and_total_lines_are_not_items() {
        let lines: Vec<String> = ["合计  3  60.00", "优惠：1.50", "应收：￥58.50"]
            .map(String::from)
            .to_vec();
        let extracted = extract(&lines, shipped_patterns());
        assert_eq!(extracted.total, Some(58.5));
        assert!(extracted.lines.is_empty(), "{:?}", extracted.lines);
    }

    #[test]
    fn images_are_skipped_by_their_length_not_decoded() {
        let mut bytes = gb("前\n");
        bytes.extend(raster(3, 5));
        // ESC * 33 (24-dot double density): 3 bytes per column, 4 columns.
        bytes.extend([ESC, b'*', 33, 4, 0]);
        bytes.extend([LF, ESC, GS, b'V', 0, LF, GS, b'V', 65, 0, LF, FS]);
        // ESC * 0 (8-dot): 1 byte per column.
        bytes.extend([ESC, b'*', 0, 3, 0, GS, b'V', 0]);
        // GS 8 L with 6 bytes of payload.
        bytes.extend([GS, b'8', b'L', 6, 0, 0, 0, LF, GS, b'V', 1, ESC, b'@']);
        // GS ( L (graphics) and FS ( X style functions.
        bytes.extend([GS, b'(', b'L', 4, 0, LF, GS, b'V', 0]);
        bytes.extend([FS, b'(', b'X', 2, 0, LF, LF]);
        // GS k: a NUL-ended form and a counted CODE128.
        bytes.extend(b"\x1dk\x04A123\x00\x1dkI\x05{B\x0a\x1b\x1d");
        bytes.extend(gb("后\n"));
        bytes.extend([GS, b'V', 0]);
        let receipts = decode_all(&settings(), &bytes);
        assert_eq!(receipts.len(), 1, "{receipts:?}");
        assert_eq!(receipts[0].lines, ["前", "后"]);
        assert_eq!(receipts[0].unknown_commands, 0);
    }

    #[test]
    fn code_pages_outside_chinese_mode() {
        let mut bytes = vec![FS, b'.', ESC, b't', 0, b'a', 0x82, b'\n'];
        bytes.extend([ESC, b't', 16, b'b', 0xE9, b'\n']);
        bytes.extend([ESC, b't', 99, b'c', 0xE9, b'\n']);
        bytes.extend([FS, b'&']);
        bytes.extend(gb("药\n"));
        let receipts = decode_all(&settings(), &bytes);
        assert_eq!(receipts[0].lines, ["aé", "bé", "c\u{FFFD}", "药"]);
    }

    #[test]
    fn utf8_encoding_in_chinese_mode() {
        let settings = Options {
            encoding: TextEncoding::Utf8,
            ..settings()
        };
        let receipts = decode_all(&settings, "合计：¥58.50\n".as_bytes());
        assert_eq!(receipts[0].lines, ["合计：¥58.50"]);
    }

    #[test]
    fn line_controls() {
        let bytes = b"\n\na\tb  \r\n\x00c\x18d\x1bd\x03e\n\n\n\nf\x0cg\x1dV\x00";
        let receipts = decode_all(&settings(), bytes);
        assert_eq!(receipts[0].lines, ["a b", "cd", "e", "", "f", "g"]);

        let cr = Options {
            cr_ends_line: true,
            ..settings()
        };
        let receipts = decode_all(&cr, b"one\rtwo\r");
        assert_eq!(receipts[0].lines, ["one", "two"]);
    }

    #[test]
    fn unknown_commands_are_skipped_two_bytes_and_counted() {
        // ESC ~ and GS ~ are unknown; GS V 7 is an unknown cut form, read again from its third byte.
        let bytes = b"\x1b~a\x1d~b\x1dV7c\n\x10xd\n";
        let receipts = decode_all(&settings(), bytes);
        assert_eq!(receipts[0].lines, ["ab7c", "xd"]);
        assert_eq!(receipts[0].unknown_commands, 3);
        assert_eq!(receipts[0].closed_by, ClosedBy::Shutdown);
    }

    #[test]
    fn every_cut_ends_a_receipt_and_the_rest_waits() {
        let bytes = b"one\n\x1dVA\x05two\n\x1bithree\n\x1dV1four";
        let mut decoder = EscposDecoder::new(&settings());
        let mut out = Vec::new();
        decoder.push(bytes, &mut out);
        let lines: Vec<_> = out.iter().map(|r| r.lines.clone()).collect();
        assert_eq!(lines, [vec!["one"], vec!["two"], vec!["three"]]);
        assert!(decoder.in_receipt());
        let rest = decoder.close(ClosedBy::Timeout).expect("four is pending");
        assert_eq!(rest.lines, ["four"]);
        assert_eq!(rest.closed_by, ClosedBy::Timeout);
        assert_eq!(rest.bytes, 4);
        assert!(!decoder.in_receipt());
        assert_eq!(decoder.close(ClosedBy::Shutdown), None);
    }

    #[test]
    fn blank_receipts_are_reported_as_such() {
        let receipts = decode_all(&settings(), b"\x1b@\x1dV\x00\x1dV\x01");
        assert_eq!(receipts.len(), 2);
        assert!(receipts.iter().all(Receipt::is_blank));
    }

    #[test]
    fn size_limit_closes_a_receipt() {
        let settings = Options {
            max_receipt: 1024,
            ..settings()
        };
        let mut decoder = EscposDecoder::new(&settings);
        let mut out = Vec::new();
        for _ in 0..100 {
            decoder.push(b"0123456789abcdefghi\n", &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].closed_by, ClosedBy::Size);
        assert_eq!(out[0].bytes, 1024);
        assert_eq!(out[0].lines.len(), 52, "51 whole lines and a piece");
        assert_eq!(out[0].lines[51], "0123");
        let rest = decoder.close(ClosedBy::Timeout).expect("pending");
        assert_eq!(rest.bytes, 2000 - 1024);
        assert_eq!(rest.lines[0], "456789abcdefghi");
    }

    #[test]
    fn an_image_straddling_the_size_limit_is_still_skipped() {
        let settings = Options {
            max_receipt: 1024,
            ..settings()
        };
        // The image starts at byte 711 and ends at 1311: the receipt closes inside it.
        let mut bytes = b"a\n".to_vec();
        bytes.extend([b'x'; 700]);
        bytes.push(LF);
        bytes.extend(raster(20, 30));
        bytes.extend(b"b\n\x1dV\x00");
        let receipts = decode_all(&settings, &bytes);
        let lines: Vec<_> = receipts.iter().map(|r| r.lines.clone()).collect();
        assert_eq!(
            lines,
            [vec!["a".to_string(), "x".repeat(700)], vec!["b".into()]]
        );
        assert_eq!(receipts[0].closed_by, ClosedBy::Size);
        assert_eq!(receipts[1].closed_by, ClosedBy::Cut);
        assert_eq!(receipts[1].untrusted_lengths, 0);
    }

    /// The lines of the receipts that carry any, in order.
    fn texts(receipts: &[Receipt]) -> Vec<Vec<String>> {
        receipts
            .iter()
            .filter(|receipt| !receipt.is_blank())
            .map(|receipt| receipt.lines.clone())
            .collect()
    }

    #[test]
    fn a_gs_8_l_announcing_gigabytes_swallows_none_of_the_next_receipts() {
        let receipt_a: Vec<String> = RECEIPT_A_TXT.lines().map(String::from).collect();
        // Alone before the receipts, and inside a receipt that already printed a line.
        for before in [&b""[..], b"printed\n"] {
            let mut bytes = before.to_vec();
            bytes.extend([GS, b'8', b'L', 0xFF, 0xFF, 0xFF, 0xFF, 0x30, 0x70]);
            for _ in 0..5 {
                bytes.extend(RECEIPT_A);
            }
            for sizes in [&[bytes.len()][..], &[1], &[3, 250, 7]] {
                let receipts = decode_chunked(&settings(), &bytes, sizes);
                let mut expected = vec![receipt_a.clone(); 5];
                if !before.is_empty() {
                    expected.insert(0, vec!["printed".into()]);
                }
                assert_eq!(texts(&receipts), expected, "{before:?} {sizes:?}");
                // The receipt holding the bogus length ends where the next one starts.
                assert_eq!(receipts[0].closed_by, ClosedBy::Resync);
                assert_eq!(receipts[0].untrusted_lengths, 1);
                assert!(receipts[1..].iter().all(|r| r.closed_by == ClosedBy::Cut));
                assert!(receipts[1..].iter().all(|r| r.untrusted_lengths == 0));
            }
        }
    }

    #[test]
    fn a_receipt_without_init_after_a_bogus_length_is_found_again_at_its_cut() {
        let mut bytes = vec![GS, b'v', b'0', 0, 0xFF, 0xFF, 0xFF, 0xFF];
        bytes.extend(b"lost\n\x1dV\x00next\n\x1dVA\x03");
        let receipts = decode_all(&settings(), &bytes);
        assert_eq!(texts(&receipts), [vec!["next".to_string()]]);
        assert_eq!(receipts[0].closed_by, ClosedBy::Cut);
        assert_eq!(receipts[0].untrusted_lengths, 1);
    }

    #[test]
    fn out_of_sync_a_plausible_length_stops_at_the_next_init() {
        // An unknown command, then a 60,000-byte "image" that is really the next receipt.
        let mut bytes = b"\x1b~garbled\n".to_vec();
        bytes.extend([ESC, b'*', 0, 0x60, 0xEA]);
        bytes.extend(b"\x1b@real\n\x1dV\x00");
        // Back in sync: lengths are trusted again and skip what looks like commands.
        bytes.extend([ESC, b'*', 0, 4, 0, ESC, b'@', GS, b'V']);
        bytes.extend(b"after\n\x1dV\x00");
        let receipts = decode_all(&settings(), &bytes);
        assert_eq!(
            texts(&receipts),
            [
                vec!["garbled".to_string()],
                vec!["real".into()],
                vec!["after".into()]
            ]
        );
        assert_eq!(receipts[0].closed_by, ClosedBy::Resync);
        assert_eq!(
            (receipts[0].unknown_commands, receipts[0].untrusted_lengths),
            (1, 1)
        );
        assert_eq!(receipts[1].closed_by, ClosedBy::Cut);
        assert_eq!(receipts[2].closed_by, ClosedBy::Cut);
    }

    #[test]
    fn receipts_after_random_line_noise_are_recovered() {
        use rand::{RngCore, SeedableRng};
        let receipt = decode_all(&settings(), &chinese_receipt()).remove(0).lines;
        for seed in 1..=8 {
            // More noise than one receipt may hold, so it is also cut by size.
            let mut bytes = vec![0u8; 300 * 1024];
            rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
            for _ in 0..5 {
                bytes.extend(chinese_receipt());
            }
            let receipts = decode_chunked(&settings(), &bytes, &[4096, 17, 256]);
            let last: Vec<_> = receipts[receipts.len() - 5..].to_vec();
            for (i, recovered) in last.iter().enumerate() {
                assert_eq!(recovered.lines, receipt, "seed {seed}, receipt {i}");
                assert_eq!(recovered.closed_by, ClosedBy::Cut);
                assert_eq!(recovered.qr.len(), 1);
            }
        }
    }

    #[test]
    fn long_lines_are_cut_into_pieces_without_breaking_characters() {
        // 4095 ASCII bytes then a 4-byte ¥ across the cut.
        let mut bytes = vec![b'a'; MAX_LINE - 1];
        bytes.extend(gb("¥x"));
        bytes.push(LF);
        let receipts = decode_chunked(&settings(), &bytes, &[1000, 1, 7]);
        let lines = &receipts[0].lines;
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], "a".repeat(MAX_LINE - 1));
        assert_eq!(lines[1], "¥x");
    }

    #[test]
    fn timeout_drops_a_half_received_command() {
        let mut decoder = EscposDecoder::new(&settings());
        let mut out = Vec::new();
        // A graphics header announcing 4 GB, then silence.
        decoder.push(b"x\n\x1d8L\xff\xff\xff\xff", &mut out);
        let closed = decoder.close(ClosedBy::Timeout).expect("pending");
        assert_eq!(closed.lines, ["x"]);
        decoder.push(b"next\n\x1dV\x00", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].lines, ["next"]);
    }

    #[test]
    fn a_split_gb18030_character_survives_any_split() {
        let bytes = gb("¥药\n");
        for split in 0..=bytes.len() {
            let receipts = decode_chunked(&settings(), &bytes, &[split.max(1)]);
            assert_eq!(receipts[0].lines, ["¥药"], "split {split}");
        }
    }

    /// A stream of receipts mixing all the awkward parts, for the chunking property.
    fn mixed_stream() -> Vec<u8> {
        let mut bytes = RECEIPT_A.to_vec();
        bytes.extend(chinese_receipt());
        bytes.extend([ESC, b'*', 33, 5, 0]);
        bytes.extend([GS; 15]);
        bytes.extend(b"\x1bD\x08\x10\x18\x00tail\x1dk\x02123\n\x10\x04\x01");
        bytes.extend([FS, b'.', ESC, b't', 16, 0xE9, LF, FS, b'&']);
        bytes
    }

    /// Turns about a sixth of arbitrary bytes into ones that start or steer commands, so random input
    /// reaches the command parser's corners (mapping is much cheaper than a `prop_oneof` per byte).
    fn command_heavy(bytes: Vec<u8>) -> Vec<u8> {
        const STEER: [u8; 12] = [
            ESC, GS, FS, DLE, LF, b'(', b'V', b'k', b'*', b'v', b'8', b'D',
        ];
        bytes
            .into_iter()
            .map(|byte| match STEER.get(usize::from(byte % 36)) {
                Some(&steer) if byte >= 0x80 => steer,
                _ => byte,
            })
            .collect()
    }

    proptest! {
        #[test]
        fn any_chunking_decodes_the_same(sizes in prop::collection::vec(1usize..64, 1..20)) {
            let bytes = mixed_stream();
            let whole = decode_all(&settings(), &bytes);
            prop_assert_eq!(whole.len(), 3);
            prop_assert_eq!(&decode_chunked(&settings(), &bytes, &sizes), &whole);
        }

        #[test]
        fn any_split_point_decodes_the_same(split in 0usize..4000) {
            let bytes = mixed_stream();
            let split = split.min(bytes.len());
            let mut decoder = EscposDecoder::new(&settings());
            let mut out = Vec::new();
            decoder.push(&bytes[..split], &mut out);
            decoder.push(&bytes[split..], &mut out);
            out.extend(decoder.close(ClosedBy::Shutdown));
            prop_assert_eq!(out, decode_all(&settings(), &bytes));
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_chunking_does_not_matter(
            bytes in prop::collection::vec(any::<u8>(), 0..3000).prop_map(command_heavy),
            sizes in prop::collection::vec(1usize..300, 1..8),
            max_receipt in 1usize..4096,
            chinese_mode: bool,
            cr_ends_line: bool,
        ) {
            let settings = Options { max_receipt, chinese_mode, cr_ends_line, ..settings() };
            let whole = decode_all(&settings, &bytes);
            let chunked = decode_chunked(&settings, &bytes, &sizes);
            prop_assert_eq!(&chunked, &whole);
            let total: usize = whole.iter().map(|receipt| receipt.bytes).sum();
            prop_assert_eq!(total, bytes.len());
            prop_assert!(whole.iter().all(|receipt| receipt.bytes <= max_receipt));
            for receipt in &whole {
                let _ = extract(&receipt.lines, shipped_patterns());
            }
        }

        #[test]
        fn extract_never_panics(lines in prop::collection::vec(".{0,80}", 0..30)) {
            let _ = extract(&lines, shipped_patterns());
        }
    }
}
