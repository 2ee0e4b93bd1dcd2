//! Serial framing: cuts the byte stream of a serial scanner (or a line-oriented register) into
//! frames.
//!
//! A frame ends at any of the terminators the device profile enables:
//! - CR and/or LF. CR LF is one terminator in effect: the empty frame between CR and LF is skipped,
//!   as is every empty frame.
//! - A custom `suffix` of one or more bytes (`\t`, ETX, `\x03\r`…). At each byte the suffix is checked
//!   before CR/LF, so a suffix may end in CR or LF; a suffix that has CR or LF *inside* it only works
//!   with `cr`/`lf` off (the line terminator would fire first).
//! - An idle gap (the caller's timer calls [`Framer::idle`]), for scanners that send no terminator.
//!
//! Frames are handed out without their terminator; a configured `strip_prefix` is removed from the
//! start of a frame that has it. GS (0x1D) is data, never a terminator or stripped (it is the GS1
//! field separator): configuration should refuse it as a suffix.
//!
//! A frame longer than `max_frame` bytes (its raw length, terminator excluded, prefix included) is
//! reported once as [`FrameEvent::Overlong`] with its length and first 32 bytes, and the rest of it
//! is discarded up to the next terminator; memory use stays bounded by `max_frame` plus the suffix
//! length whatever the line sends.
//!
//! The framer is a byte-level state machine whose state survives between [`Framer::push`] calls, so
//! how the bytes were split into reads (between CR and LF, inside a multi-byte suffix…) never
//! changes the frames. Without a multi-byte suffix it scans each read for the next terminator and
//! copies whole runs; a frame that arrives inside a single read is copied once, straight into the
//! event.

use std::cell::Cell;

/// How frames end on a serial line (from the device profile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingSpec {
    /// CR ends a frame.
    pub cr: bool,
    /// LF ends a frame.
    pub lf: bool,
    /// A custom terminator sequence (e.g. `b"\t"` or `b"\x03"`), in addition to CR/LF; empty = none.
    pub suffix: Option<Vec<u8>>,
    /// A configured prefix removed from the start of a frame when present; empty = none.
    pub strip_prefix: Option<Vec<u8>>,
    /// Longest frame accepted, in bytes; longer ones become [`FrameEvent::Overlong`].
    pub max_frame: usize,
}

/// How many leading bytes of an overlong frame are kept for its report.
pub const OVERLONG_HEAD: usize = 32;

/// What the framer found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameEvent {
    /// A complete frame, without terminator and configured prefix; never empty.
    Frame(Vec<u8>),
    /// A frame longer than `max_frame`, discarded.
    Overlong {
        /// Its length in bytes (terminator excluded).
        len: usize,
        /// Its first [`OVERLONG_HEAD`] bytes, for the `bad_frame` record.
        head: Vec<u8>,
    },
}

/// An overlong frame being skipped.
#[derive(Debug, Clone)]
struct Discarding {
    /// Bytes of the frame seen so far.
    len: usize,
    /// Its first [`OVERLONG_HEAD`] bytes.
    head: Vec<u8>,
}

/// Cuts a serial byte stream into frames; see the module doc.
#[derive(Debug, Clone)]
pub struct Framer {
    /// Whether CR ends a frame.
    cr: bool,
    /// Whether LF ends a frame.
    lf: bool,
    /// The custom terminator; empty when there is none.
    suffix: Vec<u8>,
    /// KMP failure function of `suffix`: `fail[i]` is the length of the longest proper prefix of
    /// `suffix[..=i]` that is also its suffix. Lets the suffix be matched one byte at a time with no
    /// look-back into the (possibly discarded) frame.
    fail: Vec<usize>,
    /// The prefix to strip; empty when there is none.
    strip_prefix: Vec<u8>,
    /// Longest frame accepted.
    max_frame: usize,
    /// The pending frame's bytes, including suffix bytes matched so far.
    buf: Vec<u8>,
    /// Set while skipping an overlong frame (then `buf` is empty).
    discarding: Option<Discarding>,
    /// How many bytes of `suffix` the pending bytes end with.
    matched: usize,
}

impl Framer {
    /// A framer for `spec`, with nothing buffered.
    pub fn new(spec: FramingSpec) -> Self {
        let suffix = spec.suffix.unwrap_or_default();
        let fail = failure_function(&suffix);
        Framer {
            cr: spec.cr,
            lf: spec.lf,
            suffix,
            fail,
            strip_prefix: spec.strip_prefix.unwrap_or_default(),
            max_frame: spec.max_frame,
            buf: Vec::new(),
            discarding: None,
            matched: 0,
        }
    }

    /// Feeds bytes as read from the port; calls `emit` for each complete frame / overlong event, in
    /// order.
    pub fn push(&mut self, bytes: &[u8], mut emit: impl FnMut(FrameEvent)) {
        self.push_at(bytes, |event, _| emit(event));
    }

    /// Like [`Framer::push`], and also tells where in `bytes` each event's frame ended: the
    /// offset just past its terminator. Passthrough uses it to forward the exact bytes of each
    /// frame (and to hold back answer-card frames).
    pub fn push_at(&mut self, bytes: &[u8], mut emit: impl FnMut(FrameEvent, usize)) {
        let end = Cell::new(0);
        let mut emit = |event| emit(event, end.get());
        if self.suffix.len() > 1 {
            self.push_bytewise(bytes, &end, &mut emit);
        } else {
            self.push_runs(bytes, &end, &mut emit);
        }
    }

    /// The line went idle for the idle gap: whatever is buffered is a frame (scanners with no
    /// terminator). Partly received suffix bytes count as data then.
    pub fn idle(&mut self) -> Option<FrameEvent> {
        let mut event = None;
        self.finish(&mut |e| event = Some(e));
        event
    }

    /// Whether bytes of an unfinished frame are buffered (the caller arms its idle timer then).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.discarding.is_some()
    }

    /// Whether `b` is an enabled single-byte terminator (CR, LF, or a one-byte suffix).
    fn is_terminator(&self, b: u8) -> bool {
        (b == b'\r' && self.cr) || (b == b'\n' && self.lf) || self.suffix == [b]
    }

    /// Most bytes the pending frame may hold before it is certainly overlong: a multi-byte suffix
    /// may still complete and take its first bytes back off the frame.
    fn limit(&self) -> usize {
        self.max_frame
            .saturating_add(self.suffix.len().saturating_sub(1))
    }

    /// `push` without a multi-byte suffix: find each terminator and take the run before it whole.
    fn push_runs(&mut self, bytes: &[u8], ended: &Cell<usize>, emit: &mut dyn FnMut(FrameEvent)) {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| self.is_terminator(b)) {
            ended.set(bytes.len() - rest.len() + end + 1);
            let run = &rest[..end];
            if self.buf.is_empty() && self.discarding.is_none() {
                // The whole frame is in this read: no need to go through `buf`.
                self.emit_frame(run, emit);
            } else {
                self.accumulate(run);
                self.finish(emit);
            }
            rest = &rest[end + 1..];
        }
        self.accumulate(rest);
    }

    /// `push` with a multi-byte suffix: byte by byte, matching the suffix as it goes.
    fn push_bytewise(
        &mut self,
        bytes: &[u8],
        ended: &Cell<usize>,
        emit: &mut dyn FnMut(FrameEvent),
    ) {
        for (at, &b) in bytes.iter().enumerate() {
            ended.set(at + 1);
            self.matched = self.advance_suffix(b);
            if self.matched == self.suffix.len() {
                // The suffix's earlier bytes were taken as data: give them back.
                self.drop_tail(self.suffix.len() - 1);
                self.finish(emit);
            } else if (b == b'\r' && self.cr) || (b == b'\n' && self.lf) {
                self.finish(emit);
            } else {
                self.accumulate(&[b]);
            }
        }
    }

    /// The suffix match length after byte `b` (KMP step).
    fn advance_suffix(&self, b: u8) -> usize {
        let mut matched = self.matched;
        loop {
            // `matched` < suffix.len() here: a full match always finishes the frame and resets it.
            if self.suffix.get(matched) == Some(&b) {
                return matched + 1;
            }
            if matched == 0 {
                return 0;
            }
            matched = self.fail[matched - 1];
        }
    }

    /// Adds data bytes to the pending frame, switching to discarding when it gets overlong.
    fn accumulate(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if let Some(discarding) = &mut self.discarding {
            fill_head(&mut discarding.head, data);
            discarding.len += data.len();
        } else if self.buf.len() + data.len() > self.limit() {
            let mut head = Vec::with_capacity(OVERLONG_HEAD);
            fill_head(&mut head, &self.buf);
            fill_head(&mut head, data);
            self.discarding = Some(Discarding {
                len: self.buf.len() + data.len(),
                head,
            });
            self.buf.clear();
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    /// Removes the last `n` bytes of the pending frame (suffix bytes taken as data until the suffix
    /// completed).
    fn drop_tail(&mut self, n: usize) {
        if let Some(discarding) = &mut self.discarding {
            discarding.len = discarding.len.saturating_sub(n);
            discarding.head.truncate(discarding.len);
        } else {
            self.buf.truncate(self.buf.len().saturating_sub(n));
        }
    }

    /// Ends the pending frame: emits it (or its overlong report) and resets for the next one.
    fn finish(&mut self, emit: &mut dyn FnMut(FrameEvent)) {
        self.matched = 0;
        if let Some(Discarding { len, head }) = self.discarding.take() {
            emit(FrameEvent::Overlong { len, head });
            return;
        }
        // Take the bytes out while keeping `buf`'s allocation for the next frame.
        let buf = std::mem::take(&mut self.buf);
        self.emit_frame(&buf, emit);
        self.buf = buf;
        self.buf.clear();
    }

    /// Emits the complete raw frame `data` as a frame, an overlong report, or nothing when empty.
    fn emit_frame(&self, data: &[u8], emit: &mut dyn FnMut(FrameEvent)) {
        if data.len() > self.max_frame {
            let head = data[..data.len().min(OVERLONG_HEAD)].to_vec();
            emit(FrameEvent::Overlong {
                len: data.len(),
                head,
            });
            return;
        }
        let data = data.strip_prefix(&self.strip_prefix[..]).unwrap_or(data);
        if !data.is_empty() {
            emit(FrameEvent::Frame(data.to_vec()));
        }
    }
}

/// Appends to `head` as much of `data` as fits in [`OVERLONG_HEAD`] bytes.
fn fill_head(head: &mut Vec<u8>, data: &[u8]) {
    let room = OVERLONG_HEAD.saturating_sub(head.len());
    head.extend_from_slice(&data[..data.len().min(room)]);
}

/// The KMP failure function of `pattern` (see [`Framer::fail`]).
fn failure_function(pattern: &[u8]) -> Vec<usize> {
    let mut fail = vec![0; pattern.len()];
    let mut k = 0;
    for i in 1..pattern.len() {
        while k > 0 && pattern[i] != pattern[k] {
            k = fail[k - 1];
        }
        if pattern[i] == pattern[k] {
            k += 1;
        }
        fail[i] = k;
    }
    fail
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(cr: bool, lf: bool) -> FramingSpec {
        FramingSpec {
            cr,
            lf,
            suffix: None,
            strip_prefix: None,
            max_frame: 1024,
        }
    }

    /// Feeds `chunks` one after the other, then signals idle when `idle_at_end`.
    fn run(spec: &FramingSpec, chunks: &[&[u8]], idle_at_end: bool) -> Vec<FrameEvent> {
        let mut framer = Framer::new(spec.clone());
        let mut events = Vec::new();
        for chunk in chunks {
            framer.push(chunk, |e| events.push(e));
        }
        if idle_at_end {
            events.extend(framer.idle());
            assert!(!framer.has_partial());
        }
        events
    }

    fn frames(list: &[&[u8]]) -> Vec<FrameEvent> {
        list.iter().map(|f| FrameEvent::Frame(f.to_vec())).collect()
    }

    /// A plain model of the framing rules, byte by byte with no buffering limits, to compare with.
    fn model(spec: &FramingSpec, input: &[u8], idle_at_end: bool) -> Vec<FrameEvent> {
        let suffix = spec.suffix.clone().unwrap_or_default();
        let prefix = spec.strip_prefix.clone().unwrap_or_default();
        let mut events = Vec::new();
        let mut current = Vec::new();
        let end = |frame: &mut Vec<u8>, events: &mut Vec<FrameEvent>| {
            let raw = std::mem::take(frame);
            if raw.len() > spec.max_frame {
                let head = raw[..raw.len().min(OVERLONG_HEAD)].to_vec();
                events.push(FrameEvent::Overlong {
                    len: raw.len(),
                    head,
                });
            } else {
                let data = raw.strip_prefix(&prefix[..]).unwrap_or(&raw);
                if !data.is_empty() {
                    events.push(FrameEvent::Frame(data.to_vec()));
                }
            }
        };
        for &b in input {
            current.push(b);
            if !suffix.is_empty() && current.ends_with(&suffix) {
                current.truncate(current.len() - suffix.len());
                end(&mut current, &mut events);
            } else if (b == b'\r' && spec.cr) || (b == b'\n' && spec.lf) {
                current.pop();
                end(&mut current, &mut events);
            }
        }
        if idle_at_end {
            end(&mut current, &mut events);
        }
        events
    }

    #[test]
    fn cr_lf_and_crlf_end_frames() {
        let spec = spec(true, true);
        assert_eq!(
            run(&spec, &[b"A\rB\nC\r\nD\n\rE\r\r\n\nF"], true),
            frames(&[b"A", b"B", b"C", b"D", b"E", b"F"])
        );
    }

    #[test]
    fn only_enabled_terminators_count() {
        assert_eq!(
            run(&spec(true, false), &[b"A\nB\rC\r\n"], true),
            frames(&[b"A\nB", b"C", b"\n"])
        );
        assert_eq!(
            run(&spec(false, true), &[b"A\r\nB\n"], false),
            frames(&[b"A\r", b"B"])
        );
    }

    #[test]
    fn gs_is_data() {
        let events = run(
            &spec(true, true),
            &[b"]d2010690123456789210A\x1d21B\x1d\r\n"],
            false,
        );
        assert_eq!(events, frames(&[b"]d2010690123456789210A\x1d21B\x1d"]));
    }

    #[test]
    fn custom_suffix_single_and_multi_byte() {
        let mut tab = spec(false, false);
        tab.suffix = Some(b"\t".to_vec());
        assert_eq!(
            run(&tab, &[b"A\tB\t\tC"], true),
            frames(&[b"A", b"B", b"C"])
        );

        let mut etx_cr = spec(true, true);
        etx_cr.suffix = Some(b"\x03\r".to_vec());
        assert_eq!(
            run(&etx_cr, &[b"A\x03\rB\x03C\r\x03\x03\r"], false),
            frames(&[b"A", b"B\x03C", b"\x03"])
        );
    }

    #[test]
    fn self_overlapping_suffix() {
        // "aab" inside "aaab": KMP must fall back rather than restart.
        let mut s = spec(false, false);
        s.suffix = Some(b"aab".to_vec());
        assert_eq!(run(&s, &[b"xaaabyaab"], true), frames(&[b"xa", b"y"]));
    }

    #[test]
    fn strips_configured_prefix() {
        let mut s = spec(true, true);
        s.strip_prefix = Some(b"\x02".to_vec());
        assert_eq!(
            run(&s, &[b"\x02A\r\nB\r\n\x02\r\n"], false),
            frames(&[b"A", b"B"])
        );
    }

    #[test]
    fn overlong_frame_is_reported_once_and_skipped() {
        let mut s = spec(true, true);
        s.max_frame = 4;
        assert_eq!(
            run(&s, &[b"ABCD\r\nABCDE", b"FGH\r\nOK\r\n"], false),
            vec![
                FrameEvent::Frame(b"ABCD".to_vec()),
                FrameEvent::Overlong {
                    len: 8,
                    head: b"ABCDEFGH".to_vec()
                },
                FrameEvent::Frame(b"OK".to_vec()),
            ]
        );
        // The head is capped; an overlong frame cut by the idle gap is reported too.
        let long = [b'x'; 100];
        let events = run(&s, &[&long[..40], &long[40..]], true);
        assert_eq!(
            events,
            vec![FrameEvent::Overlong {
                len: 100,
                head: vec![b'x'; OVERLONG_HEAD]
            }]
        );
    }

    #[test]
    fn overlong_with_multi_byte_suffix_counts_data_only() {
        let mut s = spec(false, false);
        s.suffix = Some(b"\x03\x04".to_vec());
        s.max_frame = 3;
        assert_eq!(
            run(&s, &[b"ABC\x03\x04ABCD\x03\x04"], false),
            vec![
                FrameEvent::Frame(b"ABC".to_vec()),
                FrameEvent::Overlong {
                    len: 4,
                    head: b"ABCD".to_vec()
                },
            ]
        );
    }

    #[test]
    fn idle_ends_a_frame_without_terminator() {
        let mut framer = Framer::new(spec(true, true));
        let mut events = Vec::new();
        framer.push(b"6901234567892", |e| events.push(e));
        assert!(events.is_empty());
        assert!(framer.has_partial());
        assert_eq!(
            framer.idle(),
            Some(FrameEvent::Frame(b"6901234567892".to_vec()))
        );
        assert!(!framer.has_partial());
        assert_eq!(framer.idle(), None);
    }

    #[test]
    fn partial_suffix_at_idle_is_data() {
        let mut s = spec(false, false);
        s.suffix = Some(b"\x03\x04".to_vec());
        assert_eq!(run(&s, &[b"AB\x03"], true), frames(&[b"AB\x03"]));
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let inputs: [&[u8]; 4] = [
            b"A\r\nBC\rD\nE\r\n\r\nF",
            b"\x02]E06901234567892\x03\r\n\x02X\x03\r",
            b"ab\x03\x04cd\x03\x03\x04\x03e",
            b"aaabaab\r\nxaab",
        ];
        let mut specs = vec![spec(true, true), spec(true, false), spec(false, true)];
        for suffix in [&b"\x03\x04"[..], b"\x03", b"aab", b"\x03\r\n"] {
            let mut s = spec(true, true);
            s.suffix = Some(suffix.to_vec());
            s.strip_prefix = Some(b"\x02".to_vec());
            s.max_frame = 6;
            specs.push(s.clone());
            s.cr = false;
            s.lf = false;
            specs.push(s);
        }
        for s in &specs {
            for input in inputs {
                for idle in [false, true] {
                    let whole = run(s, &[input], idle);
                    assert_eq!(whole, model(s, input, idle), "{s:?} {input:?}");
                    for i in 0..=input.len() {
                        for j in i..=input.len() {
                            let chunks = [&input[..i], &input[i..j], &input[j..]];
                            assert_eq!(run(s, &chunks, idle), whole, "{s:?} {input:?} {i} {j}");
                        }
                    }
                }
            }
        }
    }

    /// Noise on a line framed only by the idle gap (no terminator ever comes): however long it
    /// runs, the framer holds at most `max_frame` bytes, and reports it once as overlong.
    #[test]
    fn a_terminator_less_stream_of_noise_stays_within_max_frame() {
        use rand::{RngCore, SeedableRng};
        let mut s = spec(false, false);
        s.max_frame = 4096;
        let mut framer = Framer::new(s);
        let mut noise = vec![0u8; 64 * 1024];
        rand::rngs::StdRng::seed_from_u64(5).fill_bytes(&mut noise);
        let mut events = Vec::new();
        for _ in 0..160 {
            framer.push(&noise, |event| events.push(event));
            assert!(
                framer.buf.capacity() <= 2 * 4096,
                "{}",
                framer.buf.capacity()
            );
        }
        assert!(events.is_empty());
        match framer.idle() {
            Some(FrameEvent::Overlong { len, head }) => {
                assert_eq!(len, 160 * noise.len());
                assert_eq!(head, noise[..OVERLONG_HEAD]);
            }
            other => panic!("expected one overlong report, got {other:?}"),
        }
    }

    #[test]
    fn failure_function_examples() {
        assert_eq!(failure_function(b"aab"), vec![0, 1, 0]);
        assert_eq!(failure_function(b"abab"), vec![0, 0, 1, 2]);
        assert_eq!(failure_function(b""), Vec::<usize>::new());
    }

    fn arb_spec() -> impl Strategy<Value = FramingSpec> {
        let bytes =
            || proptest::collection::vec(prop::sample::select(&b"ab\r\n\x03\x1d"[..]), 0..4);
        (
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(bytes()),
            proptest::option::of(bytes()),
            0usize..12,
        )
            .prop_map(|(cr, lf, suffix, strip_prefix, max_frame)| FramingSpec {
                cr,
                lf,
                suffix,
                strip_prefix,
                max_frame,
            })
    }

    proptest! {
        #[test]
        fn random_chunking_matches_whole_input_and_model(
            spec in arb_spec(),
            input in proptest::collection::vec(prop::sample::select(&b"ab\r\n\x03\x1d"[..]), 0..60),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
            idle in any::<bool>(),
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for p in points {
                chunks.push(&input[start..p]);
                start = p;
            }
            chunks.push(&input[start..]);
            let whole = run(&spec, &[&input], idle);
            prop_assert_eq!(&run(&spec, &chunks, idle), &whole);
            prop_assert_eq!(whole, model(&spec, &input, idle));
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            spec in arb_spec(),
            input in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut framer = Framer::new(spec.clone());
            framer.push(&input, |event| {
                if let FrameEvent::Frame(frame) = &event {
                    assert!(!frame.is_empty() && frame.len() <= spec.max_frame);
                }
            });
            let _ = framer.idle();
        }
    }
}
