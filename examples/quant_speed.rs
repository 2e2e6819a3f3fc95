//! Measures quantization throughput per type, in MB of f32 input per CPU-second.
//!
//! ```text
//! cargo run --release --example quant_speed -- [--values N] [--threads T] [--reference]
//!     [--type NAME]... [--input FILE] [--save DIR]
//! ```
//!
//! The input is `N` normally distributed f32 values (default 16 Mi, 64 MiB) in rows of 4096,
//! quantized with `T` threads (default 1), each thread taking whole rows. `--reference` also
//! times the scalar reference quantizers, and `--type` limits the run to the named types.
//! `--input` reads the values from a file of little-endian f32 instead (whole rows only), and
//! `--save` writes each type's bytes to `DIR/<type>.bin`, for comparing with other tools.
//!
//! Each figure is MB/s of f32 input per CPU-second, from the on-CPU time Linux reports for
//! every thread of the process (`/proc/self/task/*/schedstat`), so that other processes on a
//! busy machine do not lower it. Elsewhere it falls back to wall-clock time.

use std::time::Instant;

use rayon::prelude::*;
use shardkit::dtype::QuantType;
use shardkit::quant::{quantize_row, quantize_row_reference, QuantError};

const ROW: usize = 4096;

struct Options {
    values: usize,
    threads: usize,
    reference: bool,
    types: Vec<QuantType>,
    input: Option<std::path::PathBuf>,
    save: Option<std::path::PathBuf>,
}

fn parse_options() -> Options {
    let mut options = Options {
        values: 16 << 20,
        threads: 1,
        reference: false,
        types: Vec::new(),
        input: None,
        save: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> usize {
            let text = args
                .next()
                .unwrap_or_else(|| panic!("{name} needs a number"));
            text.parse()
                .unwrap_or_else(|e| panic!("invalid {name} {text:?}: {e}"))
        };
        match arg.as_str() {
            "--values" => options.values = number("--values").div_ceil(ROW) * ROW,
            "--threads" => options.threads = number("--threads").max(1),
            "--reference" => options.reference = true,
            "--type" => {
                let name = args.next().expect("--type needs a type name such as q4_k");
                match name.parse() {
                    Ok(shardkit::dtype::DType::Quant(quant)) => options.types.push(quant),
                    _ => panic!("invalid --type {name:?}; expected a quantized type such as q4_k"),
                }
            }
            "--input" => options.input = Some(args.next().expect("--input needs a file").into()),
            "--save" => options.save = Some(args.next().expect("--save needs a folder").into()),
            other => panic!(
                "unknown argument {other:?}; expected --values, --threads, --reference, --type, --input or --save"
            ),
        }
    }
    options
}

/// Returns normally distributed values from a fixed seed (Box–Muller on xorshift).
fn normal_values(count: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..count)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * 0.02) as f32
        })
        .collect()
}

/// Reads little-endian f32 values from `path`, keeping whole rows.
fn read_values(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    values.truncate(values.len() / ROW * ROW);
    assert!(
        !values.is_empty(),
        "{} holds less than one row of {ROW} values",
        path.display()
    );
    values
}

type Quantizer = fn(QuantType, &[f32], &mut [u8]) -> Result<(), QuantError>;

/// Returns the on-CPU time of all threads of this process in seconds, where Linux reports it.
fn cpu_seconds() -> Option<f64> {
    let mut nanoseconds = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        nanoseconds += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(nanoseconds as f64 / 1e9)
}

/// Quantizes every row once and returns the throughput in MB of f32 input per CPU-second.
fn measure(quant: QuantType, values: &[f32], out: &mut [u8], quantize: Quantizer) -> f64 {
    let row_bytes = ROW / quant.block_elements() * quant.block_bytes();
    let out = &mut out[..values.len() / ROW * row_bytes];
    let (start, start_cpu) = (Instant::now(), cpu_seconds());
    values
        .par_chunks(ROW)
        .zip(out.par_chunks_mut(row_bytes))
        .for_each(|(row, bytes)| quantize(quant, row, bytes).expect("rows are whole blocks"));
    let seconds = match (start_cpu, cpu_seconds()) {
        (Some(begin), Some(end)) => end - begin,
        _ => start.elapsed().as_secs_f64(),
    };
    (values.len() * 4) as f64 / seconds / 1e6
}

fn main() {
    let options = parse_options();
    rayon::ThreadPoolBuilder::new()
        .num_threads(options.threads)
        .build_global()
        .expect("configure the thread pool");
    let values = match &options.input {
        Some(path) => read_values(path),
        None => normal_values(options.values),
    };
    let mut out = vec![0u8; values.len() / 32 * 34];
    let all_types = [
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
    ];
    let types = if options.types.is_empty() {
        all_types.to_vec()
    } else {
        options.types.clone()
    };

    println!(
        "{} f32 values ({} MB), {} thread(s), MB/s of f32 input per CPU-second",
        values.len(),
        values.len() * 4 / 1_000_000,
        options.threads
    );
    println!("{:<6} {:>10} {:>10}", "type", "fast", "reference");
    for quant in types {
        // The first pass warms caches and page mappings; the second is reported.
        measure(quant, &values, &mut out, quantize_row);
        let fast = measure(quant, &values, &mut out, quantize_row);
        let reference = if options.reference {
            format!(
                "{:>10.0}",
                measure(quant, &values, &mut out, quantize_row_reference)
            )
        } else {
            format!("{:>10}", "-")
        };
        println!("{:<6} {fast:>10.0} {reference}", quant.name());
        if let Some(dir) = &options.save {
            let row_bytes = ROW / quant.block_elements() * quant.block_bytes();
            let bytes = &out[..values.len() / ROW * row_bytes];
            let path = dir.join(format!("{}.bin", quant.name().to_lowercase()));
            std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}
