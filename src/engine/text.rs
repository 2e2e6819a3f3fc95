//! Text in and out: the tokenizer from `tokenizer.json`, the chat template from
//! `tokenizer_config.json`, end-of-sequence ids, and streaming decode.
//!
//! Chat templates are Jinja templates written for Python's Jinja2. They are rendered with
//! minijinja, with Python string methods (`strip`, `startswith`, ...) supplied by
//! minijinja-contrib's `pycompat`, and with the helpers transformers adds to the template
//! environment: `raise_exception(message)` and `strftime_now(format)`. The context is
//! transformers' `apply_chat_template`: `messages`, `add_generation_prompt = true`, and the
//! special token strings `bos_token`, `eos_token`, `unk_token` and `pad_token` when the
//! config names them.
//!
//! Streaming uses the tokenizers crate's `DecodeStream`, which decodes the ids since a recent
//! boundary and returns only text that is complete: a token that ends inside a multi-byte
//! UTF-8 character yields nothing until the character is finished.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use super::config::TokenIds;
use super::{read_small_file, EngineError};

/// Largest `tokenizer_config.json` or `generation_config.json` read, 16 MiB.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A tokenizer loaded from `tokenizer.json`.
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    /// Loads `DIR/tokenizer.json`.
    ///
    /// # Errors
    ///
    /// Fails when the file is missing or the tokenizers crate rejects it.
    pub fn load(dir: &Path) -> Result<TextTokenizer, EngineError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(EngineError::Tokenizer {
                path,
                message: "file not found; the run command needs tokenizer.json beside the manifest"
                    .into(),
            });
        }
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| EngineError::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(TextTokenizer { tokenizer, path })
    }

    /// Token ids of `text`. `add_special_tokens` applies the tokenizer's post-processor
    /// (for example a BOS token); rendered chat templates already contain theirs.
    ///
    /// # Errors
    ///
    /// Fails when the tokenizer fails on the text.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, EngineError> {
        let encoding = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| self.error(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids` without special tokens.
    ///
    /// # Errors
    ///
    /// Fails when an id is unknown to the tokenizer.
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.tokenizer.decode(ids, true).map_err(|e| self.error(e))
    }

    /// The id of a token string, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Starts decoding a stream of generated ids, skipping special tokens.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            tokenizer: self,
            stream: self.tokenizer.decode_stream(true),
        }
    }

    fn error(&self, error: tokenizers::Error) -> EngineError {
        EngineError::Tokenizer {
            path: self.path.clone(),
            message: error.to_string(),
        }
    }
}

/// Incremental decoding of generated ids into complete UTF-8 text.
pub struct TextStream<'t> {
    tokenizer: &'t TextTokenizer,
    stream: tokenizers::DecodeStream<
        't,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
}

impl TextStream<'_> {
    /// Adds one id and returns the text it completes, if any.
    ///
    /// # Errors
    ///
    /// Fails when the id is unknown to the tokenizer.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, EngineError> {
        self.stream.step(id).map_err(|e| self.tokenizer.error(e))
    }
}

/// A chat template with the special token strings it may refer to.
pub struct ChatTemplate {
    source: String,
    special_tokens: Vec<(&'static str, String)>,
    path: PathBuf,
}

impl ChatTemplate {
    /// Reads the `chat_template` of `DIR/tokenizer_config.json`: a string, or a list of named
    /// templates of which the one named `default` is used.
    ///
    /// # Errors
    ///
    /// Fails when the file is missing or invalid or has no chat template.
    pub fn load(dir: &Path) -> Result<ChatTemplate, EngineError> {
        let path = dir.join("tokenizer_config.json");
        let invalid = |message: String| EngineError::Template {
            path: path.clone(),
            message,
        };
        let bytes = read_small_file(&path, MAX_CONFIG_BYTES)?;
        let config: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("invalid JSON: {e}")))?;
        let source = match config.get("chat_template") {
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|entry| entry.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|entry| entry.get("template")?.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    invalid("chat_template is a list without a \"default\" entry".into())
                })?,
            _ => {
                return Err(invalid(
                    "no chat_template; run without --chat to use the prompt as it is".into(),
                ))
            }
        };
        let special_tokens = ["bos_token", "eos_token", "unk_token", "pad_token"]
            .into_iter()
            .filter_map(|key| Some((key, token_string(config.get(key)?)?)))
            .collect();
        Ok(ChatTemplate {
            source,
            special_tokens,
            path,
        })
    }

    /// Renders the template for an optional system message and a user message, with the
    /// generation prompt appended.
    ///
    /// # Errors
    ///
    /// Fails when the template does not parse, calls `raise_exception`, or fails to render.
    pub fn render(&self, system: Option<&str>, user: &str) -> Result<String, EngineError> {
        let mut environment = minijinja::Environment::new();
        environment
            .set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_function("raise_exception", raise_exception);
        environment.add_function("strftime_now", strftime_now);
        let error = |e: minijinja::Error| EngineError::Template {
            path: self.path.clone(),
            message: format!("{e:#}"),
        };
        environment
            .add_template("chat", &self.source)
            .map_err(error)?;
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = system {
            messages.push(serde_json::json!({"role": "system", "content": system}));
        }
        messages.push(serde_json::json!({"role": "user", "content": user}));
        let mut context = serde_json::Map::new();
        context.insert("messages".into(), messages.into());
        context.insert("add_generation_prompt".into(), true.into());
        for (key, value) in &self.special_tokens {
            context.insert((*key).into(), value.clone().into());
        }
        let template = environment.get_template("chat").map_err(error)?;
        template
            .render(minijinja::Value::from_serialize(&context))
            .map_err(error)
    }
}

/// A special token given as a string or as an added-token object with `content`.
fn token_string(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Object(object) => Some(object.get("content")?.as_str()?.to_string()),
        _ => None,
    }
}

fn raise_exception(message: String) -> Result<minijinja::Value, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        format!("the template raised: {message}"),
    ))
}

/// transformers' `strftime_now`: the current UTC time in a strftime format. Only the
/// directives templates use for dates are implemented (`%Y %m %d %B %b %H %M %S %%`).
fn strftime_now(format: String) -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(seconds, &format)
}

/// Formats seconds since the Unix epoch as UTC with the directives of [`strftime_now`].
fn format_utc(seconds: u64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = (seconds / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    let time = seconds % 86_400;
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('B') => out.push_str(MONTHS[month as usize - 1]),
            Some('b') => out.push_str(&MONTHS[month as usize - 1][..3]),
            Some('H') => out.push_str(&format!("{:02}", time / 3600)),
            Some('M') => out.push_str(&format!("{:02}", time / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", time % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Year, month and day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The ids that end generation: `eos_token_id` of `generation_config.json` (a number or a
/// list) together with those of `config.json`, without duplicates.
///
/// # Errors
///
/// Fails when `generation_config.json` exists but is not valid JSON.
pub fn eos_token_ids(dir: &Path, from_config: &[u32]) -> Result<Vec<u32>, EngineError> {
    let mut ids = from_config.to_vec();
    let path = dir.join("generation_config.json");
    if path.is_file() {
        let bytes = read_small_file(&path, MAX_CONFIG_BYTES)?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| EngineError::Config {
                path: path.clone(),
                message: format!("invalid JSON: {e}"),
            })?;
        if let Some(field) = value.get("eos_token_id") {
            let extra: TokenIds =
                serde_json::from_value(field.clone()).map_err(|e| EngineError::Config {
                    path: path.clone(),
                    message: format!("eos_token_id is not an id or a list of ids: {e}"),
                })?;
            ids.extend(extra.into_vec());
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn strftime_directives_format_utc() {
        // 2024-02-29 13:05:09 UTC.
        let seconds = 19_782 * 86_400 + 13 * 3600 + 5 * 60 + 9;
        assert_eq!(
            format_utc(seconds, "%d %B %Y %H:%M:%S %b %%"),
            "29 February 2024 13:05:09 Feb %"
        );
    }

    #[test]
    fn chat_template_renders_messages_and_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let template = "{% for m in messages %}<{{ m.role }}>{{ m.content.strip() }}{% endfor %}\
            {% if add_generation_prompt %}<assistant>{% endif %}{{ bos_token }}";
        let config = serde_json::json!({"chat_template": template,
            "bos_token": {"content": "<s>", "lstrip": false}});
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        let chat = ChatTemplate::load(dir.path()).unwrap();
        assert_eq!(
            chat.render(Some("be brief"), " hi ").unwrap(),
            "<system>be brief<user>hi<assistant><s>"
        );
    }

    #[test]
    fn raise_exception_fails_the_render_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({"chat_template":
            "{% if messages[0].role == 'system' %}{{ raise_exception('no system role') }}{% endif %}"});
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        let chat = ChatTemplate::load(dir.path()).unwrap();
        let message = chat.render(Some("x"), "y").unwrap_err().to_string();
        assert!(message.contains("no system role"), "{message}");
    }

    #[test]
    fn eos_ids_merge_both_configs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"eos_token_id": [2, 7]}"#,
        )
        .unwrap();
        assert_eq!(eos_token_ids(dir.path(), &[7, 1]).unwrap(), vec![1, 2, 7]);
    }
}
