//! A record fuzzer on stable Rust, shared by the smoke test (`tests/fuzz_records.rs`) and the
//! long run (`cargo run --release --example fuzz_records -- --cases N`).
//!
//! It quantizes a few small real models, saves them, and then, case by case with a generator
//! seeded by the case number, mutates one record and loads and runs it, counting outcomes:
//!
//! - raw mutations of the file's bytes (bit flips, byte writes, insertions, deletions,
//!   truncation, length fields, the program's JSON numbers and strings, swapped tensor bytes):
//!   any that loads must run and give the original's outputs exactly (its checksums matched,
//!   so its content is the original's), else it is counted in `altered_accepted`;
//! - sealed mutations (the program's JSON numbers, strings and structure, the tensors' names,
//!   bytes, shapes and types, edited and written back with fresh checksums by
//!   [`RecordParts::to_bytes`]): these reach the program and tensor validation and a run, and
//!   may load and give other numbers; they must not panic.
//!
//! Every panic is counted (by a panic hook, so one caught inside the library counts too).

#![allow(dead_code)] // the smoke test and the long run use different parts

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_quantize::graph::Graph;
use burn_quantize::models::ResNetConfig;
use burn_quantize::models::mobilenet_v3::MobileNetV3Config;
use burn_quantize::prepare::prepare;
use burn_quantize::qconfig::{DynamicConfig, Engine, QConfig, QConfigMap};
use burn_quantize::quantized::{QuantizedModel, convert};
use burn_quantize::record::RecordParts;
use burn_quantize::{Forward, quantize_dynamic};

mod rng;
pub use rng::Rng;

/// Panics seen since [`count_panics`] was called.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Installs a panic hook that counts every panic and prints the first few.
pub fn count_panics() {
    std::panic::set_hook(Box::new(|info| {
        if PANICS.fetch_add(1, Ordering::SeqCst) < 5 {
            eprintln!("fuzz: panic: {info}");
        }
    }));
}

/// A real record, the input it is run on and the output it gives.
pub struct Seed {
    /// The saved record.
    pub bytes: Vec<u8>,
    /// Its parts.
    pub parts: RecordParts,
    /// The input it runs on.
    pub input: Tensor<4>,
    /// The original model's output on it.
    pub output: TensorData,
}

/// Seeds: a narrowed ResNet-18 with its last block in float (float steps and parameters), a
/// narrowed MobileNetV3 (depthwise convs, tables, squeeze-and-excite), a ResNet with a
/// 16-bit stem and 12-bit weights (the wide kernels), and the ResNet dynamically quantized (a
/// dynamic linear head after float convolutions).
pub fn seeds(device: &Device) -> Vec<Seed> {
    let resnet = ResNetConfig::resnet18(10).narrowed(16).init(device);
    let mobilenet = MobileNetV3Config::large(10).narrowed(8).init(device);
    let x86 = QConfig::preset(Engine::X86);
    let float_tail = QConfigMap::global(x86.clone()).module("layer4.1", None);
    let wide = QConfigMap::global(x86.clone()).module(
        "conv1",
        QConfig::preset(Engine::Native).with_12bit_weights(),
    );
    let input = images(1, 1, device);
    let dynamic = quantize_dynamic(&resnet, &input, &DynamicConfig::default()).expect("dynamic");
    vec![
        seed(&resnet, &float_tail, device),
        seed(&mobilenet, &QConfigMap::global(x86), device),
        seed(&resnet, &wide, device),
        seed_of(dynamic, input),
    ]
}

fn seed<M: Forward<4, 2>>(model: &M, qconfig: &QConfigMap, device: &Device) -> Seed {
    let input = images(1, 1, device);
    let graph = Graph::capture(model, &input).expect("capture");
    let calibrated = prepare(&graph, qconfig)
        .expect("prepare")
        .calibrate(|m| m.forward::<4, 2>(images(4, 2, device)).map(drop))
        .expect("calibrate");
    seed_of(convert(&calibrated).expect("convert"), input)
}

/// The seed of a quantized model run on `input`.
fn seed_of(qmodel: QuantizedModel, input: Tensor<4>) -> Seed {
    let output = qmodel
        .try_forward::<4, 2>(input.clone())
        .expect("run")
        .into_data();
    let bytes = qmodel.to_bytes().expect("save");
    let parts = RecordParts::from_bytes(&bytes).expect("parts");
    Seed {
        bytes,
        parts,
        input,
        output,
    }
}

/// `n` pseudo-images `[n, 3, 32, 32]` in [-2, 2].
fn images(n: usize, seed: u64, device: &Device) -> Tensor<4> {
    let mut rng = Rng::new(seed, 0);
    let values: Vec<f32> = (0..n * 3 * 32 * 32).map(|_| rng.f32(-2.0, 2.0)).collect();
    Tensor::from_data(TensorData::new(values, [n, 3, 32, 32]), device)
}

/// What the cases of a run came to.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Outcomes {
    /// Cases run.
    pub cases: u64,
    /// Records refused with an error.
    pub errors: u64,
    /// Records that loaded.
    pub loaded_ok: u64,
    /// Loaded sealed records whose run was an error.
    pub run_errors: u64,
    /// Raw mutations that loaded and gave other outputs than the original (must be 0).
    pub altered_accepted: u64,
    /// Panics, caught ones included (must be 0).
    pub panics: u64,
}

impl Outcomes {
    /// Adds another run's outcomes.
    pub fn add(&mut self, other: &Outcomes) {
        self.cases += other.cases;
        self.errors += other.errors;
        self.loaded_ok += other.loaded_ok;
        self.run_errors += other.run_errors;
        self.altered_accepted += other.altered_accepted;
        self.panics += other.panics;
    }

    /// The `key=value` figures.
    pub fn line(&self) -> String {
        format!(
            "cases={} errors={} loaded_ok={} run_errors={} altered_accepted={} panics={}",
            self.cases,
            self.errors,
            self.loaded_ok,
            self.run_errors,
            self.altered_accepted,
            self.panics
        )
    }
}

/// Runs cases `cases` of a run seeded `seed` over `seeds`, showing each refusal's message to
/// `refused` (with whether the mutation was sealed).
pub fn run(
    seeds: &[Seed],
    seed: u64,
    cases: Range<u64>,
    device: &Device,
    refused: &mut dyn FnMut(bool, &str),
) -> Outcomes {
    let mut out = Outcomes::default();
    let panics_before = PANICS.load(Ordering::SeqCst);
    for case in cases {
        let mut rng = Rng::new(seed, case);
        let s = rng.pick(seeds);
        let (bytes, sealed) = if rng.below(2) == 0 {
            (raw_mutation(&s.bytes, &mut rng), false)
        } else {
            (sealed_mutation(&s.parts, &mut rng), true)
        };
        out.cases += 1;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let bytes = bytes.ok_or("the mutation made no record".to_string())?;
            let model = QuantizedModel::from_bytes(&bytes, device).map_err(|e| e.to_string())?;
            Ok::<_, String>(
                model
                    .try_forward::<4, 2>(s.input.clone())
                    .map(Tensor::into_data),
            )
        }));
        match outcome {
            Err(_) => {}
            Ok(Err(message)) => {
                out.errors += 1;
                refused(sealed, &message);
            }
            Ok(Ok(run)) => {
                out.loaded_ok += 1;
                match run {
                    Ok(y) if !sealed && y != s.output => out.altered_accepted += 1,
                    Err(_) if !sealed => out.altered_accepted += 1,
                    Err(_) => out.run_errors += 1,
                    Ok(_) => {}
                }
            }
        }
    }
    out.panics = PANICS.load(Ordering::SeqCst) - panics_before;
    out
}

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "3",
    "7",
    "255",
    "256",
    "-129",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "1e308",
    "-1e308",
    "1e-300",
    "0.5",
    "-0.0",
    "3.4e38",
    "1e39",
    "100000000",
];

const STRINGS: &[&str] = &[
    "", "Float", "Int8", "Int16", "Relu", "Free", "Add", "x", "\\u0000",
];

/// A mutation of a record's bytes; `None` when it makes no file (never: raw bytes are always a
/// file, possibly empty).
fn raw_mutation(bytes: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let mut b = bytes.to_vec();
    let at = |rng: &mut Rng, len: usize| rng.below(len.max(1));
    match rng.below(8) {
        0 => {
            for _ in 0..=rng.below(8) {
                let i = at(rng, b.len());
                b[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            for _ in 0..=rng.below(4) {
                let i = at(rng, b.len());
                let random = rng.next() as u8;
                b[i] = *rng.pick(&[0, 0xff, 0x7f, 0x80, random]);
            }
        }
        2 => {
            let i = at(rng, b.len() + 1);
            let n = 1 + rng.below(64);
            let insert: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            b.splice(i..i, insert);
        }
        3 => {
            let i = at(rng, b.len());
            let n = (1 + rng.below(64)).min(b.len() - i);
            b.drain(i..i + n);
        }
        4 => b.truncate(at(rng, b.len())),
        5 => {
            // The metadata length of the header, or any 4 or 8 bytes, as a length-like value.
            let value = *rng.pick(&[
                0u64,
                1,
                255,
                256,
                1 << 16,
                1 << 31,
                u32::MAX as u64,
                u64::MAX,
            ]);
            let value = value.wrapping_add(rng.below(3) as u64).wrapping_sub(1);
            let (i, width) = match rng.below(2) {
                0 => (6, 4),
                _ => (at(rng, b.len().saturating_sub(8)), 4 + 4 * rng.below(2)),
            };
            b[i..i + width].copy_from_slice(&value.to_le_bytes()[..width]);
        }
        6 => {
            // A same-length edit of the program's JSON inside the file.
            let start = find(&b, b"{\"version\"")?;
            let (numbers, strings) = json_tokens(&b[start..]);
            let tokens = if rng.below(2) == 0 { numbers } else { strings };
            let token = rng.pick(&tokens).clone();
            if !token.is_empty() {
                b[start + token.start + rng.below(token.len())] =
                    b"0123456789abcxyz"[rng.below(16)];
            }
        }
        _ => {
            // Two equal chunks of the data section swapped.
            let n = 1 + rng.below(512);
            if b.len() > 2 * n + 1024 {
                let (i, j) = (
                    1024 + at(rng, b.len() - 1024 - n),
                    1024 + at(rng, b.len() - 1024 - n),
                );
                let chunk = b[i..i + n].to_vec();
                b.copy_within(j..j + n, i);
                b[j..j + n].copy_from_slice(&chunk);
            }
        }
    }
    Some(b)
}

/// A mutation of a record's program or tensors, written back with fresh checksums.
fn sealed_mutation(parts: &RecordParts, rng: &mut Rng) -> Option<Vec<u8>> {
    let mut p = parts.clone();
    if rng.below(3) == 0 {
        mutate_tensors(&mut p.tensors, rng);
    } else {
        p.program = mutate_json(&p.program, rng);
    }
    p.to_bytes().ok()
}

/// Edits one number, string or stretch of the program's JSON.
fn mutate_json(json: &str, rng: &mut Rng) -> String {
    let (numbers, strings) = json_tokens(json.as_bytes());
    let (range, with) = match rng.below(5) {
        0 | 1 => {
            let r = rng.pick(&numbers).clone();
            let with = match rng.below(3) {
                0 => {
                    let v: i64 = json[r.clone()].parse().unwrap_or(0);
                    (v + rng.below(5) as i64 - 2).to_string()
                }
                _ => rng.pick(NUMBERS).to_string(),
            };
            (r, with)
        }
        2 | 3 => {
            let r = rng.pick(&strings).clone();
            let with = match rng.below(2) {
                0 => json[rng.pick(&strings).clone()].to_string(),
                _ => rng.pick(STRINGS).to_string(),
            };
            (r, with)
        }
        _ => {
            // Delete a stretch, or repeat one.
            let start = rng.below(json.len());
            let end = (start + 1 + rng.below(40)).min(json.len());
            let with = match rng.below(2) {
                0 => String::new(),
                _ => json.get(start..end).unwrap_or("").repeat(2),
            };
            (start..end, with)
        }
    };
    match (json.get(..range.start), json.get(range.end..)) {
        (Some(a), Some(b)) => format!("{a}{with}{b}"),
        _ => json.to_string(),
    }
}

/// Swaps, renames, retypes, reshapes, edits, drops or duplicates tensors.
fn mutate_tensors(tensors: &mut Vec<(String, TensorData)>, rng: &mut Rng) {
    let n = tensors.len();
    let (i, j) = (rng.below(n), rng.below(n));
    match rng.below(6) {
        0 => {
            let data = tensors[i].1.clone();
            tensors[i].1 = std::mem::replace(&mut tensors[j].1, data);
        }
        1 => {
            let name = tensors[i].0.clone();
            tensors[i].0 = std::mem::replace(&mut tensors[j].0, name);
        }
        2 => {
            let data = &tensors[i].1;
            let mut bytes = data.as_bytes().to_vec();
            if !bytes.is_empty() {
                let k = rng.below(bytes.len());
                bytes[k] = rng.next() as u8;
            }
            tensors[i].1 = TensorData::from_bytes_vec(bytes, data.shape().to_vec(), data.dtype());
        }
        3 => {
            // The same bytes as another type of the same width, or another shape.
            let data = &tensors[i].1;
            let (mut shape, mut dtype) = (data.shape().to_vec(), data.dtype());
            match rng.below(2) {
                0 => {
                    dtype = match dtype {
                        DType::I32 => DType::F32,
                        DType::F32 => DType::I32,
                        DType::I8 => DType::U8,
                        DType::I16 => DType::U16,
                        other => other,
                    }
                }
                _ => {
                    let total: usize = shape.iter().product();
                    shape = match total % 2 {
                        0 if total > 0 => vec![total / 2, 2],
                        _ => vec![1, total],
                    };
                }
            }
            tensors[i].1 = TensorData::from_bytes_vec(data.as_bytes().to_vec(), shape, dtype);
        }
        4 => {
            tensors.remove(i);
        }
        _ => {
            let copy = (format!("{}.copy", tensors[i].0), tensors[i].1.clone());
            tensors.push(copy);
        }
    }
}

/// Byte ranges of the number tokens and of the string contents of a JSON text.
fn json_tokens(json: &[u8]) -> (Vec<Range<usize>>, Vec<Range<usize>>) {
    let (mut numbers, mut strings) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let start = i + 1;
                i = start;
                while i < json.len() && json[i] != b'"' {
                    i += if json[i] == b'\\' { 2 } else { 1 };
                }
                strings.push(start..i.min(json.len()));
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < json.len()
                    && matches!(json[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                numbers.push(start..i);
            }
            _ => i += 1,
        }
    }
    for tokens in [&mut numbers, &mut strings] {
        if tokens.is_empty() {
            tokens.push(0..0);
        }
    }
    (numbers, strings)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
