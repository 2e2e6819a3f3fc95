//! The auxiliary files a GGUF input brings to a chunked folder.
//!
//! `config.json`, `generation_config.json`, `tokenizer.json` and `tokenizer_config.json` let
//! Hugging Face tooling and the engine use the model. `gguf_metadata.json` records every
//! original key so that export can write the metadata back unchanged. A config or tokenizer
//! for an architecture or tokenizer model without a derivation is left out with a warning.

use serde_json::Value;

use super::config::{derive_config, derive_generation_config};
use super::error::GgufErrorKind;
use super::metadata_json::{self, METADATA_FILE};
use super::tokenizer::derive_tokenizer;
use super::value::Metadata;
use crate::source::{AuxContent, AuxFile, TensorInfo};

/// Builds the auxiliary files for a GGUF input.
///
/// # Errors
///
/// Fails when a metadata value the files need is missing or has the wrong type.
pub fn derive_aux_files(
    metadata: &Metadata,
    architecture: &str,
    tensors: &[TensorInfo],
) -> Result<Vec<AuxFile>, GgufErrorKind> {
    let mut files = Vec::new();
    match derive_config(metadata, architecture, tensors)? {
        Some(config) => files.push(json_file("config.json", &config)),
        None => tracing::warn!(
            architecture,
            "no config.json derivation for this architecture"
        ),
    }
    files.push(json_file(
        "generation_config.json",
        &derive_generation_config(metadata)?,
    ));
    if let Some(tokenizer) = derive_tokenizer(metadata, architecture)? {
        files.push(json_file("tokenizer.json", &tokenizer.tokenizer));
        files.push(json_file("tokenizer_config.json", &tokenizer.config));
    }
    files.push(AuxFile {
        name: METADATA_FILE.into(),
        content: AuxContent::Bytes(metadata_json::to_json(metadata)),
    });
    Ok(files)
}

/// Serializes a JSON file as pretty JSON with a trailing newline.
fn json_file(name: &str, value: &Value) -> AuxFile {
    let mut bytes = serde_json::to_vec_pretty(value).expect("JSON values serialize");
    bytes.push(b'\n');
    AuxFile {
        name: name.into(),
        content: AuxContent::Bytes(bytes),
    }
}
