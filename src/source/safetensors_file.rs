//! A single `.safetensors` file as a [`TensorSource`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{
    check_range, AuxFile, SourceError, SourceFile, SourceFormat, TensorInfo, TensorSource,
};
use crate::safetensors::{read_header, Header};

/// An open safetensors file with a validated header.
pub struct SafetensorsSource {
    path: PathBuf,
    file: File,
    file_bytes: u64,
    header: Header,
    tensors: Vec<TensorInfo>,
}

impl SafetensorsSource {
    /// Opens and validates a safetensors file.
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be read or breaks the format.
    pub fn open(path: &Path) -> Result<SafetensorsSource, SourceError> {
        let file = File::open(path).map_err(|e| SourceError::io(path, e))?;
        let file_bytes = file.metadata().map_err(|e| SourceError::io(path, e))?.len();
        let header = read_header(path, &file)?;
        let tensors = header.entries.iter().map(|e| e.info.clone()).collect();
        Ok(SafetensorsSource {
            path: path.to_path_buf(),
            file,
            file_bytes,
            header,
            tensors,
        })
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file size in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// Reads bytes of tensor `index` starting at `offset` within it.
    pub(crate) fn read_tensor(
        &self,
        index: usize,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), SourceError> {
        let entry = &self.header.entries[index];
        check_range(&entry.info, offset, buf.len())?;
        let position = self.header.data_start + entry.begin + offset;
        self.file
            .read_exact_at(buf, position)
            .map_err(|e| SourceError::io(&self.path, e))
    }
}

impl TensorSource for SafetensorsSource {
    fn format(&self) -> SourceFormat {
        SourceFormat::Safetensors
    }

    fn files(&self) -> Vec<SourceFile> {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        vec![SourceFile {
            path: name,
            bytes: self.file_bytes,
        }]
    }

    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn read_at(&self, index: usize, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.read_tensor(index, offset, buf)
    }

    fn aux_files(&self) -> Vec<AuxFile> {
        Vec::new()
    }
}
