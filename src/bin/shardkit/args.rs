//! Command-line flags, parsed by clap and converted into library settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use shardkit::size::ByteSize;

const SIZE_HELP: &str =
    "256MB is 256,000,000 bytes; 256MiB is 268,435,456 bytes; a bare number is bytes";

/// Rewrite model checkpoints into small chunks, quantize them, and run them under a memory
/// ceiling.
#[derive(Parser, Debug)]
#[command(name = "shardkit", version, about, long_about = None)]
#[command(
    after_help = "Sizes: 256MB is 256,000,000 bytes, 256MiB is 268,435,456 bytes, a bare number is bytes; K/M/G/T in any case, decimals allowed (1.5GB).\nExit status: 0 success, 1 failure, 2 command-line misuse.\nSet SHARDKIT_LOG=debug for diagnostics on stderr."
)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Rewrite a checkpoint into chunk files of at most --max-chunk bytes, with a manifest.
    #[command(
        after_help = "Example:\n  shardkit reshard ./Mistral-7B -o ./mistral-chunked --max-chunk 256MB\n  shardkit reshard model.safetensors -o out --max-chunk 16MiB --dry-run"
    )]
    Reshard(ReshardArgs),
    /// Quantize weight matrices to a GGML block type, writing a chunked folder and a quality report.
    #[command(
        after_help = "Example:\n  shardkit quantize q4 ./Mistral-7B -o ./mistral-q4 --max-chunk 256MB\n  shardkit quantize q8_0 model.gguf -o model-q8 --keep '*embed_tokens*' --json\nTypes: q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k; aliases q8 = q8_0, q4 = q4_k, q5 = q5_k, q6 = q6_k.\nOnly 2-D weight matrices are quantized; norms, biases and 1-D tensors keep their type."
    )]
    Quantize(QuantizeArgs),
    /// List the tensors of any input, with totals and the largest tensor and file.
    #[command(
        after_help = "Example:\n  shardkit inspect ./mistral-chunked\n  shardkit inspect model.safetensors --json"
    )]
    Inspect(InspectArgs),
    /// Recompute every hash of a chunked folder and check it against the manifest.
    #[command(
        after_help = "Example:\n  shardkit verify ./mistral-chunked && echo intact\nExits 1 when anything does not match; the message names the chunk and its tensors."
    )]
    Verify(VerifyArgs),
    /// Write a chunked folder back out as a standard checkpoint.
    #[command(
        after_help = "Example:\n  shardkit export ./mistral-chunked -o ./Mistral-7B-copy --format safetensors --max-shard-size 5GB"
    )]
    Export(ExportArgs),
}

/// Flags of `reshard`.
#[derive(Args, Debug)]
pub struct ReshardArgs {
    /// A .safetensors file, a Hugging Face model folder, or a chunked folder.
    pub input: PathBuf,
    /// The output folder to create.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Largest chunk file, header included.
    #[arg(long, value_name = "SIZE", long_help = SIZE_HELP)]
    pub max_chunk: ByteSize,
    /// Give every tensor chunks of its own instead of packing small tensors together.
    #[arg(long)]
    pub per_tensor: bool,
    /// Print the plan (chunks, sizes, tensors cut) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace the output folder if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub common: Common,
}

/// Flags of `quantize`.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Target type: q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k, or q8 q4 q5 q6.
    #[arg(value_name = "TYPE", value_parser = parse_quant_type)]
    pub target: shardkit::dtype::QuantType,
    /// A .safetensors file, .gguf file, Hugging Face model folder, or chunked folder.
    pub input: PathBuf,
    /// The output folder to create.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Largest chunk file, header included.
    #[arg(long, value_name = "SIZE", default_value = "256MB", long_help = SIZE_HELP)]
    pub max_chunk: ByteSize,
    /// Keep tensors whose name matches this glob unchanged (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub keep: Vec<String>,
    /// Quantize tensors that contain NaN or infinity instead of failing.
    #[arg(long)]
    pub allow_non_finite: bool,
    /// Replace the output folder if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub common: Common,
}

fn parse_quant_type(text: &str) -> Result<shardkit::dtype::QuantType, String> {
    shardkit::quantize::parse_target(text).ok_or_else(|| {
        format!("unknown type {text:?}; use one of q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k, or q8 q4 q5 q6")
    })
}

/// Flags of `inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A .safetensors file, .gguf file, Hugging Face model folder, or chunked folder.
    pub input: PathBuf,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The chunked folder.
    pub dir: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

/// Output formats of `export`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// Hugging Face safetensors shards with an index.
    Safetensors,
    /// A GGUF v3 file (or split set) that llama.cpp loads.
    Gguf,
}

/// Floating-point types `export` can convert to.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportDtype {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
}

/// Flags of `export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The chunked folder (any readable input works).
    pub dir: PathBuf,
    /// The output folder to create.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Largest amount of tensor data per safetensors shard file.
    #[arg(long, value_name = "SIZE", default_value = "5GB", long_help = SIZE_HELP)]
    pub max_shard_size: ByteSize,
    /// Convert floating-point tensors to this type (safetensors only).
    #[arg(long, value_enum)]
    pub dtype: Option<ExportDtype>,
    /// Split the GGUF output into parts of at most this size (gguf only).
    #[arg(long, value_name = "SIZE", long_help = SIZE_HELP)]
    pub split_max_size: Option<ByteSize>,
    /// Replace the output if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub common: Common,
}

/// Flags shared by commands that do bulk work.
#[derive(Args, Debug)]
pub struct Common {
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Print one JSON document on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Common {
    /// Thread count for the library.
    pub fn threads(&self) -> Option<usize> {
        self.threads.map(usize::from)
    }
}
