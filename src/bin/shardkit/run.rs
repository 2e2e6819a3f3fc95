//! `shardkit run`: load a chunked folder, tokenize the prompt, generate, stream the text.
//!
//! Generated text goes to stdout as it is decoded (or, with `--json`, one document at the
//! end). The figures (load time, prompt and generation speed, the largest allocation and the
//! peak heap against the ceiling) go to stderr after the text. The largest allocation is read
//! from the binary's counting allocator and covers the whole process, tokenizer included; a
//! run whose largest allocation exceeded the ceiling exits 1 after printing its output.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use shardkit::alloc::AllocStats;
use shardkit::engine::generate::{generate, GenerateOptions, Generation};
use shardkit::engine::sample::SamplingOptions;
use shardkit::engine::text::{eos_token_ids, ChatTemplate, TextTokenizer};
use shardkit::engine::{EngineError, EngineOptions, KvType, Model};

use crate::args::{KvCacheType, RunArgs};

/// Runs `shardkit run`.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    let dir = args.chunked_dir.as_path();
    if args.verify {
        verify_first(dir, args.threads.map(usize::from))?;
    }
    let started = Instant::now();
    let options = EngineOptions {
        max_alloc: args.max_alloc.map(|size| size.0),
        threads: args.threads.map(usize::from),
        kv_type: match args.kv_type {
            KvCacheType::F32 => KvType::F32,
            KvCacheType::F16 => KvType::F16,
        },
    };
    let model =
        Model::load(dir, &options).with_context(|| format!("cannot load {}", dir.display()))?;
    let tokenizer = TextTokenizer::load(dir)?;
    let load_seconds = started.elapsed().as_secs_f64();

    let prompt_ids = prompt_ids(&args, dir, &tokenizer)?;
    let max_positions = model.config().max_position_embeddings;
    if prompt_ids.len() >= max_positions {
        bail!(
            "the prompt is {} tokens, but the model supports at most {max_positions} positions; shorten the prompt",
            prompt_ids.len()
        );
    }
    let max_new_tokens = args.max_new_tokens.min(max_positions - prompt_ids.len());
    let mut session = model
        .session(prompt_ids.len() + max_new_tokens)
        .context("cannot plan the session's memory")?;
    let generate_options = GenerateOptions {
        max_new_tokens,
        sampling: sampling_options(&args),
        eos_token_ids: eos_token_ids(dir, &model.config().eos_token_ids)?,
    };

    let mut stream = tokenizer.stream();
    let mut stdout = std::io::stdout().lock();
    let generation = generate(&mut session, &prompt_ids, &generate_options, |id| {
        if args.json {
            return Ok(());
        }
        if let Some(text) = stream.push(id)? {
            stdout
                .write_all(text.as_bytes())
                .map_err(EngineError::Output)?;
            stdout.flush().map_err(EngineError::Output)?;
        }
        Ok(())
    })?;
    let text = tokenizer.decode(&generation.ids)?;
    if !args.json {
        writeln!(stdout).context("cannot write generated text")?;
    }
    drop(stdout);

    let stats = crate::ALLOC.stats();
    let report = Report {
        model: &model,
        generation: &generation,
        load_seconds,
        stats,
        seed: generate_options.sampling.seed,
    };
    if args.json {
        crate::commands::print_json(&report.to_json(&text, &prompt_ids, &session_plan(&session)))?;
    } else {
        report.print_summary();
    }
    if stats.largest_alloc_bytes as u64 > model.ceiling() {
        eprintln!(
            "shardkit: the largest allocation was {} bytes, over the ceiling of {} bytes",
            stats.largest_alloc_bytes,
            model.ceiling()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn session_plan(session: &shardkit::engine::Session<'_>) -> serde_json::Value {
    serde_json::to_value(session.plan()).unwrap_or_default()
}

/// Runs the library's verify and fails on any mismatch, listing each.
fn verify_first(dir: &Path, threads: Option<usize>) -> Result<()> {
    let report = shardkit::verify::verify(dir, threads)
        .with_context(|| format!("cannot verify {}", dir.display()))?;
    if report.ok() {
        return Ok(());
    }
    let problems: Vec<String> = report
        .failures
        .iter()
        .map(|failure| match &failure.chunk {
            Some(chunk) if !failure.message.contains(chunk.as_str()) => {
                format!("{chunk}: {}", failure.message)
            }
            _ => failure.message.clone(),
        })
        .collect();
    bail!(
        "{} does not match its manifest; not starting: {}",
        dir.display(),
        problems.join("; ")
    )
}

/// The prompt from --prompt, --prompt-file or stdin, rendered through the chat template with
/// --chat, as token ids.
fn prompt_ids(args: &RunArgs, dir: &Path, tokenizer: &TextTokenizer) -> Result<Vec<u32>> {
    let text = match (&args.prompt, &args.prompt_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read prompt file {}", path.display()))?,
        (None, None) => {
            let mut text = String::new();
            if std::io::stdin().is_terminal() {
                eprintln!("shardkit: reading the prompt from stdin; end it with Ctrl-D");
            }
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the prompt from stdin")?;
            text
        }
    };
    if !args.chat {
        let ids = tokenizer.encode(&text, true)?;
        if ids.is_empty() {
            bail!("the prompt is empty after tokenization; give some text with --prompt");
        }
        return Ok(ids);
    }
    let template = ChatTemplate::load(dir)?;
    let rendered = template.render(args.system.as_deref(), &text)?;
    Ok(tokenizer.encode(&rendered, false)?)
}

fn sampling_options(args: &RunArgs) -> SamplingOptions {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    SamplingOptions {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repeat_penalty: args.repeat_penalty,
        seed,
    }
}

/// The figures of one run.
struct Report<'a> {
    model: &'a Model,
    generation: &'a Generation,
    load_seconds: f64,
    stats: AllocStats,
    seed: u64,
}

impl Report<'_> {
    fn prompt_tokens_per_second(&self) -> f64 {
        self.generation.prompt_tokens as f64 / self.generation.prompt_seconds.max(1e-9)
    }

    /// Forward passes after the prompt per second: the first generated token comes from the
    /// prompt's logits, so `n` generated tokens take `n - 1` passes.
    fn generate_tokens_per_second(&self) -> f64 {
        let passes = self.generation.ids.len().saturating_sub(1);
        passes as f64 / self.generation.generate_seconds.max(1e-9)
    }

    fn print_summary(&self) {
        let generation = self.generation;
        eprintln!(
            "load {:.2} s | prompt {} tokens, {:.1} tokens/s | generated {} tokens, {:.1} tokens/s | stop: {:?}",
            self.load_seconds,
            generation.prompt_tokens,
            self.prompt_tokens_per_second(),
            generation.ids.len(),
            self.generate_tokens_per_second(),
            generation.stop,
        );
        eprintln!(
            "largest allocation {} bytes, peak heap {} bytes, ceiling {} bytes, {} threads, seed {}",
            self.stats.largest_alloc_bytes,
            self.stats.peak_live_bytes,
            self.model.ceiling(),
            self.model.threads(),
            self.seed,
        );
    }

    fn to_json(
        &self,
        text: &str,
        prompt_ids: &[u32],
        plan: &serde_json::Value,
    ) -> serde_json::Value {
        let generation = self.generation;
        json!({
            "text": text,
            "prompt_ids": prompt_ids,
            "ids": generation.ids,
            "stop": generation.stop,
            "load_seconds": self.load_seconds,
            "prompt_tokens": generation.prompt_tokens,
            "prompt_seconds": generation.prompt_seconds,
            "prompt_tokens_per_second": self.prompt_tokens_per_second(),
            "generated_tokens": generation.ids.len(),
            "generate_seconds": generation.generate_seconds,
            "generate_tokens_per_second": self.generate_tokens_per_second(),
            "largest_alloc_bytes": self.stats.largest_alloc_bytes,
            "peak_heap_bytes": self.stats.peak_live_bytes,
            "max_alloc_bytes": self.model.ceiling(),
            "threads": self.model.threads(),
            "kv_type": self.model.kv_type(),
            "seed": self.seed,
            "plan": plan,
        })
    }
}
