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
    /// Generate text with a Llama-family model straight from a chunked folder, keeping every
    /// allocation under a ceiling.
    #[command(
        after_help = "Example:\n  shardkit run --chunked-dir ./smollm2 --chat --prompt 'What is the capital of France?' -n 64\n  echo 'Once upon a time' | shardkit run --chunked-dir ./smollm2 --temperature 0 --json\nText streams to stdout; the figures (load time, tokens/s, largest allocation, peak heap) follow on stderr.\nExits 1 if any allocation exceeded --max-alloc."
    )]
    Run(RunArgs),
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

/// Storage types of the key/value cache of `run`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvCacheType {
    /// 32-bit floats: exactly the values attention computed.
    F32,
    /// 16-bit floats: half the memory and reads, as llama.cpp's default cache.
    F16,
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

/// Flags of `run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The chunked folder, with config.json and tokenizer.json beside the manifest.
    #[arg(long, value_name = "DIR")]
    pub chunked_dir: PathBuf,
    /// The prompt text (default: read from stdin).
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// Wrap the prompt as a user message in the chat template of tokenizer_config.json.
    #[arg(long)]
    pub chat: bool,
    /// A system message placed before the user message (with --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Maximum tokens to generate.
    #[arg(
        short = 'n',
        long = "max-new-tokens",
        value_name = "N",
        default_value_t = 128
    )]
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token every step (greedy).
    #[arg(long, value_name = "T", default_value_t = 0.7, value_parser = non_negative)]
    pub temperature: f32,
    /// Sample only among the K most likely tokens; 0 disables the limit.
    #[arg(long, value_name = "K", default_value_t = 40)]
    pub top_k: usize,
    /// Sample only among the most likely tokens whose probabilities add up to P; 1 disables it.
    #[arg(long, value_name = "P", default_value_t = 0.9, value_parser = probability)]
    pub top_p: f32,
    /// Divide the positive logits of tokens already in the text by R (multiply negative ones);
    /// 1 disables the penalty.
    #[arg(long, value_name = "R", default_value_t = 1.0, value_parser = positive)]
    pub repeat_penalty: f32,
    /// Seed of the sampler (default: from the clock; the summary prints the seed used).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Largest single heap allocation allowed (default: the manifest's max_chunk_bytes).
    #[arg(long, value_name = "SIZE", long_help = SIZE_HELP)]
    pub max_alloc: Option<ByteSize>,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Storage type of the key/value cache.
    #[arg(long, value_name = "TYPE", value_enum, default_value_t = KvCacheType::F32)]
    pub kv_type: KvCacheType,
    /// Recompute every hash of the folder first and refuse to start on a mismatch.
    #[arg(long)]
    pub verify: bool,
    /// Print one JSON document with the text, the ids and every figure instead of streaming.
    #[arg(long)]
    pub json: bool,
}

fn parse_float(text: &str) -> Result<f32, String> {
    let value: f32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(format!("{text:?} is not a finite number"))
    }
}

fn non_negative(text: &str) -> Result<f32, String> {
    let value = parse_float(text)?;
    if value >= 0.0 {
        Ok(value)
    } else {
        Err(format!("{value} is negative; use 0 or more"))
    }
}

fn positive(text: &str) -> Result<f32, String> {
    let value = parse_float(text)?;
    if value > 0.0 {
        Ok(value)
    } else {
        Err(format!("{value} is not positive"))
    }
}

fn probability(text: &str) -> Result<f32, String> {
    let value = parse_float(text)?;
    if value > 0.0 && value <= 1.0 {
        Ok(value)
    } else {
        Err(format!("{value} is outside (0, 1]"))
    }
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
