//! A Hugging Face model folder as a [`TensorSource`]: either one `model.safetensors`, or
//! shards listed by `model.safetensors.index.json`.
//!
//! The index is checked against the shards before anything is read: every file it names
//! exists inside the folder, every tensor it names is in the shard it points to, no shard
//! holds a tensor the index does not list, and no name appears in two shards. Other files in
//! the folder (config, tokenizer, chat templates) are carried along as auxiliary files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use super::safetensors_file::SafetensorsSource;
use super::{AuxContent, AuxFile, SourceError, SourceFile, SourceFormat, TensorInfo, TensorSource};

/// Name of the single-file checkpoint in a model folder.
pub const SINGLE_FILE: &str = "model.safetensors";

/// Name of the shard index in a model folder.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Largest index file accepted, 64 MiB; a 70B model's index is about 100 kB.
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// Files never carried into an output: the weights themselves and our own manifest.
fn is_weight_file(name: &str) -> bool {
    name.ends_with(".safetensors")
        || name == INDEX_FILE
        || name.ends_with(".bin")
        || name.ends_with(".pt")
        || name.ends_with(".pth")
        || name.ends_with(".gguf")
        || name == crate::manifest::MANIFEST_FILE
}

/// An open model folder.
pub struct HfFolderSource {
    dir: PathBuf,
    shards: Vec<(String, SafetensorsSource)>,
    /// For each tensor in `tensors`: shard index and entry index in that shard.
    locations: Vec<(usize, usize)>,
    tensors: Vec<TensorInfo>,
}

#[derive(serde::Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

impl HfFolderSource {
    /// Opens a model folder and validates it.
    ///
    /// # Errors
    ///
    /// Fails when neither `model.safetensors` nor an index exists, when the index names a
    /// missing or outside file or tensor, or when any shard is invalid.
    pub fn open(dir: &Path) -> Result<HfFolderSource, SourceError> {
        let index_path = dir.join(INDEX_FILE);
        let single_path = dir.join(SINGLE_FILE);
        let (shard_names, weight_map) = if index_path.is_file() {
            let weight_map = read_index(&index_path)?;
            let mut names: Vec<String> = weight_map.values().cloned().collect();
            names.sort();
            names.dedup();
            (names, Some(weight_map))
        } else if single_path.is_file() {
            (vec![SINGLE_FILE.to_string()], None)
        } else {
            return Err(SourceError::Unsupported {
                path: dir.to_path_buf(),
                message: format!(
                    "folder has neither {SINGLE_FILE}, {INDEX_FILE} nor {}",
                    crate::manifest::MANIFEST_FILE
                ),
            });
        };

        let mut shards = Vec::with_capacity(shard_names.len());
        for name in &shard_names {
            check_inside(&index_path, name)?;
            let path = dir.join(name);
            if !path.is_file() {
                return Err(SourceError::Index {
                    path: index_path.clone(),
                    message: format!("shard {name:?} named by the index does not exist"),
                });
            }
            shards.push((name.clone(), SafetensorsSource::open(&path)?));
        }

        let mut tensors = Vec::new();
        let mut locations = Vec::new();
        let mut owner: HashMap<&str, usize> = HashMap::new();
        for (shard_index, (shard_name, shard)) in shards.iter().enumerate() {
            for (entry_index, entry) in shard.header().entries.iter().enumerate() {
                let name = entry.info.name.as_str();
                if let Some(previous) = owner.insert(name, shard_index) {
                    return Err(SourceError::Index {
                        path: dir.to_path_buf(),
                        message: format!(
                            "tensor {name:?} is stored in both {:?} and {shard_name:?}",
                            shards[previous].0
                        ),
                    });
                }
                tensors.push(entry.info.clone());
                locations.push((shard_index, entry_index));
            }
        }
        if let Some(map) = &weight_map {
            for (info, &(shard_index, _)) in tensors.iter().zip(&locations) {
                let (name, shard_name) = (&info.name, &shards[shard_index].0);
                match map.get(name) {
                    Some(listed) if listed == shard_name => {}
                    Some(listed) => {
                        return Err(SourceError::Index {
                            path: index_path.clone(),
                            message: format!("tensor {name:?} is listed in shard {listed:?} but stored in {shard_name:?}"),
                        })
                    }
                    None => {
                        return Err(SourceError::Index {
                            path: index_path.clone(),
                            message: format!("tensor {name:?} in shard {shard_name:?} is not listed in the index"),
                        })
                    }
                }
            }
            for (name, shard_name) in map {
                if !owner.contains_key(name.as_str()) {
                    return Err(SourceError::Index {
                        path: index_path.clone(),
                        message: format!("tensor {name:?} is listed in shard {shard_name:?} but that shard does not contain it"),
                    });
                }
            }
        }
        Ok(HfFolderSource {
            dir: dir.to_path_buf(),
            shards,
            locations,
            tensors,
        })
    }
}

fn read_index(path: &Path) -> Result<BTreeMap<String, String>, SourceError> {
    let bytes = std::fs::metadata(path)
        .map_err(|e| SourceError::io(path, e))?
        .len();
    if bytes > MAX_INDEX_BYTES {
        return Err(SourceError::Index {
            path: path.to_path_buf(),
            message: format!(
                "index of {bytes} bytes is larger than the limit of {MAX_INDEX_BYTES}"
            ),
        });
    }
    let text = std::fs::read(path).map_err(|e| SourceError::io(path, e))?;
    let index: IndexFile = serde_json::from_slice(&text).map_err(|e| SourceError::Index {
        path: path.to_path_buf(),
        message: format!("invalid index JSON: {e}"),
    })?;
    Ok(index.weight_map)
}

/// Rejects shard names that would leave the model folder.
fn check_inside(index_path: &Path, name: &str) -> Result<(), SourceError> {
    let path = Path::new(name);
    let plain = path.components().all(|c| matches!(c, Component::Normal(_))) && !name.is_empty();
    if plain && !name.contains('\\') {
        return Ok(());
    }
    Err(SourceError::Index {
        path: index_path.to_path_buf(),
        message: format!("shard path {name:?} leaves the model folder"),
    })
}

impl TensorSource for HfFolderSource {
    fn format(&self) -> SourceFormat {
        SourceFormat::HfFolder
    }

    fn files(&self) -> Vec<SourceFile> {
        self.shards
            .iter()
            .map(|(name, shard)| SourceFile {
                path: name.clone(),
                bytes: shard.file_bytes(),
            })
            .collect()
    }

    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn read_at(&self, index: usize, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let (shard, entry) = self.locations[index];
        self.shards[shard].1.read_tensor(entry, offset, buf)
    }

    fn aux_files(&self) -> Vec<AuxFile> {
        list_aux_files(&self.dir)
    }
}

/// Lists the regular files in `dir` that are not weights, sorted by name. Symbolic links and
/// sub-folders are skipped, so nothing outside the folder is copied.
pub(crate) fn list_aux_files(dir: &Path) -> Vec<AuxFile> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<AuxFile> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            if is_weight_file(&name) || name.starts_with('.') {
                return None;
            }
            Some(AuxFile {
                name,
                content: AuxContent::Copy(entry.path()),
            })
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}
