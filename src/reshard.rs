//! Writing chunked folders: the streaming writer shared by `reshard` and `quantize`.
//!
//! A [`TensorProducer`] supplies the output bytes of any row range of any output tensor; the
//! writer plans the chunks, then writes them in parallel. Chunks that share a cut tensor form
//! one *job*, written in order by one thread, so the tensor's sha256 can be computed while its
//! pieces are written. Separate jobs run in parallel. Each thread holds one buffer of at
//! most [`BLOCK_BYTES`] (or one row, if a row is larger), so peak memory is about
//! threads × max(block, row), whatever the model size. Hashes are computed on the bytes as
//! they are written; nothing is read back.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::manifest::{
    self, ChunkRecord, Manifest, ManifestFile, PieceRecord, SourceRecord, TensorRecord,
};
use crate::output::{io_error, OutputError, StagedDir};
use crate::plan::{plan, Plan, PlanError, PlanOptions, PlannedChunk};
use crate::source::{AuxContent, AuxFile, SourceError, TensorInfo, TensorSource};

/// Largest buffer a writer thread fills at once: 8 MiB, large enough that sequential reads
/// and writes run at disk speed, small enough to keep peak memory flat.
pub const BLOCK_BYTES: u64 = 8 << 20;

/// Supplies the bytes of output tensors, row range by row range.
pub trait TensorProducer: Sync {
    /// Output tensors in order.
    fn tensors(&self) -> &[TensorInfo];

    /// A note recorded in the manifest for tensor `index` (for example a quantization
    /// fallback), if any.
    fn note(&self, _index: usize) -> Option<String> {
        None
    }

    /// Fills `out` with the output bytes of rows `[rows[0], rows[1])` of tensor `index`.
    /// For a tensor whose rows are not whole blocks, the range is always the whole tensor.
    ///
    /// # Errors
    ///
    /// Fails when the input cannot be read or converted.
    fn produce(&self, index: usize, rows: [u64; 2], out: &mut [u8]) -> Result<(), WriteError>;
}

/// Copies tensors from a source unchanged.
pub struct CopyProducer<'a> {
    source: &'a dyn TensorSource,
}

impl<'a> CopyProducer<'a> {
    /// Wraps a source.
    pub fn new(source: &'a dyn TensorSource) -> CopyProducer<'a> {
        CopyProducer { source }
    }
}

impl TensorProducer for CopyProducer<'_> {
    fn tensors(&self) -> &[TensorInfo] {
        self.source.tensors()
    }

    fn produce(&self, index: usize, rows: [u64; 2], out: &mut [u8]) -> Result<(), WriteError> {
        let info = &self.source.tensors()[index];
        let offset = match info.row_bytes() {
            Some(row_bytes) if !info.shape.is_empty() => rows[0] * row_bytes,
            _ => 0,
        };
        Ok(self.source.read_at(index, offset, out)?)
    }
}

/// Errors from writing a chunked folder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// Reading the input failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The tensors do not fit the ceiling.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Preparing or publishing the output failed.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// Converting a tensor failed.
    #[error("tensor {tensor:?}: {message}")]
    Convert {
        /// Tensor name.
        tensor: String,
        /// What went wrong, with numbers.
        message: String,
    },
    /// The thread pool could not be created.
    #[error("cannot start {threads} worker threads: {message}")]
    Threads {
        /// Requested count.
        threads: usize,
        /// The cause.
        message: String,
    },
}

/// Settings for writing a chunked folder.
#[derive(Clone, Copy, Debug)]
pub struct WriteOptions {
    /// Chunk ceiling and packing.
    pub plan: PlanOptions,
    /// Worker threads; `None` uses one per core.
    pub threads: Option<usize>,
    /// Replace an existing output.
    pub force: bool,
}

/// What a write produced.
#[derive(Clone, Debug)]
pub struct WriteSummary {
    /// The output folder.
    pub output: PathBuf,
    /// The manifest written.
    pub manifest: ManifestFile,
    /// Seconds from start to the rename.
    pub seconds: f64,
}

impl WriteSummary {
    /// Total bytes of all chunk files.
    pub fn chunk_bytes(&self) -> u64 {
        self.manifest.chunks.iter().map(|c| c.bytes).sum()
    }

    /// Names of tensors stored in more than one piece.
    pub fn cut_tensors(&self) -> Vec<&str> {
        self.manifest
            .tensors
            .iter()
            .filter(|t| t.pieces.len() > 1)
            .map(|t| t.name.as_str())
            .collect()
    }
}

/// Runs `work` on a pool of `threads` threads, or rayon's global pool.
pub fn with_threads<T: Send>(
    threads: Option<usize>,
    work: impl FnOnce() -> T + Send,
) -> Result<T, WriteError> {
    match threads {
        None => Ok(work()),
        Some(count) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(count)
                .build()
                .map_err(|e| WriteError::Threads {
                    threads: count,
                    message: e.to_string(),
                })?;
            Ok(pool.install(work))
        }
    }
}

/// Plans and writes a chunked folder at `output` from `producer`, with `source` recorded as
/// its origin and `aux_files` copied beside it. `progress` receives the bytes written so far.
///
/// # Errors
///
/// Fails before writing anything when the plan is impossible or the output exists (without
/// `force`); fails without leaving a partial output when writing fails.
pub fn write_chunked(
    producer: &dyn TensorProducer,
    source: SourceRecord,
    aux_files: &[AuxFile],
    output: &Path,
    options: WriteOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<WriteSummary, WriteError> {
    let started = Instant::now();
    let plan = plan(producer.tensors(), options.plan)?;
    let staged = StagedDir::create(output, options.force)?;
    let chunks_dir = staged.path().join("chunks");
    std::fs::create_dir(&chunks_dir).map_err(io_error("cannot create", &chunks_dir))?;

    let written = AtomicU64::new(0);
    let report = |bytes: u64| progress(written.fetch_add(bytes, Ordering::Relaxed) + bytes);
    let jobs = jobs(&plan);
    let results: Vec<Result<JobResult, WriteError>> = with_threads(options.threads, || {
        jobs.par_iter()
            .map(|range| write_job(producer, &plan, range.clone(), &chunks_dir, &report))
            .collect()
    })?;
    let mut chunk_hashes = vec![String::new(); plan.chunks.len()];
    let mut tensor_hashes = vec![String::new(); producer.tensors().len()];
    for result in results {
        let result = result?;
        for (index, hash) in result.chunks {
            chunk_hashes[index] = hash;
        }
        for (index, hash) in result.tensors {
            tensor_hashes[index] = hash;
        }
    }

    for aux in aux_files {
        write_aux(staged.path(), aux)?;
    }
    let manifest = build_manifest(
        producer,
        &plan,
        source,
        options.plan.max_chunk_bytes,
        chunk_hashes,
        tensor_hashes,
    );
    let manifest =
        Manifest::validate(Path::new(manifest::MANIFEST_FILE), manifest).map_err(|e| {
            WriteError::Convert {
                tensor: String::new(),
                message: format!("internal error: the written manifest is invalid: {e}"),
            }
        })?;
    let manifest_path = staged.path().join(manifest::MANIFEST_FILE);
    write_synced(&manifest_path, &manifest.to_json())?;
    let output = staged.commit()?;
    Ok(WriteSummary {
        output,
        manifest: manifest.file().clone(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let mut file = File::create(path).map_err(io_error("cannot create", path))?;
    file.write_all(bytes)
        .map_err(io_error("cannot write", path))?;
    file.sync_all().map_err(io_error("cannot sync", path))?;
    Ok(())
}

fn write_aux(dir: &Path, aux: &AuxFile) -> Result<(), WriteError> {
    let target = dir.join(&aux.name);
    match &aux.content {
        AuxContent::Copy(from) => {
            std::fs::copy(from, &target).map_err(io_error("cannot copy", from))?;
        }
        AuxContent::Bytes(bytes) => write_synced(&target, bytes)?,
    }
    Ok(())
}

/// Relative path of chunk `index`.
pub fn chunk_path(index: usize) -> String {
    format!("chunks/{index:05}.safetensors")
}

/// Splits the chunks into runs that share no tensor with any other run.
fn jobs(plan: &Plan) -> Vec<std::ops::Range<usize>> {
    let mut jobs = Vec::new();
    let mut start = 0;
    for index in 1..=plan.chunks.len() {
        let shares_with_next = index < plan.chunks.len() && {
            let last = plan.chunks[index - 1].pieces.last().map(|p| p.tensor);
            let first = plan.chunks[index].pieces.first().map(|p| p.tensor);
            last.is_some() && last == first
        };
        if !shares_with_next {
            jobs.push(start..index);
            start = index;
        }
    }
    jobs
}

struct JobResult {
    chunks: Vec<(usize, String)>,
    tensors: Vec<(usize, String)>,
}

fn write_job(
    producer: &dyn TensorProducer,
    plan: &Plan,
    range: std::ops::Range<usize>,
    chunks_dir: &Path,
    report: &(dyn Fn(u64) + Sync),
) -> Result<JobResult, WriteError> {
    let mut tensor_hashers: HashMap<usize, Sha256> = HashMap::new();
    let mut result = JobResult {
        chunks: Vec::new(),
        tensors: Vec::new(),
    };
    let mut buffer = Vec::new();
    for index in range {
        let chunk = &plan.chunks[index];
        let path = chunks_dir.join(format!("{index:05}.safetensors"));
        let hash = write_chunk(
            producer,
            chunk,
            &path,
            &mut buffer,
            &mut tensor_hashers,
            report,
        )?;
        result.chunks.push((index, hash));
        for piece in &chunk.pieces {
            let last = plan.tensor_pieces[piece.tensor].last()
                == Some(&(index, position(chunk, piece.tensor)));
            if last {
                let hasher = tensor_hashers.remove(&piece.tensor).unwrap_or_default();
                result.tensors.push((piece.tensor, hex(&hasher.finalize())));
            }
        }
    }
    Ok(result)
}

fn position(chunk: &PlannedChunk, tensor: usize) -> usize {
    chunk
        .pieces
        .iter()
        .position(|p| p.tensor == tensor)
        .expect("tensor is in chunk")
}

fn write_chunk(
    producer: &dyn TensorProducer,
    chunk: &PlannedChunk,
    path: &Path,
    buffer: &mut Vec<u8>,
    tensor_hashers: &mut HashMap<usize, Sha256>,
    report: &(dyn Fn(u64) + Sync),
) -> Result<String, WriteError> {
    let mut file = File::create(path).map_err(io_error("cannot create", path))?;
    let mut chunk_hasher = Sha256::new();
    let header = chunk.header();
    file.write_all(&header)
        .map_err(io_error("cannot write", path))?;
    chunk_hasher.update(&header);
    report(header.len() as u64);
    for piece in &chunk.pieces {
        let info = &producer.tensors()[piece.tensor];
        let tensor_hasher = tensor_hashers.entry(piece.tensor).or_default();
        for rows in row_blocks(info, piece.rows) {
            let bytes = block_bytes(info, rows);
            buffer.resize(bytes as usize, 0);
            producer.produce(piece.tensor, rows, buffer)?;
            // Writing and the two hashes only read the block, so they run side by side and
            // take the time of the slowest rather than the sum.
            let block = &buffer[..];
            let (written, ()) = rayon::join(
                || file.write_all(block),
                || {
                    rayon::join(
                        || chunk_hasher.update(block),
                        || tensor_hasher.update(block),
                    );
                },
            );
            written.map_err(io_error("cannot write", path))?;
            report(bytes);
        }
    }
    file.sync_all().map_err(io_error("cannot sync", path))?;
    Ok(hex(&chunk_hasher.finalize()))
}

/// Splits a piece's rows into blocks of at most [`BLOCK_BYTES`] (at least one row each).
fn row_blocks(info: &TensorInfo, rows: [u64; 2]) -> Vec<[u64; 2]> {
    let Some(row_bytes) = info
        .row_bytes()
        .filter(|&b| b > 0 && !info.shape.is_empty())
    else {
        return vec![rows];
    };
    let per_block = (BLOCK_BYTES / row_bytes).max(1);
    let mut blocks = Vec::new();
    let mut start = rows[0];
    while start < rows[1] {
        let end = (start + per_block).min(rows[1]);
        blocks.push([start, end]);
        start = end;
    }
    blocks
}

fn block_bytes(info: &TensorInfo, rows: [u64; 2]) -> u64 {
    match info.row_bytes() {
        Some(row_bytes) if !info.shape.is_empty() => (rows[1] - rows[0]) * row_bytes,
        _ => info.bytes,
    }
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn build_manifest(
    producer: &dyn TensorProducer,
    plan: &Plan,
    source: SourceRecord,
    max_chunk_bytes: u64,
    chunk_hashes: Vec<String>,
    tensor_hashes: Vec<String>,
) -> ManifestFile {
    let chunks = plan
        .chunks
        .iter()
        .zip(chunk_hashes)
        .enumerate()
        .map(|(index, (chunk, sha256))| ChunkRecord {
            path: chunk_path(index),
            bytes: chunk.bytes,
            sha256,
        })
        .collect();
    let tensors = producer
        .tensors()
        .iter()
        .zip(tensor_hashes)
        .enumerate()
        .map(|(index, (info, sha256))| TensorRecord {
            name: info.name.clone(),
            dtype: info.dtype,
            shape: info.shape.clone(),
            bytes: info.bytes,
            sha256,
            note: producer.note(index),
            pieces: plan.tensor_pieces[index]
                .iter()
                .map(|&(chunk, position)| {
                    let piece = &plan.chunks[chunk].pieces[position];
                    PieceRecord {
                        chunk,
                        key: piece.key.clone(),
                        rows: piece.rows,
                        bytes: piece.bytes,
                    }
                })
                .collect(),
        })
        .collect();
    ManifestFile {
        format: manifest::FORMAT_NAME.to_string(),
        version: manifest::current_version(),
        max_chunk_bytes,
        source,
        tensors,
        chunks,
    }
}

/// Opens `input`, checks that `output` does not overlap it, and writes the chunked layout.
///
/// # Errors
///
/// Fails on invalid input, an impossible plan, an existing output without `force`, or a
/// write failure.
pub fn reshard(
    input: &Path,
    output: &Path,
    options: WriteOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<WriteSummary, WriteError> {
    crate::output::check_not_overlapping(output, input)?;
    let source = crate::source::open(input)?;
    let record = SourceRecord {
        format: source.format(),
        files: source.files(),
    };
    write_chunked(
        &CopyProducer::new(source.as_ref()),
        record,
        &source.aux_files(),
        output,
        options,
        progress,
    )
}

/// Plans without writing, for `--dry-run`.
///
/// # Errors
///
/// Fails on invalid input or an impossible plan.
pub fn dry_run(input: &Path, options: PlanOptions) -> Result<(Vec<TensorInfo>, Plan), WriteError> {
    let source = crate::source::open(input)?;
    let tensors = source.tensors().to_vec();
    let plan = plan(&tensors, options)?;
    Ok((tensors, plan))
}
