//! `shardkit-synth`: writes a synthetic Llama-family checkpoint for tests and benchmarks.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use shardkit::dtype::DType;
use shardkit::size::ByteSize;
use shardkit::synth::{write_checkpoint, Family, SynthSpec};

/// Write a synthetic Hugging Face checkpoint with deterministic weights.
#[derive(Parser, Debug)]
#[command(name = "shardkit-synth", version)]
#[command(
    after_help = "Examples:\n  shardkit-synth --preset mistral-7b -o ./mistral-synth\n  shardkit-synth --preset tiny --family qwen2 -o ./tiny-qwen"
)]
struct Args {
    /// The model folder to create.
    #[arg(short, long)]
    output: PathBuf,
    /// Starting shapes; the flags below override single fields.
    #[arg(long, value_enum, default_value = "tiny")]
    preset: Preset,
    /// Architecture family.
    #[arg(long, value_enum)]
    family: Option<FamilyArg>,
    /// Hidden size.
    #[arg(long)]
    hidden: Option<u64>,
    /// Decoder layers.
    #[arg(long)]
    layers: Option<u64>,
    /// Attention heads.
    #[arg(long)]
    heads: Option<u64>,
    /// Key/value heads.
    #[arg(long)]
    kv_heads: Option<u64>,
    /// Feed-forward size.
    #[arg(long)]
    intermediate: Option<u64>,
    /// Vocabulary size.
    #[arg(long)]
    vocab: Option<u64>,
    /// Storage type: f32, f16 or bf16.
    #[arg(long)]
    dtype: Option<String>,
    /// Share the embedding with the output head.
    #[arg(long)]
    tie_embeddings: bool,
    /// Sliding window (Mistral).
    #[arg(long)]
    sliding_window: Option<u64>,
    /// Largest tensor data per shard (256MB is 256,000,000 bytes; 256MiB is 268,435,456).
    #[arg(long)]
    max_shard_size: Option<ByteSize>,
    /// Seed of the weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replace the output if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Preset {
    Tiny,
    #[value(name = "mistral-7b")]
    Mistral7b,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum FamilyArg {
    Llama,
    Mistral,
    Qwen2,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut spec = match args.preset {
        Preset::Tiny => SynthSpec::tiny(),
        Preset::Mistral7b => SynthSpec::mistral_7b(),
    };
    if let Some(family) = args.family {
        spec.family = match family {
            FamilyArg::Llama => Family::Llama,
            FamilyArg::Mistral => Family::Mistral,
            FamilyArg::Qwen2 => Family::Qwen2,
        };
    }
    let overrides = [
        (&mut spec.hidden, args.hidden),
        (&mut spec.layers, args.layers),
        (&mut spec.heads, args.heads),
        (&mut spec.kv_heads, args.kv_heads),
        (&mut spec.intermediate, args.intermediate),
        (&mut spec.vocab, args.vocab),
    ];
    for (field, value) in overrides {
        if let Some(value) = value {
            *field = value;
        }
    }
    if let Some(dtype) = &args.dtype {
        match dtype.to_ascii_uppercase().parse::<DType>() {
            Ok(parsed @ (DType::F32 | DType::F16 | DType::BF16)) => spec.dtype = parsed,
            _ => {
                eprintln!("shardkit-synth: invalid --dtype {dtype:?}: use f32, f16 or bf16");
                return ExitCode::from(2);
            }
        }
    }
    spec.tie_embeddings |= args.tie_embeddings;
    if args.sliding_window.is_some() {
        spec.sliding_window = args.sliding_window;
    }
    if let Some(size) = args.max_shard_size {
        spec.max_shard_bytes = size.0;
    }
    spec.seed = args.seed;
    if spec.heads == 0
        || spec.kv_heads == 0
        || spec.hidden % spec.heads != 0
        || spec.heads % spec.kv_heads != 0
    {
        eprintln!("shardkit-synth: hidden size must be a multiple of heads, and heads a multiple of KV heads");
        return ExitCode::from(2);
    }
    match write_checkpoint(&spec, &args.output, args.force) {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("shardkit-synth: {error}");
            ExitCode::FAILURE
        }
    }
}
