//! Writing GGUF files: version 3, little-endian, each tensor's data aligned.
//!
//! The header is built in memory (metadata and tensor infos are small next to the data).
//! Tensor data is streamed through one buffer of at most [`COPY_BUFFER_BYTES`], so a tensor
//! is never held whole. Output goes to a temporary file beside the target, which is synced
//! and then renamed, so a reader never sees a half-written file under the final name.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::error::{GgufError, GgufErrorKind};
use super::header::{align_up, GGUF_MAGIC};
use super::value::{encode_entry, encode_string, Metadata};
use crate::dtype::DType;

/// Version written.
pub const GGUF_VERSION: u32 = 3;

/// Largest buffer used to copy tensor data, 8 MiB.
pub const COPY_BUFFER_BYTES: usize = 8 << 20;

/// Maximum tensor name length llama.cpp accepts, in bytes, not counting the terminating NUL
/// (`GGML_MAX_NAME` is 64).
pub const MAX_NAME_BYTES: usize = 63;

/// One tensor to write, in GGUF terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// GGUF name.
    pub name: String,
    /// Dimensions in ggml order (row length first).
    pub dims: Vec<u64>,
    /// Element type; it must have a ggml id.
    pub dtype: DType,
    /// Length of the data in bytes.
    pub bytes: u64,
}

/// A header ready to write, with each tensor's data offset (relative to the data section).
#[derive(Clone, Debug)]
pub struct EncodedHeader {
    /// The header bytes, padded to the alignment.
    pub bytes: Vec<u8>,
    /// Data offset of each tensor, in the order given.
    pub offsets: Vec<u64>,
    /// Total length of the data section, the last tensor padded to the alignment.
    pub data_bytes: u64,
}

/// Encodes a version 3 header with `metadata` and tensor infos whose offsets place each
/// tensor at the next multiple of `alignment`.
///
/// # Errors
///
/// Fails when a dtype has no ggml id or a name is longer than [`MAX_NAME_BYTES`].
pub fn encode_header(
    metadata: &Metadata,
    tensors: &[TensorEntry],
    alignment: u64,
) -> Result<EncodedHeader, GgufErrorKind> {
    let mut bytes = GGUF_MAGIC.to_vec();
    bytes.extend_from_slice(&GGUF_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata.iter() {
        encode_entry(&mut bytes, key, value);
    }

    let mut offsets = Vec::with_capacity(tensors.len());
    let mut next = 0u64;
    for tensor in tensors {
        let export_error = |message: String| GgufErrorKind::Export {
            tensor: tensor.name.clone(),
            message,
        };
        let type_id = tensor
            .dtype
            .ggml_id()
            .ok_or_else(|| export_error(format!("{} has no GGUF type", tensor.dtype)))?;
        if tensor.name.len() > MAX_NAME_BYTES {
            return Err(export_error(format!(
                "name is {} bytes, longer than llama.cpp's limit of {MAX_NAME_BYTES}",
                tensor.name.len()
            )));
        }
        encode_string(&mut bytes, &tensor.name);
        bytes.extend_from_slice(&(tensor.dims.len() as u32).to_le_bytes());
        for dim in &tensor.dims {
            bytes.extend_from_slice(&dim.to_le_bytes());
        }
        bytes.extend_from_slice(&type_id.to_le_bytes());
        bytes.extend_from_slice(&next.to_le_bytes());
        offsets.push(next);
        next = align_up(next + tensor.bytes, alignment).expect("sizes fit in u64");
    }
    let padded = align_up(bytes.len() as u64, alignment).expect("header fits in u64");
    bytes.resize(padded as usize, 0);
    Ok(EncodedHeader {
        bytes,
        offsets,
        data_bytes: next,
    })
}

/// A GGUF file being written to a temporary path beside its target.
pub struct PendingFile {
    target: PathBuf,
    temporary: PathBuf,
    writer: Option<BufWriter<File>>,
    committed: bool,
}

impl PendingFile {
    /// Creates the temporary file for `target`.
    ///
    /// # Errors
    ///
    /// Fails when the temporary file cannot be created.
    pub fn create(target: &Path) -> Result<PendingFile, GgufError> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output.gguf".into());
        let temporary = target.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)
            .map_err(|e| GgufError::new(&temporary, e.into()))?;
        Ok(PendingFile {
            target: target.to_path_buf(),
            temporary,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
            committed: false,
        })
    }

    /// Returns the final path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Writes the header, then each tensor's data through `fill(index, offset, buffer)`,
    /// which must fill the buffer with the tensor's bytes from `offset`. Pads to the
    /// alignment after each tensor and syncs the file.
    ///
    /// # Errors
    ///
    /// Fails on a write error or an error from `fill`.
    pub fn write(
        &mut self,
        header: &EncodedHeader,
        tensors: &[TensorEntry],
        mut fill: impl FnMut(usize, u64, &mut [u8]) -> Result<(), GgufError>,
    ) -> Result<(), GgufError> {
        let io = |e: std::io::Error| GgufError::new(&self.temporary, e.into());
        let writer = self.writer.as_mut().expect("written once");
        writer.write_all(&header.bytes).map_err(io)?;
        let largest = tensors.iter().map(|t| t.bytes).max().unwrap_or(0);
        let mut buffer = vec![0u8; (largest as usize).min(COPY_BUFFER_BYTES)];
        let mut position = 0u64;
        for (index, tensor) in tensors.iter().enumerate() {
            let padding = header.offsets[index] - position;
            writer.write_all(&vec![0u8; padding as usize]).map_err(io)?;
            let mut done = 0u64;
            while done < tensor.bytes {
                let take = (tensor.bytes - done).min(buffer.len() as u64) as usize;
                fill(index, done, &mut buffer[..take])?;
                writer.write_all(&buffer[..take]).map_err(io)?;
                done += take as u64;
            }
            position = header.offsets[index] + tensor.bytes;
        }
        writer
            .write_all(&vec![0u8; (header.data_bytes - position) as usize])
            .map_err(io)?;
        let file = self
            .writer
            .take()
            .expect("written once")
            .into_inner()
            .map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(())
    }

    /// Renames the synced temporary file to its target and syncs the folder.
    ///
    /// # Errors
    ///
    /// Fails when the rename fails.
    pub fn commit(mut self) -> Result<PathBuf, GgufError> {
        std::fs::rename(&self.temporary, &self.target)
            .map_err(|e| GgufError::new(&self.target, e.into()))?;
        if let Some(dir) = self.target.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Syncing the folder makes the rename durable. Some filesystems do not allow
            // opening a folder for this, and that does not make the written file invalid.
            if let Ok(handle) = File::open(dir) {
                let _ = handle.sync_all();
            }
        }
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for PendingFile {
    /// Removes the temporary file when the write was abandoned.
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::header::parse_header;
    use crate::gguf::value::MetadataValue;

    #[test]
    fn written_header_parses_back() {
        let mut metadata = Metadata::new();
        metadata.insert(
            "general.architecture",
            MetadataValue::String("llama".into()),
        );
        let tensors = vec![
            TensorEntry {
                name: "a".into(),
                dims: vec![3],
                dtype: DType::F32,
                bytes: 12,
            },
            TensorEntry {
                name: "b".into(),
                dims: vec![32, 2],
                dtype: DType::F16,
                bytes: 128,
            },
        ];
        let header = encode_header(&metadata, &tensors, 32).unwrap();
        assert_eq!(header.offsets, [0, 32]);
        assert_eq!(header.data_bytes, 160);
        let mut file = header.bytes.clone();
        file.resize(file.len() + header.data_bytes as usize, 0);
        let parsed = parse_header(file.as_slice(), file.len() as u64).unwrap();
        assert_eq!(parsed.metadata, metadata);
        assert_eq!(parsed.tensors[1].name, "b");
        assert_eq!(parsed.tensors[1].offset, 32);
        assert_eq!(parsed.data_start, header.bytes.len() as u64);
    }

    #[test]
    fn long_names_and_storage_only_types_are_rejected() {
        let metadata = Metadata::new();
        let long = TensorEntry {
            name: "x".repeat(64),
            dims: vec![1],
            dtype: DType::F32,
            bytes: 4,
        };
        let message = encode_header(&metadata, &[long], 32)
            .unwrap_err()
            .to_string();
        assert!(message.contains("64 bytes"), "{message}");
        let boolean = TensorEntry {
            name: "mask".into(),
            dims: vec![1],
            dtype: DType::BOOL,
            bytes: 1,
        };
        let message = encode_header(&metadata, &[boolean], 32)
            .unwrap_err()
            .to_string();
        assert!(message.contains("BOOL has no GGUF type"), "{message}");
    }
}
