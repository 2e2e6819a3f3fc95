//! Output folders and files that appear atomically.
//!
//! Everything is written into a hidden sibling of the target (`.NAME.shardkit-tmp-PID`),
//! each file synced, the folder synced, and then renamed onto the target in one step. A run
//! killed part way leaves only the hidden sibling, which no reader mistakes for output and
//! the next run removes once its process is gone. Replacing an existing target (`--force`)
//! moves the old one aside first and deletes it only after the new one is in place.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

const TEMP_MARKER: &str = ".shardkit-tmp-";

/// Errors from preparing or publishing an output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    /// The target exists and replacing it was not requested.
    #[error("{path} already exists; pass --force to replace it")]
    Exists {
        /// The target.
        path: PathBuf,
    },
    /// The target would overlap the input.
    #[error("output {output} overlaps the input {input}; choose an output outside the input")]
    OverlapsInput {
        /// The target.
        output: PathBuf,
        /// The input.
        input: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> OutputError + 'a {
    move |source| OutputError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Resolves a path that may not exist yet: its parent canonicalized, then its file name.
fn resolve_target(path: &Path) -> Result<PathBuf, OutputError> {
    let name = path.file_name().ok_or_else(|| OutputError::Io {
        action: "cannot use",
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the output path has no file name",
        ),
    })?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = parent
        .canonicalize()
        .map_err(io_error("cannot find the folder of", path))?;
    Ok(parent.join(name))
}

/// Rejects an output equal to, inside, or containing `input`.
///
/// # Errors
///
/// [`OutputError::OverlapsInput`] when they overlap.
pub fn check_not_overlapping(output: &Path, input: &Path) -> Result<(), OutputError> {
    let output = resolve_target(output)?;
    let input = input
        .canonicalize()
        .map_err(io_error("cannot find", input))?;
    if output.starts_with(&input) || input.starts_with(&output) {
        return Err(OutputError::OverlapsInput { output, input });
    }
    Ok(())
}

/// A hidden sibling folder that becomes the target on [`StagedDir::commit`] and is removed
/// if dropped uncommitted.
pub struct StagedDir {
    target: PathBuf,
    temp: PathBuf,
    force: bool,
    committed: bool,
}

fn temp_sibling(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}{TEMP_MARKER}{}", std::process::id()))
}

/// Removes hidden siblings of `target` left by processes that no longer run.
fn remove_stale_siblings(target: &Path) {
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return;
    };
    let prefix = format!(".{}{TEMP_MARKER}", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(path = %entry.path().display(), "removing output left by an interrupted run");
            let _ = fs::remove_dir_all(entry.path()).or_else(|_| fs::remove_file(entry.path()));
        }
    }
}

impl StagedDir {
    /// Prepares a staging folder for `target`.
    ///
    /// # Errors
    ///
    /// Fails when the target exists and `force` is false, or the folder cannot be created.
    pub fn create(target: &Path, force: bool) -> Result<StagedDir, OutputError> {
        let target = resolve_target(target)?;
        if target.exists() && !force {
            return Err(OutputError::Exists { path: target });
        }
        remove_stale_siblings(&target);
        let temp = temp_sibling(&target);
        if temp.exists() {
            fs::remove_dir_all(&temp).map_err(io_error("cannot remove", &temp))?;
        }
        fs::create_dir(&temp).map_err(io_error("cannot create", &temp))?;
        Ok(StagedDir {
            target,
            temp,
            force,
            committed: false,
        })
    }

    /// The staging folder to write into.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// The final location.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Syncs the staging folder and renames it onto the target.
    ///
    /// # Errors
    ///
    /// Fails when syncing or renaming fails; the staging folder is then removed.
    pub fn commit(mut self) -> Result<PathBuf, OutputError> {
        sync_tree(&self.temp)?;
        let old = self.target.with_file_name(format!(
            ".{}.shardkit-old-{}",
            self.target
                .file_name()
                .unwrap_or_default()
                .to_string_lossy(),
            std::process::id()
        ));
        let replacing = self.force && fs::symlink_metadata(&self.target).is_ok();
        if replacing {
            fs::rename(&self.target, &old).map_err(io_error("cannot move aside", &self.target))?;
        }
        if let Err(error) = fs::rename(&self.temp, &self.target) {
            if replacing {
                let _ = fs::rename(&old, &self.target);
            }
            return Err(io_error("cannot rename output to", &self.target)(error));
        }
        self.committed = true;
        sync_parent(&self.target)?;
        if replacing {
            let removed = fs::remove_dir_all(&old).or_else(|_| fs::remove_file(&old));
            removed.map_err(io_error("cannot remove the replaced output", &old))?;
        }
        Ok(self.target.clone())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.temp);
        }
    }
}

/// Syncs every file in a folder tree, then each folder.
fn sync_tree(dir: &Path) -> Result<(), OutputError> {
    for entry in fs::read_dir(dir).map_err(io_error("cannot list", dir))? {
        let entry = entry.map_err(io_error("cannot list", dir))?;
        let path = entry.path();
        if entry
            .file_type()
            .map_err(io_error("cannot stat", &path))?
            .is_dir()
        {
            sync_tree(&path)?;
        } else {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_error("cannot sync", &path))?;
        }
    }
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_error("cannot sync", dir))
}

fn sync_parent(path: &Path) -> Result<(), OutputError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    File::open(parent)
        .and_then(|f| f.sync_all())
        .map_err(io_error("cannot sync", parent))
}

/// Writes `bytes` to `path` atomically: a hidden sibling, synced, then renamed.
///
/// # Errors
///
/// Fails when writing, syncing or renaming fails; no partial file is left at `path`.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let mut staged = StagedFile::create(path)?;
    staged
        .file()
        .write_all(bytes)
        .map_err(io_error("cannot write", path))?;
    staged.commit()
}

/// A hidden sibling file that becomes the target on [`StagedFile::commit`].
pub struct StagedFile {
    target: PathBuf,
    temp: PathBuf,
    file: Option<File>,
}

impl StagedFile {
    /// Creates the hidden sibling of `target`, replacing a stale one.
    ///
    /// # Errors
    ///
    /// Fails when the sibling cannot be created.
    pub fn create(target: &Path) -> Result<StagedFile, OutputError> {
        let target = resolve_target(target)?;
        remove_stale_siblings(&target);
        let temp = temp_sibling(&target);
        let file = File::create(&temp).map_err(io_error("cannot create", &temp))?;
        Ok(StagedFile {
            target,
            temp,
            file: Some(file),
        })
    }

    /// The open file to write into.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is open until commit")
    }

    /// Syncs and renames onto the target.
    ///
    /// # Errors
    ///
    /// Fails when syncing or renaming fails; the sibling is then removed.
    pub fn commit(mut self) -> Result<(), OutputError> {
        let file = self.file.take().expect("file is open until commit");
        file.sync_all()
            .map_err(io_error("cannot sync", &self.temp))?;
        drop(file);
        fs::rename(&self.temp, &self.target)
            .map_err(io_error("cannot rename output to", &self.target))?;
        sync_parent(&self.target)
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if self.file.is_some() || self.temp.exists() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}
