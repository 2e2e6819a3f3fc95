//! Checking a chunked folder against its manifest.
//!
//! `verify` recomputes every chunk's sha256 and every tensor's logical sha256 in one read of
//! each chunk. It also checks what the manifest cannot check about itself: each chunk exists
//! inside the folder, has its recorded size, and stores each piece under the recorded key
//! and length. Every problem is collected and reported with the chunk and the tensors it
//! affects; one broken chunk does not stop the others from being checked.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::manifest::{Manifest, ManifestError};
use crate::reshard::{hex, with_threads, WriteError, BLOCK_BYTES};
use crate::safetensors::read_header;

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    /// The chunk involved, if any.
    pub chunk: Option<String>,
    /// Tensors affected.
    pub tensors: Vec<String>,
    /// Description of the problem, with numbers.
    pub message: String,
}

/// The outcome of a verification.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VerifyReport {
    /// The folder checked.
    pub dir: PathBuf,
    /// Chunk files checked.
    pub chunks: usize,
    /// Tensors checked.
    pub tensors: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Problems found; empty when the folder is intact.
    pub failures: Vec<Failure>,
}

impl VerifyReport {
    /// Returns whether everything matched.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Errors that stop verification before any chunk is checked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The manifest is missing or invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The thread pool could not be created.
    #[error(transparent)]
    Threads(#[from] WriteError),
}

/// Verifies a chunked folder using `threads` threads (`None`: one per core).
///
/// # Errors
///
/// Fails only when the manifest cannot be read or is invalid; mismatches are reported in
/// the returned [`VerifyReport`].
pub fn verify(dir: &Path, threads: Option<usize>) -> Result<VerifyReport, VerifyError> {
    let manifest = Manifest::read(dir)?;
    let root = dir.canonicalize().map_err(|source| ManifestError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let groups = connected_chunks(&manifest);
    let results: Vec<GroupResult> = with_threads(threads, || {
        groups
            .par_iter()
            .map(|group| verify_group(&manifest, &root, group))
            .collect()
    })?;
    let mut failures = Vec::new();
    let mut bytes = 0;
    for result in results {
        failures.extend(result.failures);
        bytes += result.bytes;
    }
    Ok(VerifyReport {
        dir: dir.to_path_buf(),
        chunks: manifest.chunks().len(),
        tensors: manifest.tensors().len(),
        bytes,
        failures,
    })
}

/// Groups chunk indices so that every tensor's pieces lie within one group.
fn connected_chunks(manifest: &Manifest) -> Vec<Vec<usize>> {
    let count = manifest.chunks().len();
    let mut parent: Vec<usize> = (0..count).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    for tensor in manifest.tensors() {
        for pair in tensor.pieces.windows(2) {
            let (a, b) = (
                find(&mut parent, pair[0].chunk),
                find(&mut parent, pair[1].chunk),
            );
            parent[a.max(b)] = a.min(b);
        }
    }
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for chunk in 0..count {
        let root = find(&mut parent, chunk);
        groups.entry(root).or_default().push(chunk);
    }
    let mut groups: Vec<Vec<usize>> = groups.into_values().collect();
    groups.sort();
    groups
}

struct GroupResult {
    failures: Vec<Failure>,
    bytes: u64,
}

/// A piece as found in a chunk: tensor index and byte range in the file.
struct FoundPiece {
    tensor: usize,
    start: u64,
    end: u64,
}

fn verify_group(manifest: &Manifest, root: &Path, group: &[usize]) -> GroupResult {
    let mut hashers: HashMap<usize, Sha256> = HashMap::new();
    let mut broken: BTreeSet<usize> = BTreeSet::new();
    let mut result = GroupResult {
        failures: Vec::new(),
        bytes: 0,
    };
    let tensors_in = |chunk: usize| -> Vec<usize> {
        (0..manifest.tensors().len())
            .filter(|&t| {
                manifest.tensors()[t]
                    .pieces
                    .iter()
                    .any(|p| p.chunk == chunk)
            })
            .collect()
    };
    for &chunk in group {
        let record = &manifest.chunks()[chunk];
        match check_chunk(manifest, root, chunk, &mut hashers) {
            Ok(read) => result.bytes += read,
            Err(message) => {
                let affected = tensors_in(chunk);
                broken.extend(affected.iter().copied());
                result.failures.push(Failure {
                    chunk: Some(record.path.clone()),
                    tensors: affected
                        .iter()
                        .map(|&t| manifest.tensors()[t].name.clone())
                        .collect(),
                    message,
                });
            }
        }
    }
    let mut finished: Vec<usize> = hashers.keys().copied().collect();
    finished.sort_unstable();
    for tensor in finished {
        let hasher = hashers.remove(&tensor).expect("key listed above");
        let record = &manifest.tensors()[tensor];
        if broken.contains(&tensor) {
            continue;
        }
        let found = hex(&hasher.finalize());
        if found != record.sha256 {
            result.failures.push(Failure {
                chunk: None,
                tensors: vec![record.name.clone()],
                message: format!(
                    "tensor {:?} has sha256 {found} but the manifest records {}",
                    record.name, record.sha256
                ),
            });
        }
    }
    result
}

/// Checks one chunk and feeds its pieces to the tensor hashers. Returns bytes read, or a
/// message saying what is wrong.
fn check_chunk(
    manifest: &Manifest,
    root: &Path,
    chunk: usize,
    hashers: &mut HashMap<usize, Sha256>,
) -> Result<u64, String> {
    let record = &manifest.chunks()[chunk];
    let path = root.join(&record.path);
    let resolved = path
        .canonicalize()
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if !resolved.starts_with(root) {
        return Err(format!(
            "{} resolves to {}, outside the folder",
            record.path,
            resolved.display()
        ));
    }
    let mut file = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let size = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
        .len();
    if size != record.bytes {
        return Err(format!(
            "{} is {size} bytes but the manifest records {}",
            record.path, record.bytes
        ));
    }
    let header = read_header(&path, &file).map_err(|e| e.to_string())?;
    let by_key: HashMap<&str, (u64, u64)> = header
        .entries
        .iter()
        .map(|e| {
            (
                e.info.name.as_str(),
                (header.data_start + e.begin, e.info.bytes),
            )
        })
        .collect();
    let mut pieces = Vec::new();
    for (tensor_index, tensor) in manifest.tensors().iter().enumerate() {
        for piece in tensor.pieces.iter().filter(|p| p.chunk == chunk) {
            let Some(&(start, bytes)) = by_key.get(piece.key.as_str()) else {
                return Err(format!(
                    "{} has no key {:?} for tensor {:?}",
                    record.path, piece.key, tensor.name
                ));
            };
            if bytes != piece.bytes {
                return Err(format!(
                    "key {:?} in {} holds {bytes} bytes but the manifest records {}",
                    piece.key, record.path, piece.bytes
                ));
            }
            pieces.push(FoundPiece {
                tensor: tensor_index,
                start,
                end: start + bytes,
            });
        }
    }
    pieces.sort_by_key(|p| p.start);
    let mut chunk_hasher = Sha256::new();
    let mut buffer = vec![0u8; BLOCK_BYTES.min(size.max(1)) as usize];
    let mut position = 0u64;
    while position < size {
        let take = buffer.len().min((size - position) as usize);
        file.read_exact(&mut buffer[..take])
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let block = &buffer[..take];
        chunk_hasher.update(block);
        let block_end = position + take as u64;
        for piece in pieces
            .iter()
            .filter(|p| p.start < block_end && p.end > position)
        {
            let from = piece.start.max(position) - position;
            let to = piece.end.min(block_end) - position;
            hashers
                .entry(piece.tensor)
                .or_default()
                .update(&block[from as usize..to as usize]);
        }
        position = block_end;
    }
    // Zero-byte pieces get no block; their tensors still need a (empty) hash.
    for piece in &pieces {
        hashers.entry(piece.tensor).or_default();
    }
    let found = hex(&chunk_hasher.finalize());
    if found != record.sha256 {
        return Err(format!(
            "{} has sha256 {found} but the manifest records {}",
            record.path, record.sha256
        ));
    }
    Ok(size)
}
