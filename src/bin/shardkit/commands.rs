//! One function per subcommand: call the library, then print the result.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::json;
use shardkit::dtype::DType;
use shardkit::plan::PlanOptions;
use shardkit::reshard::{self, WriteOptions};
use shardkit::size::human_bytes;

use crate::args::ExportDtype;
use crate::args::{
    Command, ExportArgs, ExportFormat, InspectArgs, QuantizeArgs, ReshardArgs, VerifyArgs,
};
use crate::progress::{summary, Progress};

/// Runs a parsed command.
pub fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Reshard(args) => reshard(args),
        Command::Quantize(args) => quantize(args),
        Command::Inspect(args) => inspect(args),
        Command::Verify(args) => verify(args),
        Command::Export(args) => export(args),
        Command::Run(args) => crate::run::run(args),
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot serialize the result")?;
    println!("{text}");
    Ok(())
}

fn total_input_bytes(input: &Path) -> u64 {
    shardkit::source::open(input)
        .map(|s| s.tensors().iter().map(|t| t.bytes).sum())
        .unwrap_or(0)
}

fn reshard(args: ReshardArgs) -> Result<ExitCode> {
    let plan_options = PlanOptions {
        max_chunk_bytes: args.max_chunk.0,
        per_tensor: args.per_tensor,
    };
    if args.dry_run {
        return dry_run(&args, plan_options);
    }
    let options = WriteOptions {
        plan: plan_options,
        threads: args.common.threads(),
        force: args.force,
    };
    let progress = Progress::bytes("reshard", total_input_bytes(&args.input));
    let result = reshard::reshard(&args.input, &args.output, options, &|done| {
        progress.set(done)
    });
    progress.finish();
    let summary_data =
        result.with_context(|| format!("cannot reshard {}", args.input.display()))?;
    let bytes = summary_data.chunk_bytes();
    let megabytes_per_second = bytes as f64 / 1e6 / summary_data.seconds.max(1e-9);
    let cut = summary_data.cut_tensors();
    if args.common.json {
        print_json(&json!({
            "output": summary_data.output,
            "chunks": summary_data.manifest.chunks.len(),
            "bytes": bytes,
            "tensors": summary_data.manifest.tensors.len(),
            "tensors_cut": cut,
            "largest_chunk_bytes": summary_data.manifest.chunks.iter().map(|c| c.bytes).max().unwrap_or(0),
            "max_chunk_bytes": args.max_chunk.0,
            "seconds": summary_data.seconds,
            "mb_per_s": megabytes_per_second,
        }))?;
    } else {
        println!("output       {}", summary_data.output.display());
        println!("chunks       {}", summary_data.manifest.chunks.len());
        println!(
            "tensors      {} ({} cut)",
            summary_data.manifest.tensors.len(),
            cut.len()
        );
        println!("bytes        {bytes} ({})", human_bytes(bytes));
        println!("ceiling      {} bytes", args.max_chunk.0);
        summary(&format!(
            "wrote {} in {:.1} s ({megabytes_per_second:.0} MB/s)",
            human_bytes(bytes),
            summary_data.seconds
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn dry_run(args: &ReshardArgs, options: PlanOptions) -> Result<ExitCode> {
    let (tensors, plan) = reshard::dry_run(&args.input, options)
        .with_context(|| format!("cannot plan {}", args.input.display()))?;
    let cut: Vec<&str> = plan
        .tensor_pieces
        .iter()
        .enumerate()
        .filter(|(_, pieces)| pieces.len() > 1)
        .map(|(index, _)| tensors[index].name.as_str())
        .collect();
    if args.common.json {
        let chunks: Vec<_> = plan
            .chunks
            .iter()
            .enumerate()
            .map(|(index, chunk)| {
                json!({
                    "path": reshard::chunk_path(index),
                    "bytes": chunk.bytes,
                    "pieces": chunk.pieces.iter().map(|p| json!({
                        "tensor": tensors[p.tensor].name, "rows": p.rows, "bytes": p.bytes,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(
            &json!({ "chunks": chunks, "tensors_cut": cut, "max_chunk_bytes": options.max_chunk_bytes }),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<28} {:>14}  pieces", "chunk", "bytes");
    for (index, chunk) in plan.chunks.iter().enumerate() {
        let names: Vec<String> = chunk
            .pieces
            .iter()
            .map(|p| {
                let info = &tensors[p.tensor];
                if p.rows == [0, info.rows()] {
                    info.name.clone()
                } else {
                    format!("{} rows {}..{}", info.name, p.rows[0], p.rows[1])
                }
            })
            .collect();
        println!(
            "{:<28} {:>14}  {}",
            reshard::chunk_path(index),
            chunk.bytes,
            names.join(", ")
        );
    }
    println!(
        "{} chunks; {} tensors cut: {}",
        plan.chunks.len(),
        cut.len(),
        cut.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

fn quantize(args: QuantizeArgs) -> Result<ExitCode> {
    let options = shardkit::quantize::QuantizeOptions {
        target: args.target,
        keep: args.keep.clone(),
        allow_non_finite: args.allow_non_finite,
    };
    let write = WriteOptions {
        plan: PlanOptions {
            max_chunk_bytes: args.max_chunk.0,
            per_tensor: false,
        },
        threads: args.common.threads(),
        force: args.force,
    };
    let progress = Progress::bytes("quantize", total_input_bytes(&args.input));
    let result =
        shardkit::quantize::quantize(&args.input, &args.output, &options, write, &|done| {
            progress.set(done)
        });
    progress.finish();
    let report = result.with_context(|| format!("cannot quantize {}", args.input.display()))?;
    if report.input_was_quantized {
        eprintln!(
            "shardkit: warning: {} is already quantized; its tensors were dequantized first, so the result carries both losses (errors below are against the dequantized input)",
            args.input.display()
        );
    }
    if args.common.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_quality_table(&report);
    Ok(ExitCode::SUCCESS)
}

/// Prints the per-tensor quality report on stderr, so stdout stays free for `--json`
/// consumers and the report still shows in logs of pipeline runs.
fn print_quality_table(report: &shardkit::quantize::QuantizeReport) {
    eprintln!(
        "{:<56} {:<6} {:<6} {:>7} {:>12} {:>12}  note",
        "tensor", "from", "to", "bpw", "rmse", "max error"
    );
    for tensor in &report.tensors {
        eprintln!(
            "{:<56} {:<6} {:<6} {:>7.3} {:>12.4e} {:>12.4e}  {}",
            tensor.name,
            tensor.source_dtype.name(),
            tensor.dtype.name(),
            tensor.bits_per_weight,
            tensor.rmse,
            tensor.max_abs_error,
            tensor.note.as_deref().unwrap_or("")
        );
    }
    eprintln!();
    eprintln!(
        "{}: {} -> {} ({:.3} bits per weight), {} chunks, {:.1} s",
        report.target,
        human_bytes(report.input_bytes),
        human_bytes(report.output_bytes),
        report.bits_per_weight,
        report.chunks,
        report.seconds
    );
}

fn inspect(args: InspectArgs) -> Result<ExitCode> {
    let report = shardkit::inspect::inspect(&args.input)
        .with_context(|| format!("cannot inspect {}", args.input.display()))?;
    if args.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<60} {:<8} {:<20} {:>14}  pieces",
        "tensor", "dtype", "shape", "bytes"
    );
    for tensor in &report.tensors {
        let pieces = tensor
            .pieces
            .as_ref()
            .map(|p| p.len().to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<60} {:<8} {:<20} {:>14}  {pieces}",
            tensor.name,
            tensor.dtype.name(),
            format!("{:?}", tensor.shape),
            tensor.bytes
        );
    }
    println!();
    println!(
        "format          {}",
        serde_json::to_value(report.format)?.as_str().unwrap_or("?")
    );
    println!(
        "tensors         {} ({} bytes, {})",
        report.tensor_count,
        report.tensor_bytes,
        human_bytes(report.tensor_bytes)
    );
    println!("files           {}", report.files.len());
    if let Some(limit) = report.max_chunk_bytes {
        println!("ceiling         {limit} bytes");
    }
    if let Some(largest) = &report.largest_tensor {
        println!("largest tensor  {} ({} bytes)", largest.name, largest.bytes);
    }
    if let Some(largest) = &report.largest_file {
        println!("largest file    {} ({} bytes)", largest.name, largest.bytes);
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(args: VerifyArgs) -> Result<ExitCode> {
    let report = shardkit::verify::verify(&args.dir, args.common.threads())
        .with_context(|| format!("cannot verify {}", args.dir.display()))?;
    if args.common.json {
        print_json(&json!({
            "dir": report.dir,
            "ok": report.ok(),
            "chunks": report.chunks,
            "tensors": report.tensors,
            "bytes": report.bytes,
            "failures": report.failures,
        }))?;
    } else if report.ok() {
        println!(
            "ok: {} chunks, {} tensors, {} bytes match the manifest",
            report.chunks, report.tensors, report.bytes
        );
    } else {
        for failure in &report.failures {
            let tensors = if failure.tensors.is_empty() {
                String::new()
            } else {
                format!(" (tensors: {})", failure.tensors.join(", "))
            };
            println!("FAILED: {}{tensors}", failure.message);
        }
    }
    if report.ok() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "shardkit: {} problems found in {}",
            report.failures.len(),
            args.dir.display()
        );
        Ok(ExitCode::FAILURE)
    }
}

fn export(args: ExportArgs) -> Result<ExitCode> {
    match args.format {
        ExportFormat::Safetensors => export_safetensors(&args),
        ExportFormat::Gguf => export_gguf(&args),
    }
}

fn export_safetensors(args: &ExportArgs) -> Result<ExitCode> {
    if args.split_max_size.is_some() {
        anyhow::bail!(
            "--split-max-size applies to --format gguf; use --max-shard-size for safetensors"
        );
    }
    let dtype = args.dtype.map(|d| match d {
        ExportDtype::F32 => DType::F32,
        ExportDtype::F16 => DType::F16,
        ExportDtype::Bf16 => DType::BF16,
    });
    let options = shardkit::export::ExportOptions {
        max_shard_bytes: args.max_shard_size.0,
        threads: args.common.threads(),
        force: args.force,
        dtype,
    };
    let result = shardkit::export::export_safetensors(&args.dir, &args.output, options)
        .with_context(|| format!("cannot export {}", args.dir.display()))?;
    if args.common.json {
        print_json(&result)?;
    } else {
        for (name, bytes) in &result.shards {
            println!("{name}  {bytes} bytes");
        }
        println!(
            "{} tensors in {} shards written to {}",
            result.tensors,
            result.shards.len(),
            result.output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn export_gguf(args: &ExportArgs) -> Result<ExitCode> {
    if args.dtype.is_some() {
        anyhow::bail!(
            "--dtype applies to --format safetensors; GGUF export keeps every tensor's type"
        );
    }
    if args.output.exists() && !args.force {
        anyhow::bail!(
            "{} already exists; pass --force to replace it",
            args.output.display()
        );
    }
    shardkit::output::check_not_overlapping(&args.output, &args.dir)?;
    let source = shardkit::source::chunked::ChunkedSource::open(&args.dir).with_context(|| {
        format!(
            "cannot export {}: GGUF export reads a chunked folder",
            args.dir.display()
        )
    })?;
    let result =
        shardkit::gguf::export_gguf(&source, &args.output, args.split_max_size.map(|s| s.0))
            .with_context(|| format!("cannot export {}", args.dir.display()))?;
    if args.common.json {
        print_json(&json!({
            "files": result.files,
            "tensors": result.tensors,
            "tensor_bytes": result.tensor_bytes,
        }))?;
    } else {
        for file in &result.files {
            println!("{}", file.display());
        }
        println!(
            "{} tensors, {} bytes of tensor data",
            result.tensors, result.tensor_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}
