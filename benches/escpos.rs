//! ESC/POS tap throughput: a register→printer byte stream through `EscposDecoder`, in bytes per
//! second, and `extract` with the shipped patterns, in receipts per second. Run with
//! `cargo bench --bench escpos`.
//!
//! The stream is 200 typical Chinese pharmacy receipts (GB18030), read in 256-byte chunks like a
//! busy serial port: init and Chinese mode, a 384×120-dot raster logo, double-size shop name,
//! header lines, 12 items with their EAN-13 codes, totals with `¥`/`￥`, a QR code (e-invoice
//! link), feed and cut. `with_logo` is that stream (mostly image bytes, skipped by count);
//! `text_only` leaves the logo out, so nearly every byte is decoded text. `noise` is 1 MiB of
//! random bytes (line noise): garbled text, unknown commands, and payload lengths that are not
//! trusted and skipped only to the next `ESC @` or cut.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use posgw::config::ProfileSet;
use posgw::decode::escpos::{extract, ClosedBy, EscposDecoder, Options, Patterns, Receipt};
use rand::{RngCore, SeedableRng};

/// Receipts in the benchmark stream.
const RECEIPTS: usize = 200;

/// Bytes handed to the decoder per push, like one read from a serial port.
const READ_SIZE: usize = 256;

fn gb(text: &str) -> Vec<u8> {
    encoding_rs::GB18030.encode(text).0.into_owned()
}

/// One receipt; `logo` adds a 48-byte × 120-row raster image at the top.
fn receipt(number: usize, logo: bool) -> Vec<u8> {
    let mut bytes = vec![0x1B, b'@', 0x1C, b'&', 0x1B, b'a', 1];
    if logo {
        bytes.extend([0x1D, b'v', b'0', 0, 48, 0, 120, 0]);
        // Image data holds every byte value, commands and LF included.
        bytes.extend((0..48 * 120).map(|i| (i * 7 % 256) as u8));
    }
    bytes.extend([0x1D, b'!', 0x11]);
    bytes.extend(gb("康宁大药房（龙港店）\n"));
    bytes.extend([0x1D, b'!', 0, 0x1B, b'a', 0]);
    bytes.extend(gb(&format!("单号：XS20250101-{number:04}\n")));
    bytes.extend(gb("收银员：张三    2025-01-01 10:30\n"));
    bytes.extend(gb("--------------------------------\n"));
    bytes.extend(gb("品名/规格          数量  单价    金额\n"));
    for item in 0..12 {
        bytes.extend(gb(&format!(
            "参松养心胶囊 0.4g*36粒  {}  25.00  {}.00\n",
            item % 3 + 1,
            25 * (item % 3 + 1)
        )));
        bytes.extend(gb(&format!("69012345{item:05}\n")));
    }
    bytes.extend(gb("--------------------------------\n"));
    bytes.extend([0x1B, b'E', 1]);
    bytes.extend(gb("合计：24件             ¥600.00\n"));
    bytes.extend(gb("应收：￥600.00\n"));
    bytes.extend([0x1B, b'E', 0]);
    bytes.extend(gb("实收：600.00   找零：0.00\n\n"));
    bytes.extend(gb("谢谢惠顾，祝您健康！请保留小票\n"));
    let url = format!("https://fp.example.cn/inv?no=XS20250101-{number:04}");
    let length = (url.len() + 3) as u8;
    bytes.extend([0x1D, b'(', b'k', 4, 0, 0x31, b'A', b'2', 0]);
    bytes.extend([0x1D, b'(', b'k', 3, 0, 0x31, b'C', 6]);
    bytes.extend([0x1D, b'(', b'k', length, 0, 0x31, b'P', b'0']);
    bytes.extend(url.as_bytes());
    bytes.extend([0x1D, b'(', b'k', 3, 0, 0x31, b'Q', b'0']);
    bytes.extend([0x1B, b'd', 4, 0x1D, b'V', 66, 0]);
    bytes
}

fn stream(logo: bool) -> Vec<u8> {
    (0..RECEIPTS).flat_map(|n| receipt(n, logo)).collect()
}

fn settings() -> Options {
    Options::default()
}

/// Decodes the stream in `READ_SIZE` pieces.
fn decode(settings: &Options, input: &[u8]) -> Vec<Receipt> {
    let mut decoder = EscposDecoder::new(settings);
    let mut receipts = Vec::with_capacity(RECEIPTS);
    for chunk in input.chunks(READ_SIZE) {
        decoder.push(chunk, &mut receipts);
    }
    receipts.extend(decoder.close(ClosedBy::Shutdown));
    receipts
}

/// The shipped `[escpos.patterns]`, as the profile loader compiles them.
fn patterns() -> Patterns {
    let profiles = ProfileSet::built_in().expect("built-in profiles");
    let profile = profiles.get("escpos-tap").expect("escpos-tap is built in");
    profile.escpos.as_ref().expect("[escpos]").patterns.clone()
}

fn escpos(c: &mut Criterion) {
    let settings = settings();
    let mut group = c.benchmark_group("escpos_decode");
    for (name, logo) in [("with_logo", true), ("text_only", false)] {
        let input = stream(logo);
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let receipts = decode(&settings, black_box(&input));
                assert_eq!(receipts.len(), RECEIPTS);
                receipts
            })
        });
    }
    let mut noise = vec![0u8; 1 << 20];
    rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut noise);
    group.throughput(Throughput::Bytes(noise.len() as u64));
    group.bench_function("noise", |b| b.iter(|| decode(&settings, black_box(&noise))));
    group.finish();

    let patterns = patterns();
    let receipts = decode(&settings, &stream(false));
    let mut group = c.benchmark_group("escpos_extract");
    group.throughput(Throughput::Elements(receipts.len() as u64));
    group.bench_function("shipped_patterns", |b| {
        b.iter(|| {
            for receipt in &receipts {
                let extracted = extract(black_box(&receipt.lines), &patterns);
                assert_eq!(extracted.lines.len(), 12);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, escpos);
criterion_main!(benches);
