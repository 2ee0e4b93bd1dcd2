//! Scan path throughput: a serial byte stream through `Framer` and `decode_scan`, in frames per
//! second. Run with `cargo bench --bench decode`.
//!
//! The stream is a realistic pharmacy mix with CR LF terminators, read in 256-byte chunks like a
//! busy serial port: EAN-13 with `]E0`, GS1 DataMatrix packs (GTIN, expiry, lot, serial) and 20-digit
//! China trace codes, in the proportion 2 : 1 : 1.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use posgw::decode::{decode_scan, escape_raw, noise_reason, DecodeContext};
use posgw::devices::framing::{FrameEvent, Framer, FramingSpec};

/// Frames in the benchmark stream.
const FRAMES: usize = 10_000;

/// Bytes handed to the framer per push, like one read from a serial port.
const READ_SIZE: usize = 256;

/// The benchmark stream: `FRAMES` frames, each ending in CR LF.
fn stream() -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..FRAMES {
        match i % 4 {
            0 | 2 => bytes.extend_from_slice(b"]E06901234567892"),
            1 => bytes.extend_from_slice(
                format!(
                    "]d201069012345678921727063010B{:05}\x1d21SN{i:08}",
                    i % 1000
                )
                .as_bytes(),
            ),
            _ => bytes.extend_from_slice(format!("8110{i:016}").as_bytes()),
        }
        bytes.extend_from_slice(b"\r\n");
    }
    bytes
}

fn framer() -> Framer {
    Framer::new(FramingSpec {
        cr: true,
        lf: true,
        suffix: None,
        strip_prefix: None,
        max_frame: 4096,
    })
}

fn scan_path(c: &mut Criterion) {
    let input = stream();
    let ctx = DecodeContext { current_year: 2026 };
    let mut group = c.benchmark_group("scan_path");
    group.throughput(Throughput::Elements(FRAMES as u64));

    group.bench_function("frame_and_decode", |b| {
        b.iter(|| {
            let mut framer = framer();
            let mut decoded = 0usize;
            for chunk in input.chunks(READ_SIZE) {
                framer.push(chunk, |event| {
                    if let FrameEvent::Frame(frame) = event {
                        black_box(decode_scan(&frame, &ctx));
                        decoded += 1;
                    }
                });
            }
            assert_eq!(decoded, FRAMES);
        })
    });

    // What the gateway does per frame: noise check, `raw` escaping and decoding.
    group.bench_function("frame_check_escape_decode", |b| {
        b.iter(|| {
            let mut framer = framer();
            for chunk in input.chunks(READ_SIZE) {
                framer.push(chunk, |event| {
                    if let FrameEvent::Frame(frame) = event {
                        if noise_reason(&frame).is_none() {
                            black_box(escape_raw(&frame));
                            black_box(decode_scan(&frame, &ctx));
                        }
                    }
                });
            }
        })
    });
    group.finish();
}

criterion_group!(benches, scan_path);
criterion_main!(benches);
