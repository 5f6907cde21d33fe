//! The record fuzzer's long run: `cargo run --release --example fuzz_records -- --cases N`
//! (default 1,000,000; `--seed S`, `--jobs J` worker processes at a time, `--chunk K` cases per
//! worker, `--reasons` to list the most common refusal messages).
//!
//! The cases (see `tests/fuzzing/mod.rs`) run in worker processes of this same binary, so a
//! case that aborted the process (out of memory, a stack overflow, an abort in a dependency)
//! is counted as an abort instead of ending the run. Each worker reports its outcomes and its
//! peak resident memory. The last line is
//! `fuzz: cases=<n> errors=<e> loaded_ok=<o> panics=<p> aborts=<a> max_rss_mb=<m> ...`.

#[path = "../tests/fuzzing/mod.rs"]
mod fuzzing;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use burn::tensor::Device;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str, default: u64| -> u64 {
        (args.iter().position(|a| a == name))
            .and_then(|i| args.get(i + 1))
            .map(|v| v.replace('_', "").parse().expect("a number"))
            .unwrap_or(default)
    };
    let (cases, seed) = (arg("--cases", 1_000_000), arg("--seed", 0x5eed));
    let reasons = args.iter().any(|a| a == "--reasons");
    if args.iter().any(|a| a == "--worker") {
        let from = arg("--from", 0);
        return worker(seed, from..from + cases, reasons);
    }
    let jobs = arg(
        "--jobs",
        std::thread::available_parallelism().map_or(2, |n| n.get() as u64),
    );
    let chunk = arg("--chunk", 50_000).max(1);
    let chunks: Vec<u64> = (0..cases.div_ceil(chunk)).map(|k| k * chunk).collect();
    let started = std::time::Instant::now();
    let mut total = fuzzing::Outcomes::default();
    let (mut aborts, mut max_rss_mb) = (0u64, 0u64);
    for batch in chunks.chunks(jobs.max(1) as usize) {
        let children: Vec<_> = (batch.iter())
            .map(|&from| {
                let count = chunk.min(cases - from);
                let mut cmd = Command::new(std::env::current_exe().expect("own path"));
                cmd.args(["--worker", "--seed", &seed.to_string()]).args([
                    "--from",
                    &from.to_string(),
                    "--cases",
                    &count.to_string(),
                ]);
                if reasons {
                    cmd.arg("--reasons");
                }
                cmd.stdout(Stdio::piped()).spawn().expect("a worker")
            })
            .collect();
        for child in children {
            let output = child.wait_with_output().expect("a worker's output");
            let text = String::from_utf8_lossy(&output.stdout);
            match (output.status.success(), text.lines().last().and_then(parse)) {
                (true, Some((outcomes, rss))) => {
                    total.add(&outcomes);
                    max_rss_mb = max_rss_mb.max(rss);
                    print!(
                        "{}",
                        text.lines()
                            .filter(|l| l.starts_with("  "))
                            .map(|l| format!("{l}\n"))
                            .collect::<String>()
                    );
                }
                _ => {
                    eprintln!("fuzz: a worker ended with {}", output.status);
                    aborts += 1;
                }
            }
        }
        eprintln!(
            "fuzz: {} after {:.0} s, aborts={aborts}",
            total.line(),
            started.elapsed().as_secs_f64()
        );
    }
    println!(
        "fuzz: cases={} errors={} loaded_ok={} panics={} aborts={aborts} max_rss_mb={max_rss_mb} \
         run_errors={} altered_accepted={} seconds={:.0}",
        total.cases,
        total.errors,
        total.loaded_ok,
        total.panics,
        total.run_errors,
        total.altered_accepted,
        started.elapsed().as_secs_f64()
    );
}

/// Runs cases `cases` and prints their outcomes and this process's peak resident memory.
fn worker(seed: u64, cases: std::ops::Range<u64>, reasons: bool) {
    fuzzing::count_panics();
    let device = Device::flex();
    let seeds = fuzzing::seeds(&device);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut refused = |sealed: bool, message: &str| {
        if reasons {
            // Messages grouped with their numbers as `#`.
            let mut head = String::new();
            for c in message.chars().take(100) {
                match c.is_ascii_digit() {
                    true if head.ends_with('#') => {}
                    true => head.push('#'),
                    false => head.push(c),
                }
            }
            *counts
                .entry(format!("{} {head}", if sealed { "sealed" } else { "raw" }))
                .or_default() += 1;
        }
    };
    let out = fuzzing::run(&seeds, seed, cases, &device, &mut refused);
    let mut common: Vec<_> = counts.into_iter().collect();
    common.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (message, n) in common.iter().take(80) {
        println!("  {n:>7} {message}");
    }
    println!("{} max_rss_mb={}", out.line(), peak_rss_mb());
}

/// The outcomes and peak memory of a worker's last line.
fn parse(line: &str) -> Option<(fuzzing::Outcomes, u64)> {
    let fields: BTreeMap<&str, u64> = (line.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    let get = |k: &str| fields.get(k).copied();
    Some((
        fuzzing::Outcomes {
            cases: get("cases")?,
            errors: get("errors")?,
            loaded_ok: get("loaded_ok")?,
            run_errors: get("run_errors")?,
            altered_accepted: get("altered_accepted")?,
            panics: get("panics")?,
        },
        get("max_rss_mb")?,
    ))
}

/// This process's peak resident memory in MiB (`VmHWM` of `/proc/self/status`; 0 where there
/// is none).
fn peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    (status.lines())
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb.div_ceil(1024))
}
