//! Measures matrix-vector throughput per weight type, in GB of weight bytes per CPU-second.
//!
//! ```text
//! cargo run --release --example dot_speed -- [--cols N] [--megabytes M] [--type NAME]...
//! ```
//!
//! For each type, one activation vector multiplies a matrix of about `M` MiB of weights in
//! rows of `N` values (defaults 64 and 1536) with [`shardkit::quant::dot::matvec`] on one
//! thread. 64 MiB is more than the CPU caches hold, so rows stream from memory as in token
//! generation. The best of three runs of repeated passes is reported. As in `quant_speed`,
//! time is the on-CPU time Linux reports for the process's threads, and wall-clock time
//! elsewhere.

use std::time::Instant;

use shardkit::dtype::{DType, QuantType};
use shardkit::quant::dot::{matvec, QuantizedActivation};
use shardkit::quant::{from_f32, quantizable};

struct Options {
    cols: usize,
    megabytes: usize,
    types: Vec<DType>,
}

fn parse_options() -> Options {
    let mut options = Options {
        cols: 1536,
        megabytes: 64,
        types: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match arg.as_str() {
            "--cols" => options.cols = value("--cols").parse().expect("--cols needs a number"),
            "--megabytes" => {
                options.megabytes = value("--megabytes")
                    .parse()
                    .expect("--megabytes needs a number")
            }
            "--type" => {
                let name = value("--type");
                let dtype = name.to_uppercase().parse().unwrap_or_else(|_| {
                    panic!("invalid --type {name:?}; expected a name such as q4_k or F16")
                });
                options.types.push(dtype);
            }
            other => panic!("unknown argument {other:?}; expected --cols, --megabytes or --type"),
        }
    }
    options
}

/// Returns the on-CPU time of all threads of this process in seconds, where Linux reports it.
fn cpu_seconds() -> Option<f64> {
    let mut nanoseconds = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        nanoseconds += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(nanoseconds as f64 / 1e9)
}

/// Returns normally distributed values times `scale` from a fixed seed.
fn normal_values(count: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..count)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * scale
        })
        .collect()
}

fn main() {
    let options = parse_options();
    let all_types = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Quant(QuantType::Q8_0),
        DType::Quant(QuantType::Q4_0),
        DType::Quant(QuantType::Q4_1),
        DType::Quant(QuantType::Q5_0),
        DType::Quant(QuantType::Q5_1),
        DType::Quant(QuantType::Q4_K),
        DType::Quant(QuantType::Q5_K),
        DType::Quant(QuantType::Q6_K),
    ];
    let types = if options.types.is_empty() {
        all_types.to_vec()
    } else {
        options.types.clone()
    };
    let activation_values = normal_values(options.cols, 7, 1.0);

    println!(
        "rows of {} values, about {} MiB of weights per type, 1 thread",
        options.cols, options.megabytes
    );
    println!("{:<6} {:>8} {:>22}", "type", "rows", "GB/s per CPU-second");
    for dtype in types {
        if let DType::Quant(quant) = dtype {
            assert!(quantizable(quant), "{dtype} weights cannot be made here");
        }
        let row_bytes = dtype.bytes_for(options.cols as u64).expect("whole blocks") as usize;
        let rows = (options.megabytes << 20) / row_bytes;
        let weights_f32 = normal_values(rows * options.cols, 11, 0.02);
        let mut weights = vec![0u8; rows * row_bytes];
        from_f32(dtype, &weights_f32, &mut weights).expect("convert the weights");
        drop(weights_f32);
        let activation = QuantizedActivation::new(dtype, &activation_values).expect("activation");
        let mut out = vec![0.0f32; rows];

        // Repeat passes for at least a quarter second, so that the CPU clock, which the kernel
        // updates at scheduler events, has time to advance.
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let (start, start_cpu) = (Instant::now(), cpu_seconds());
            let mut passes = 0;
            while passes == 0 || start.elapsed().as_secs_f64() < 0.25 {
                matvec(dtype, &weights, &activation, &mut out).expect("matvec");
                passes += 1;
            }
            let seconds = match (start_cpu, cpu_seconds()) {
                (Some(begin), Some(end)) => end - begin,
                _ => start.elapsed().as_secs_f64(),
            };
            best = best.min(seconds / passes as f64);
        }
        println!(
            "{:<6} {rows:>8} {:>22.2}",
            dtype.name(),
            weights.len() as f64 / best / 1e9
        );
    }
}
