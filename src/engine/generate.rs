//! The generation loop: feed the prompt, then sample one token at a time until an
//! end-of-sequence id or the token limit, timing both phases.

use std::time::Instant;

use super::model::Session;
use super::sample::{Sampler, SamplingOptions};
use super::EngineError;

/// Settings of [`generate`].
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Maximum tokens to generate.
    pub max_new_tokens: usize,
    /// Sampling settings.
    pub sampling: SamplingOptions,
    /// Ids that end generation; the id is kept in the output.
    pub eos_token_ids: Vec<u32>,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-sequence id was generated.
    EndOfSequence,
    /// `max_new_tokens` were generated.
    Length,
}

/// What a generation produced, with timings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    /// Generated ids, the end-of-sequence id included when there was one.
    pub ids: Vec<u32>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Prompt tokens fed.
    pub prompt_tokens: usize,
    /// Seconds spent on the prompt, up to the logits of its last token.
    pub prompt_seconds: f64,
    /// Seconds spent generating, after the prompt.
    pub generate_seconds: f64,
}

/// Feeds `prompt` and generates up to `options.max_new_tokens` ids, calling `on_token` with
/// each id as soon as it is chosen.
///
/// The session's context must hold the prompt and the new tokens; history for the
/// repetition penalty is kept in a buffer of that size, reserved up front.
///
/// # Errors
///
/// Fails when feeding fails (see [`Session::feed`]) or `on_token` fails.
pub fn generate(
    session: &mut Session<'_>,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<(), EngineError>,
) -> Result<Generation, EngineError> {
    let vocab = session.vocab_size();
    let mut sampler = Sampler::new(options.sampling, vocab);
    let mut history = Vec::with_capacity(session.plan().context);
    history.extend_from_slice(prompt);
    let mut logits = vec![0f32; vocab];
    let mut ids = Vec::with_capacity(options.max_new_tokens);

    let started = Instant::now();
    logits.copy_from_slice(session.feed(prompt)?);
    let prompt_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut stop = StopReason::Length;
    while ids.len() < options.max_new_tokens {
        let id = sampler.sample(&mut logits, &history);
        ids.push(id);
        history.push(id);
        on_token(id)?;
        if options.eos_token_ids.contains(&id) {
            stop = StopReason::EndOfSequence;
            break;
        }
        if ids.len() == options.max_new_tokens {
            break;
        }
        logits.copy_from_slice(session.feed(&[id])?);
    }
    Ok(Generation {
        ids,
        stop,
        prompt_tokens: prompt.len(),
        prompt_seconds,
        generate_seconds: started.elapsed().as_secs_f64(),
    })
}
