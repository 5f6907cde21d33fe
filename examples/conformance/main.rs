//! Conformance checks against the PyTorch goldens in `../shared/goldens`.
//!
//! ```text
//! cargo run --release --example conformance -- <check> [--goldens DIR]
//! ```
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

use std::path::PathBuf;
use std::process::ExitCode;

/// One conformance check: its name on the command line and the function that runs it.
type Check = (
    &'static str,
    fn(&std::path::Path) -> Result<bool, Box<dyn std::error::Error>>,
);

const CHECKS: &[Check] = &[
    ("float", float::run),
    ("kernels", kernels::run),
    ("observers", observers::run),
    ("int8", int8::run),
    ("mobilenet_v3", mobilenet_v3::run),
];

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut names = Vec::new();
    let mut goldens = std::env::var_os("BURN_QUANTIZE_GOLDENS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/goldens"));
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--goldens" => match args.next() {
                Some(dir) => goldens = PathBuf::from(dir),
                None => return usage("--goldens needs a directory"),
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
        match run(&goldens) {
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
        "conformance: {problem}\nusage: conformance <{}>... [--goldens DIR]",
        names.join("|")
    );
    ExitCode::from(2)
}
