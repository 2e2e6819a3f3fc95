//! `tokenizer.json` and `tokenizer_config.json` derived from GGUF tokenizer metadata.
//!
//! Two tokenizer models are supported, named by `tokenizer.ggml.model`:
//!
//! - `gpt2`: byte-level BPE with the merges in `tokenizer.ggml.merges`. The pre-tokenizer is
//!   chosen from `tokenizer.ggml.pre` as llama.cpp chooses it (`llama-vocab.cpp`, 2025): the
//!   same regular expressions, applied one after another, each split keeping its matches,
//!   then the byte-level mapping.
//! - `llama`: SentencePiece BPE with byte fallback (`<0xXX>` tokens) and `▁` for spaces.
//!   GGUF stores scores instead of merges, so merges are rebuilt: every split of a token into
//!   two tokens becomes a merge, ranked by the merged token's score, highest first. This is
//!   the order in which SentencePiece's BPE applies them.
//!
//! Tokens of type control (3) and unknown (2) become special added tokens, and user-defined
//! tokens (4) non-special added tokens, so they are matched whole in the input text as
//! llama.cpp matches them. The bos/eos/unk/pad tokens are always special.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::error::GgufErrorKind;
use super::value::Metadata;

/// ggml token types (`llama_token_type`).
const TOKEN_NORMAL: i64 = 1;
const TOKEN_UNKNOWN: i64 = 2;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;
const TOKEN_BYTE: i64 = 6;

/// Maximum length in bytes of a mergeable token of a SentencePiece vocabulary. Rebuilding the
/// merges tries every split of every token, at a cost that grows with the square of the
/// token's length. One 30,000-byte token took about a second, so by extrapolation a token of
/// a few megabytes would take hours. SentencePiece trains pieces of at most 16 characters by
/// default, which leaves ample room for longer user-defined pieces.
const MAX_SENTENCEPIECE_TOKEN_BYTES: usize = 1024;

pub(crate) const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEFAULT_REGEXES: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|]+",
    GPT2_REGEX,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// llama.cpp's pre-tokenizer settings for one family of `tokenizer.ggml.pre` values.
struct PreTokenizer {
    names: &'static [&'static str],
    regexes: &'static [&'static str],
    /// Take a whole pre-token that is in the vocabulary without merging.
    ignore_merges: bool,
    /// `add_bos_token` when the metadata does not set it.
    add_bos: bool,
    clean_spaces: bool,
}

const PRE_TOKENIZERS: &[PreTokenizer] = &[
    PreTokenizer {
        names: &["llama3", "llama-v3", "llama-bpe", "falcon3"],
        regexes: &[LLAMA3_REGEX],
        ignore_merges: true,
        add_bos: true,
        clean_spaces: true,
    },
    PreTokenizer {
        names: &["dbrx", "smaug-bpe"],
        regexes: &[LLAMA3_REGEX],
        ignore_merges: false,
        add_bos: false,
        clean_spaces: true,
    },
    PreTokenizer {
        names: &["qwen2"],
        regexes: &[QWEN2_REGEX],
        ignore_merges: false,
        add_bos: false,
        clean_spaces: false,
    },
    PreTokenizer {
        names: &["stablelm2", "megrez"],
        regexes: &[QWEN2_REGEX],
        ignore_merges: false,
        add_bos: false,
        clean_spaces: true,
    },
    PreTokenizer {
        names: &["smollm", "command-r"],
        regexes: &[r"\p{N}", GPT2_REGEX],
        ignore_merges: false,
        add_bos: false,
        clean_spaces: false,
    },
    PreTokenizer {
        names: &["starcoder", "refact", "codeshell", "exaone", "minerva-7b"],
        regexes: &[r"\p{N}", GPT2_REGEX],
        ignore_merges: false,
        add_bos: false,
        clean_spaces: true,
    },
    PreTokenizer {
        names: &[
            "gpt-2",
            "phi-2",
            "roberta-bpe",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v1-en",
            "jina-v2-es",
            "jina-v2-de",
            "jina-v2-code",
            "mpt",
            "olmo",
            "jais",
            "exaone4",
            "trillion",
        ],
        regexes: &[GPT2_REGEX],
        ignore_merges: false,
        add_bos: false,
        clean_spaces: true,
    },
    PreTokenizer {
        names: &["default"],
        regexes: DEFAULT_REGEXES,
        ignore_merges: false,
        add_bos: false,
        clean_spaces: true,
    },
];

/// Returns the first `tokenizer.ggml.pre` name whose regular expressions are exactly
/// `regexes`.
pub fn pre_tokenizer_name(regexes: &[String]) -> Option<&'static str> {
    PRE_TOKENIZERS
        .iter()
        .find(|family| family.regexes.iter().eq(regexes.iter()))
        .map(|family| family.names[0])
}

/// The two derived tokenizer files.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerFiles {
    /// `tokenizer.json` for the `tokenizers` library.
    pub tokenizer: Value,
    /// `tokenizer_config.json` with the chat template and special tokens.
    pub config: Value,
}

/// The tokenizer metadata, read and checked.
struct Vocabulary {
    tokens: Vec<String>,
    types: Vec<i64>,
    bos: Option<u64>,
    eos: Option<u64>,
    unk: Option<u64>,
    pad: Option<u64>,
}

/// Builds the tokenizer files, or returns `None` when the metadata has no tokenizer or one
/// of a model other than `gpt2` and `llama`.
///
/// # Errors
///
/// Fails when tokenizer keys have the wrong type, when the token list is empty, or when the
/// token type or score arrays differ in length from the token list. Also fails when a special
/// token id is out of range, a merge is not two tokens separated by a space, or a
/// SentencePiece token is longer than [`MAX_SENTENCEPIECE_TOKEN_BYTES`].
pub fn derive_tokenizer(
    metadata: &Metadata,
    architecture: &str,
) -> Result<Option<TokenizerFiles>, GgufErrorKind> {
    let Some(model) = metadata.string("tokenizer.ggml.model")? else {
        return Ok(None);
    };
    if model != "gpt2" && model != "llama" {
        tracing::warn!(
            model,
            "tokenizer model is not gpt2 or llama; no tokenizer.json is derived"
        );
        return Ok(None);
    }
    let vocabulary = read_vocabulary(metadata)?;
    let (model_json, pre_tokenizer, decoder, defaults) = if model == "gpt2" {
        byte_level_parts(metadata, &vocabulary)?
    } else {
        sentencepiece_parts(metadata, &vocabulary)?
    };
    let add_bos = metadata
        .bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(defaults.add_bos);
    let add_eos = metadata
        .bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);
    let post_processor = post_processor(&vocabulary, add_bos, add_eos, model == "gpt2");
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(&vocabulary),
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": model_json,
    });
    let config = tokenizer_config(
        metadata,
        architecture,
        &vocabulary,
        add_bos,
        add_eos,
        defaults,
    )?;
    Ok(Some(TokenizerFiles { tokenizer, config }))
}

/// Defaults that depend on the tokenizer family.
#[derive(Clone, Copy)]
struct FamilyDefaults {
    add_bos: bool,
    clean_spaces: bool,
    legacy: Option<bool>,
}

fn read_vocabulary(metadata: &Metadata) -> Result<Vocabulary, GgufErrorKind> {
    let tokens =
        metadata
            .array("tokenizer.ggml.tokens")?
            .ok_or_else(|| GgufErrorKind::MissingKey {
                key: "tokenizer.ggml.tokens".into(),
                reason: ", needed for tokenizer.json".into(),
            })?;
    let invalid = |key: &str, message: String| GgufErrorKind::InvalidKey {
        key: key.into(),
        message,
    };
    let mut tokens: Vec<String> = tokens
        .as_strings()
        .ok_or_else(|| {
            invalid(
                "tokenizer.ggml.tokens",
                "expected an array of strings".into(),
            )
        })?
        .to_vec();
    // Every derivation below needs at least one token, the unknown token 0 included.
    if tokens.is_empty() {
        return Err(invalid(
            "tokenizer.ggml.tokens",
            "is empty; a vocabulary needs at least one token".into(),
        ));
    }
    for (id, token) in tokens.iter_mut().enumerate() {
        if token.is_empty() {
            // llama.cpp gives empty tokens the same placeholder text.
            tracing::warn!(id, "empty token in the vocabulary; naming it [EMPTY_{id}]");
            *token = format!("[EMPTY_{id}]");
        }
    }
    let types = match metadata.array("tokenizer.ggml.token_type")? {
        None => vec![TOKEN_NORMAL; tokens.len()],
        Some(array) => array.to_i64s().ok_or_else(|| {
            invalid(
                "tokenizer.ggml.token_type",
                "expected an array of integers".into(),
            )
        })?,
    };
    if types.len() != tokens.len() {
        return Err(invalid(
            "tokenizer.ggml.token_type",
            format!(
                "has {} entries but there are {} tokens",
                types.len(),
                tokens.len()
            ),
        ));
    }
    let special = |key: &str| -> Result<Option<u64>, GgufErrorKind> {
        let id = metadata.unsigned(key)?;
        match id {
            Some(id) if id >= tokens.len() as u64 => Err(invalid(
                key,
                format!(
                    "token id {id} is outside the vocabulary of {} tokens",
                    tokens.len()
                ),
            )),
            _ => Ok(id),
        }
    };
    Ok(Vocabulary {
        bos: special("tokenizer.ggml.bos_token_id")?,
        eos: special("tokenizer.ggml.eos_token_id")?,
        unk: special("tokenizer.ggml.unknown_token_id")?,
        pad: special("tokenizer.ggml.padding_token_id")?,
        tokens,
        types,
    })
}

impl Vocabulary {
    /// Token text to id; when a text repeats, the first id wins, as in llama.cpp's lookup
    /// for the first occurrence.
    fn vocab_json(&self) -> Map<String, Value> {
        let mut vocab = Map::new();
        let mut duplicates = 0usize;
        for (id, token) in self.tokens.iter().enumerate() {
            if vocab.contains_key(token) {
                duplicates += 1;
                continue;
            }
            vocab.insert(token.clone(), json!(id));
        }
        if duplicates > 0 {
            tracing::warn!(
                duplicates,
                "vocabulary has repeated token texts; the first id of each is used"
            );
        }
        vocab
    }

    fn is_special(&self, id: usize) -> bool {
        let id64 = Some(id as u64);
        matches!(self.types[id], TOKEN_UNKNOWN | TOKEN_CONTROL)
            || [self.bos, self.eos, self.unk, self.pad].contains(&id64)
    }

    fn token(&self, id: Option<u64>) -> Value {
        id.map_or(Value::Null, |id| json!(self.tokens[id as usize]))
    }
}

fn added_tokens(vocabulary: &Vocabulary) -> Vec<Value> {
    (0..vocabulary.tokens.len())
        .filter(|&id| vocabulary.is_special(id) || vocabulary.types[id] == TOKEN_USER_DEFINED)
        .map(|id| {
            json!({
                "id": id,
                "content": vocabulary.tokens[id],
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": vocabulary.is_special(id),
            })
        })
        .collect()
}

type Parts = (Value, Value, Value, FamilyDefaults);

fn byte_level_parts(metadata: &Metadata, vocabulary: &Vocabulary) -> Result<Parts, GgufErrorKind> {
    let pre_name = metadata.string("tokenizer.ggml.pre")?.unwrap_or("default");
    let family = PRE_TOKENIZERS
        .iter()
        .find(|family| family.names.contains(&pre_name))
        .unwrap_or_else(|| {
            // NOTE: llama.cpp falls back the same way; tokenization may differ from the
            // original model's for a pre-tokenizer missing from this table.
            tracing::warn!(
                pre = pre_name,
                "unknown pre-tokenizer; using llama.cpp's default regular expressions"
            );
            PRE_TOKENIZERS.last().expect("table ends with the default")
        });
    let merges = byte_level_merges(metadata)?;
    let mut steps: Vec<Value> = family
        .regexes
        .iter()
        .map(|regex| {
            json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
        })
        .collect();
    steps.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}));
    let model = json!({
        "type": "BPE",
        "dropout": null,
        "unk_token": null,
        "continuing_subword_prefix": null,
        "end_of_word_suffix": null,
        "fuse_unk": false,
        "byte_fallback": false,
        "ignore_merges": family.ignore_merges,
        "vocab": vocabulary.vocab_json(),
        "merges": merges,
    });
    let pre_tokenizer = json!({"type": "Sequence", "pretokenizers": steps});
    let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
    let defaults = FamilyDefaults {
        add_bos: family.add_bos,
        clean_spaces: family.clean_spaces,
        legacy: None,
    };
    Ok((model, pre_tokenizer, decoder, defaults))
}

/// Splits each `tokenizer.ggml.merges` entry at its first space after the first byte, as
/// llama.cpp does, into the pair form `tokenizer.json` accepts.
fn byte_level_merges(metadata: &Metadata) -> Result<Vec<Value>, GgufErrorKind> {
    let key = "tokenizer.ggml.merges";
    let Some(array) = metadata.array(key)? else {
        return Err(GgufErrorKind::MissingKey {
            key: key.into(),
            reason: ", needed for a gpt2 tokenizer".into(),
        });
    };
    let merges = array
        .as_strings()
        .ok_or_else(|| GgufErrorKind::InvalidKey {
            key: key.into(),
            message: "expected an array of strings".into(),
        })?;
    merges
        .iter()
        .enumerate()
        .map(|(index, merge)| {
            // A byte search, because the first token may start with a multi-byte character.
            let split = merge.bytes().skip(1).position(|b| b == b' ').map(|i| i + 1);
            match split {
                Some(at) => Ok(json!([&merge[..at], &merge[at + 1..]])),
                None => Err(GgufErrorKind::InvalidKey {
                    key: key.into(),
                    message: format!(
                        "merge {index} ({merge:?}) is not two tokens separated by a space"
                    ),
                }),
            }
        })
        .collect()
}

fn sentencepiece_parts(
    metadata: &Metadata,
    vocabulary: &Vocabulary,
) -> Result<Parts, GgufErrorKind> {
    let scores_key = "tokenizer.ggml.scores";
    let scores: Vec<f32> = match metadata.array(scores_key)? {
        None => vec![0.0; vocabulary.tokens.len()],
        Some(array) => array
            .as_f32s()
            .ok_or_else(|| GgufErrorKind::InvalidKey {
                key: scores_key.into(),
                message: "expected an array of f32".into(),
            })?
            .to_vec(),
    };
    if scores.len() != vocabulary.tokens.len() {
        return Err(GgufErrorKind::InvalidKey {
            key: scores_key.into(),
            message: format!(
                "has {} entries but there are {} tokens",
                scores.len(),
                vocabulary.tokens.len()
            ),
        });
    }

    let add_prefix = metadata
        .bool("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);
    let prepend = if add_prefix { "first" } else { "never" };
    // llama.cpp takes token 0 as the unknown token of a SentencePiece vocabulary by default.
    let unk = vocabulary.token(vocabulary.unk.or(Some(0)));
    let model = json!({
        "type": "BPE",
        "dropout": null,
        "unk_token": unk,
        "continuing_subword_prefix": null,
        "end_of_word_suffix": null,
        "fuse_unk": true,
        "byte_fallback": true,
        "ignore_merges": false,
        "vocab": vocabulary.vocab_json(),
        "merges": sentencepiece_merges(vocabulary, &scores)?,
    });

    let pre_tokenizer =
        json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": prepend, "split": false});
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let decoder = json!({"type": "Sequence", "decoders": decoders});
    let defaults = FamilyDefaults {
        add_bos: true,
        clean_spaces: false,
        legacy: Some(false),
    };
    Ok((model, pre_tokenizer, decoder, defaults))
}

/// Rebuilds BPE merges from SentencePiece scores: each way to split a normal token into two
/// tokens is a merge, ordered by the merged token's score (highest first), then by the ids of
/// the merged token and of its two halves. Fails on a mergeable token longer than
/// [`MAX_SENTENCEPIECE_TOKEN_BYTES`].
fn sentencepiece_merges(
    vocabulary: &Vocabulary,
    scores: &[f32],
) -> Result<Vec<Value>, GgufErrorKind> {
    let mergeable = |id: usize| {
        !matches!(
            vocabulary.types[id],
            TOKEN_CONTROL | TOKEN_UNKNOWN | TOKEN_BYTE
        )
    };
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(vocabulary.tokens.len());
    for (id, token) in vocabulary.tokens.iter().enumerate() {
        if mergeable(id) {
            ids.entry(token.as_str()).or_insert(id);
        }
    }
    let mut merges: Vec<(f32, usize, usize, usize, usize)> = Vec::new();
    for (id, token) in vocabulary.tokens.iter().enumerate() {
        if !mergeable(id) {
            continue;
        }
        if token.len() > MAX_SENTENCEPIECE_TOKEN_BYTES {
            return Err(GgufErrorKind::InvalidKey {
                key: "tokenizer.ggml.tokens".into(),
                message: format!(
                    "token {id} is {} bytes, above the limit of {MAX_SENTENCEPIECE_TOKEN_BYTES} \
                     bytes for a SentencePiece piece whose merges are rebuilt",
                    token.len()
                ),
            });
        }
        for (at, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(at);
            if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                merges.push((scores[id], id, l, r, at));
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then((a.1, a.2, a.3).cmp(&(b.1, b.2, b.3)))
    });
    Ok(merges
        .into_iter()
        .map(|(_, id, _, _, at)| {
            let (left, right) = vocabulary.tokens[id].split_at(at);
            json!([left, right])
        })
        .collect())
}

/// Builds the post-processor that adds bos and eos as the metadata sets. Byte-level models
/// that add neither keep the usual byte-level post-processor.
fn post_processor(
    vocabulary: &Vocabulary,
    add_bos: bool,
    add_eos: bool,
    byte_level: bool,
) -> Value {
    let bos = vocabulary.bos.filter(|_| add_bos);
    let eos = vocabulary.eos.filter(|_| add_eos);
    if bos.is_none() && eos.is_none() {
        return if byte_level {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        } else {
            Value::Null
        };
    }
    let special = |id: u64, type_id: u32| json!({"SpecialToken": {"id": vocabulary.tokens[id as usize], "type_id": type_id}});
    let sequence = |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();

    let mut special_tokens = Map::new();
    for id in [bos, eos].into_iter().flatten() {
        let text = &vocabulary.tokens[id as usize];
        special_tokens.insert(
            text.clone(),
            json!({"id": text, "ids": [id], "tokens": [text]}),
        );
    }
    if let Some(id) = bos {
        single.push(special(id, 0));
    }
    single.push(sequence("A", 0));
    if let Some(id) = eos {
        single.push(special(id, 0));
    }
    pair.extend(single.iter().cloned());
    if let Some(id) = bos {
        pair.push(special(id, 1));
    }
    pair.push(sequence("B", 1));
    if let Some(id) = eos {
        pair.push(special(id, 1));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens})
}

fn tokenizer_config(
    metadata: &Metadata,
    architecture: &str,
    vocabulary: &Vocabulary,
    add_bos: bool,
    add_eos: bool,
    defaults: FamilyDefaults,
) -> Result<Value, GgufErrorKind> {
    let mut config = Map::new();
    config.insert("add_bos_token".into(), json!(add_bos));
    config.insert("add_eos_token".into(), json!(add_eos));
    config.insert("bos_token".into(), vocabulary.token(vocabulary.bos));
    config.insert("eos_token".into(), vocabulary.token(vocabulary.eos));
    config.insert("pad_token".into(), vocabulary.token(vocabulary.pad));
    config.insert("unk_token".into(), vocabulary.token(vocabulary.unk));
    if let Some(template) = metadata.string("tokenizer.chat_template")? {
        config.insert("chat_template".into(), json!(template));
    }
    config.insert(
        "clean_up_tokenization_spaces".into(),
        json!(defaults.clean_spaces),
    );
    if let Some(legacy) = defaults.legacy {
        config.insert("legacy".into(), json!(legacy));
    }
    if let Some(length) = metadata.unsigned(&format!("{architecture}.context_length"))? {
        config.insert("model_max_length".into(), json!(length));
    }
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    Ok(Value::Object(config))
}
