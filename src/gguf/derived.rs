//! Files derived from GGUF metadata for a chunked folder.

use super::error::GgufErrorKind;
use super::value::Metadata;
use crate::source::{AuxFile, TensorInfo};

/// Builds the auxiliary files for a GGUF input.
///
/// # Errors
///
/// Fails when a metadata value the files need has the wrong type.
pub fn derive_aux_files(
    _metadata: &Metadata,
    _architecture: &str,
    _tensors: &[TensorInfo],
) -> Result<Vec<AuxFile>, GgufErrorKind> {
    Ok(Vec::new())
}
