//! Conformance checks against the PyTorch goldens in `../shared/goldens`.
//!
//! ```text
//! cargo run --release --example conformance -- <check> [--goldens DIR] [--cases N] [--seed S]
//! ```
//!
//! `kernels` checks the int8 kernels against PyTorch's outputs, then runs `--cases` random
//! cases (default 3,000) of every kernel on every path against the scalar path.
//!
//! Each check prints a table and, as its last line, its figures as `key=value`; the process exits
//! non-zero when a check misses its bar. The goldens directory defaults to `../shared/goldens`
//! (or `$BURN_QUANTIZE_GOLDENS`).

mod float;
mod goldens;
mod int8;
mod kernels;
mod mobilenet_v3;
mod observers;
mod resnets;
mod sweep;

use std::path::PathBuf;
use std::process::ExitCode;

/// What the checks are given: the goldens directory, and the random sweep's size and seed.
struct Options {
    goldens: PathBuf,
    cases: u64,
    seed: u64,
}

/// One conformance check: its name on the command line and the function that runs it.
type Check = (
    &'static str,
    fn(&Options) -> Result<bool, Box<dyn std::error::Error>>,
);

const CHECKS: &[Check] = &[
    ("float", |o| float::run(&o.goldens)),
    ("kernels", |o| {
        let goldens = kernels::run(&o.goldens)?;
        Ok(sweep::run(o.cases, o.seed)? && goldens)
    }),
    ("observers", |o| observers::run(&o.goldens)),
    ("int8", |o| int8::run(&o.goldens)),
    ("mobilenet_v3", |o| mobilenet_v3::run(&o.goldens)),
];

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut names = Vec::new();
    let goldens = std::env::var_os("BURN_QUANTIZE_GOLDENS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/goldens"));
    let mut options = Options {
        goldens,
        cases: 3_000,
        seed: 0x5eed,
    };
    while let Some(arg) = args.next() {
        let number = |value: Option<String>| value.and_then(|v| v.replace('_', "").parse().ok());
        match arg.as_str() {
            "--goldens" => match args.next() {
                Some(dir) => options.goldens = PathBuf::from(dir),
                None => return usage("--goldens needs a directory"),
            },
            "--cases" => match number(args.next()) {
                Some(n) => options.cases = n,
                None => return usage("--cases needs a number"),
            },
            "--seed" => match number(args.next()) {
                Some(n) => options.seed = n,
                None => return usage("--seed needs a number"),
            },
            name => names.push(name.to_string()),
        }
    }
    if names.is_empty() {
        return usage("name at least one check");
    }
    let mut all_passed = true;
    for name in &names {
        let Some((_, run)) = CHECKS.iter().find(|(n, _)| n == name) else {
            return usage(&format!("unknown check `{name}`"));
        };
        match run(&options) {
            Ok(passed) => all_passed &= passed,
            Err(err) => {
                eprintln!("conformance {name}: error: {err}");
                all_passed = false;
            }
        }
    }
    if all_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The cosine similarity of two equally long vectors (as the numeric suite computes it), for
/// the int8 and MobileNetV3 checks.
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    burn_quantize::numeric::Comparison::new(String::new(), String::new(), a, b).cosine
}

fn usage(problem: &str) -> ExitCode {
    let names: Vec<_> = CHECKS.iter().map(|(n, _)| *n).collect();
    eprintln!(
        "conformance: {problem}\nusage: conformance <{}>... [--goldens DIR] [--cases N] [--seed S]",
        names.join("|")
    );
    ExitCode::from(2)
}
