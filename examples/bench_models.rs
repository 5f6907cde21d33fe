//! End-to-end speed of whole int8 models against Burn's Flex f32, 224x224 inputs, seeded random
//! weights (speed does not depend on the values): ResNet-18, MobileNetV2, MobileNetV3-Large and,
//! on request, EfficientNet-Lite0, each at 1 and 2 threads and batch 1 and 32.
//!
//! ```text
//! cargo run --release --example bench_models                       # everything, several minutes
//! cargo run --release --example bench_models -- --quick            # batch 1, 1 round (CI)
//! cargo run --release --example bench_models -- --models resnet18 --threads 1 --batch 1
//! cargo run --release --example bench_models -- \
//!     --models resnet18,mobilenet_v3,efficientnet_lite0 --threads 1,2 --batch 1,32 --rounds 7
//! cargo run --release --example bench_models -- --int8-only       # no f32 rounds
//! ```
//!
//! The side-by-side comparison with PyTorch and ONNX Runtime (`benches/compare/compare.py`) runs
//! this example with `--int8-only` between its own timings.
//!
//! Every model is quantized once with the `x86` preset, calibrating on three random batches,
//! and its conversion report counts (and its float nodes, if any) are printed. Each
//! configuration then runs inside its own rayon pool of `t` threads
//! (`ThreadPoolBuilder::install`): our kernels and Flex (its convolutions and `gemm` calls use
//! `rayon::current_num_threads()` and rayon's current pool) both follow it, so no per-process
//! `RAYON_NUM_THREADS` is needed. The check, which holds on a busy machine too: the CPU time of
//! the f32 rounds is read per thread from `/proc` and printed for each of the pool's threads
//! and for all other threads (with 2 threads both pool threads work, and nothing runs
//! elsewhere), next to the 1 -> 2 thread speedups (meaningful only on an idle machine).
//!
//! Timing: one warm-up run of each, then rounds that alternate int8 and f32 forwards (so both
//! see the same machine load); the table shows medians in ms per image and the speedup
//! f32 / int8. The last lines, one per model in the order of `--models`, are
//! `bench_models: <model> t1b1=<int8 ms/img> ... speedup_t1b1=<x> ... int8_nodes=<n> float_nodes=<n>`.

use std::collections::HashMap;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use burn_quantize::kernels::active_isa;
use burn_quantize::models::ResNet;
use burn_quantize::models::efficientnet::EfficientNet;
use burn_quantize::models::mobilenet_v2::MobileNetV2;
use burn_quantize::models::mobilenet_v3::MobileNetV3;
use burn_quantize::prepare::prepare;
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
use burn_quantize::quantized::{QuantizedModel, convert};
use burn_quantize::{Forward, Graph, Result};

const USAGE: &str = "usage: bench_models \
                     [--models resnet18,mobilenet_v2,mobilenet_v3,efficientnet_lite0] \
                     [--threads 1,2] [--batch 1,32] [--rounds N] [--quick] [--int8-only]";

/// The models this benchmark knows.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ModelKind {
    ResNet18,
    MobileNetV2,
    MobileNetV3Large,
    EfficientNetLite0,
}

impl ModelKind {
    /// The kind named `s` on the command line.
    fn parse(s: &str) -> Option<Self> {
        match s {
            "resnet18" => Some(Self::ResNet18),
            "mobilenet_v2" => Some(Self::MobileNetV2),
            "mobilenet_v3" | "mobilenet_v3_large" => Some(Self::MobileNetV3Large),
            "efficientnet_lite0" | "efficientnet" => Some(Self::EfficientNetLite0),
            _ => None,
        }
    }

    /// The name printed in the table and the summary lines.
    fn name(self) -> &'static str {
        match self {
            Self::ResNet18 => "resnet18",
            Self::MobileNetV2 => "mobilenet_v2",
            Self::MobileNetV3Large => "mobilenet_v3_large",
            Self::EfficientNetLite0 => "efficientnet_lite0",
        }
    }

    /// Builds the float model (1000 classes, random weights) and quantizes it.
    fn build(self, device: &Device) -> Result<Subject> {
        match self {
            Self::ResNet18 => Subject::new(self, ResNet::resnet18(1000, device), device),
            Self::MobileNetV2 => Subject::new(self, MobileNetV2::new(1000, device), device),
            Self::MobileNetV3Large => Subject::new(self, MobileNetV3::large(1000, device), device),
            Self::EfficientNetLite0 => {
                Subject::new(self, EfficientNet::lite0(1000, device), device)
            }
        }
    }
}

/// The command line.
struct Args {
    models: Vec<ModelKind>,
    threads: Vec<usize>,
    batches: Vec<usize>,
    /// Rounds for every configuration; `None`: 5 at batch 1, 3 at larger batches.
    rounds: Option<usize>,
    /// Time the int8 models only.
    int8_only: bool,
}

impl Args {
    /// Parses the command line; exits with the usage on anything unknown.
    fn parse() -> Args {
        let mut args = Args {
            models: vec![
                ModelKind::ResNet18,
                ModelKind::MobileNetV2,
                ModelKind::MobileNetV3Large,
            ],
            threads: vec![1, 2],
            batches: vec![1, 32],
            rounds: None,
            int8_only: false,
        };
        let mut quick = false;
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let ok = match flag.as_str() {
                "--quick" => {
                    quick = true;
                    true
                }
                "--int8-only" => {
                    args.int8_only = true;
                    true
                }
                "--models" => list(it.next(), ModelKind::parse)
                    .map(|v| args.models = v)
                    .is_some(),
                "--threads" => list(it.next(), positive)
                    .map(|v| args.threads = v)
                    .is_some(),
                "--batch" => list(it.next(), positive)
                    .map(|v| args.batches = v)
                    .is_some(),
                "--rounds" => positive(&it.next().unwrap_or_default())
                    .map(|v| args.rounds = Some(v))
                    .is_some(),
                _ => false,
            };
            if !ok {
                eprintln!("{USAGE}");
                std::process::exit(2);
            }
        }
        if quick {
            (args.batches, args.rounds) = (vec![1], Some(1));
        }
        args
    }

    /// The number of timed rounds at batch size `batch`.
    fn rounds(&self, batch: usize) -> usize {
        self.rounds.unwrap_or(if batch == 1 { 5 } else { 3 })
    }
}

/// A comma-separated list, each item parsed by `item`; `None` if empty or any item fails.
fn list<T>(value: Option<String>, item: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    let items: Option<Vec<T>> = value?.split(',').map(|s| item(s.trim())).collect();
    items.filter(|v| !v.is_empty())
}

/// A number ≥ 1.
fn positive(s: &str) -> Option<usize> {
    s.parse().ok().filter(|&n| n >= 1)
}

/// A model under test: its float forward (Flex) and its int8 version.
struct Subject {
    kind: ModelKind,
    float: Box<dyn Fn(Tensor<4>) -> Tensor<2> + Send + Sync>,
    int8: QuantizedModel,
    device: Device,
}

impl Subject {
    /// Captures `model`, prepares it with the `x86` preset, calibrates on three random batches
    /// of 4 images, and converts.
    fn new<M>(kind: ModelKind, model: M, device: &Device) -> Result<Subject>
    where
        M: Forward<4, 2> + Send + Sync + 'static,
    {
        let start = Instant::now();
        let batches: Vec<Tensor<4>> = (0..3).map(|_| random_images(4, device)).collect();
        let graph = Graph::capture(&model, &batches[0].clone().narrow(0, 0, 1))?;
        let qconfig = QConfigMap::global(QConfig::preset(Engine::X86));
        let prepared = prepare(&graph, &qconfig)?.calibrate(|prepared| {
            for images in batches {
                prepared.forward::<4, 2>(images)?;
            }
            Ok(())
        })?;
        let int8 = convert(&prepared)?;
        println!(
            "{}: quantized in {:.1} s; {}",
            kind.name(),
            start.elapsed().as_secs_f64(),
            int8.report().to_string().lines().next().unwrap_or_default()
        );
        for line in int8.report().to_string().lines().skip(1) {
            if line.trim_start().starts_with("float") {
                println!("  {}", line.trim_start());
            }
        }
        let float = Box::new(move |x| model.forward(x));
        Ok(Subject {
            kind,
            float,
            int8,
            device: device.clone(),
        })
    }
}

/// `batch` random 224x224 RGB images, standard normal.
fn random_images(batch: usize, device: &Device) -> Tensor<4> {
    Tensor::random([batch, 3, 224, 224], Distribution::Normal(0.0, 1.0), device)
}

/// The medians of one configuration, in ms per image, and where its f32 rounds ran.
struct Row {
    kind: ModelKind,
    threads: usize,
    batch: usize,
    int8: f64,
    /// `None` with `--int8-only`.
    float: Option<f64>,
    float_cpu: CpuSplit,
}

/// Times `subject` at `threads` threads and batch `batch`: inside a pool of `threads` threads,
/// one warm-up of each, then `rounds` rounds of int8 then f32 (int8 alone unless `with_float`);
/// medians per image.
fn measure(subject: &Subject, [threads, batch, rounds]: [usize; 3], with_float: bool) -> Row {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("{POOL_THREAD}{i}"))
        .build()
        .expect("a thread pool");
    let (int8, float, float_cpu) = pool.install(|| {
        let x = random_images(batch, &subject.device);
        let run_int8 = || {
            let y: Tensor<2> = subject.int8.try_forward(x.clone()).expect("int8 forward");
            y.into_data();
        };
        let run_float = || {
            (subject.float)(x.clone()).into_data();
        };
        run_int8();
        if with_float {
            run_float();
        }
        let (mut int8, mut float) = (Vec::new(), Vec::new());
        let mut cpu = CpuSplit::new(threads);
        for _ in 0..rounds {
            int8.push(time_ms(run_int8));
            if with_float {
                let before = thread_cpu();
                float.push(time_ms(run_float));
                cpu.add(&before, &thread_cpu());
            }
        }
        let float = (!float.is_empty()).then(|| median(float));
        (median(int8), float, cpu)
    });
    Row {
        kind: subject.kind,
        threads,
        batch,
        int8: int8 / batch as f64,
        float: float.map(|f| f / batch as f64),
        float_cpu,
    }
}

/// The name prefix of the benchmark pools' threads (Linux keeps 15 bytes of a thread name).
const POOL_THREAD: &str = "bench-pool-";

/// CPU seconds of every thread of this process, by thread id, with its name.
type ThreadCpu = HashMap<String, (String, f64)>;

/// The [`ThreadCpu`] of now (Linux `/proc`; empty elsewhere, and the check shows nothing).
fn thread_cpu() -> ThreadCpu {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return HashMap::new();
    };
    let read = |dir: &std::path::Path, file| std::fs::read_to_string(dir.join(file)).ok();
    tasks
        .flatten()
        .filter_map(|task| {
            let dir = task.path();
            let (name, stat) = (read(&dir, "comm")?, read(&dir, "stat")?);
            // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks: u64 =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            let tid = task.file_name().to_string_lossy().into_owned();
            Some((
                tid,
                (name.trim().to_string(), ticks as f64 / CLOCK_TICKS_PER_S),
            ))
        })
        .collect()
}

/// `USER_HZ`, the unit of `/proc` CPU times (100 on every Linux platform Rust targets).
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// Where CPU time went: on each thread of the benchmark pool, and on every other thread.
struct CpuSplit {
    pool: Vec<f64>,
    elsewhere: f64,
}

impl CpuSplit {
    /// Nothing yet, for a pool of `threads` threads.
    fn new(threads: usize) -> Self {
        CpuSplit {
            pool: vec![0.0; threads],
            elsewhere: 0.0,
        }
    }

    /// Adds the CPU time spent between two [`thread_cpu`] snapshots.
    fn add(&mut self, before: &ThreadCpu, after: &ThreadCpu) {
        for (tid, (name, seconds)) in after {
            let spent = seconds - before.get(tid).map_or(0.0, |b| b.1);
            let worker = name
                .strip_prefix(POOL_THREAD)
                .and_then(|i| i.parse::<usize>().ok());
            match worker.and_then(|i| self.pool.get_mut(i)) {
                Some(on_worker) => *on_worker += spent,
                None => self.elsewhere += spent,
            }
        }
    }
}

/// Wall time of one call of `f`, in ms.
fn time_ms(f: impl Fn()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64() * 1e3
}

/// The median (the upper one for an even count).
fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// The table, one row per configuration.
fn print_table(rows: &[Row]) {
    println!("| model              | threads | batch | int8 ms/img | f32 ms/img | speedup |");
    println!("|--------------------|--------:|------:|------------:|-----------:|--------:|");
    for r in rows {
        let (float, speedup) = match r.float {
            Some(f) => (format!("{f:.2}"), format!("{:.2}x", f / r.int8)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {:<18} | {:>7} | {:>5} | {:>11.2} | {float:>10} | {speedup:>7} |",
            r.kind.name(),
            r.threads,
            r.batch,
            r.int8,
        );
    }
}

/// The check that Flex follows the installed pool: where the f32 rounds' CPU time went (on
/// each of the pool's threads, elsewhere) and, for every model and batch measured at 1 and 2
/// threads, how much faster 2 threads are (f32 and int8; only meaningful on an idle machine).
fn print_threads(rows: &[Row]) {
    for r in rows.iter().filter(|r| r.float.is_some()) {
        let pool: Vec<String> = r.float_cpu.pool.iter().map(|s| format!("{s:.2}")).collect();
        println!(
            "{} t{} b{}: f32 CPU s on the pool's threads [{}], on other threads {:.2}",
            r.kind.name(),
            r.threads,
            r.batch,
            pool.join(", "),
            r.float_cpu.elsewhere
        );
    }
    let at = |r: &Row, t: usize| {
        rows.iter()
            .find(|o| o.kind == r.kind && o.batch == r.batch && o.threads == t)
    };
    for one in rows.iter().filter(|r| r.threads == 1) {
        if let Some(two) = at(one, 2) {
            let float = match (one.float, two.float) {
                (Some(one), Some(two)) => format!("f32 {:.2}x faster, ", one / two),
                _ => String::new(),
            };
            println!(
                "{} b{}: 1 -> 2 threads, {float}int8 {:.2}x faster",
                one.kind.name(),
                one.batch,
                one.int8 / two.int8
            );
        }
    }
}

/// The key=value line of one model: int8 ms/img and speedup per configuration, node counts.
fn summary_line(subject: &Subject, rows: &[Row]) -> String {
    let rows: Vec<&Row> = rows.iter().filter(|r| r.kind == subject.kind).collect();
    let key = |r: &Row| format!("t{}b{}", r.threads, r.batch);
    let mut line = format!("bench_models: {}", subject.kind.name());
    for r in &rows {
        line += &format!(" {}={:.2}", key(r), r.int8);
    }
    for r in &rows {
        if let Some(float) = r.float {
            line += &format!(" speedup_{}={:.2}", key(r), float / r.int8);
        }
    }
    let (int8, float) = subject.int8.report().counts();
    line + &format!(" int8_nodes={int8} float_nodes={float}")
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = Device::flex();
    device.seed(7);
    println!("kernel path {:?}", active_isa());
    let subjects = args
        .models
        .iter()
        .map(|kind| kind.build(&device))
        .collect::<Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    for subject in &subjects {
        for &threads in &args.threads {
            for &batch in &args.batches {
                let config = [threads, batch, args.rounds(batch)];
                let row = measure(subject, config, !args.int8_only);
                eprintln!(
                    "{} t{threads} b{batch}: int8 {:.2} ms/img, f32 {:?} ms/img",
                    subject.kind.name(),
                    row.int8,
                    row.float
                );
                rows.push(row);
            }
        }
    }
    print_table(&rows);
    print_threads(&rows);
    for subject in &subjects {
        println!("{}", summary_line(subject, &rows));
    }
    Ok(())
}
