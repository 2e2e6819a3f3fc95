//! Opening a GGUF file or a split set.
//!
//! llama.cpp splits a model into parts named `PREFIX-NNNNN-of-MMMMM.gguf` (numbers from 1,
//! five digits). Each part carries `split.no` (0-based), `split.count` and
//! `split.tensors.count`; the first part also carries the model's metadata. Opening the first
//! part finds the others beside it and checks that the set is complete and consistent.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::error::{GgufError, GgufErrorKind};
use super::header::{parse_header, GgufHeader};

/// Metadata key: 0-based index of this part.
pub const SPLIT_NO_KEY: &str = "split.no";
/// Metadata key: number of parts.
pub const SPLIT_COUNT_KEY: &str = "split.count";
/// Metadata key: number of tensors in the whole set.
pub const SPLIT_TENSORS_COUNT_KEY: &str = "split.tensors.count";

/// One open GGUF file with its validated header.
#[derive(Debug)]
pub struct GgufPart {
    /// The file path.
    pub path: PathBuf,
    /// The open file, read with positioned reads.
    pub file: File,
    /// The validated header.
    pub header: GgufHeader,
}

impl GgufPart {
    /// Opens one GGUF file and validates its header.
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be read or its header breaks a rule listed in
    /// [`super::header`].
    pub fn open(path: &Path) -> Result<GgufPart, GgufError> {
        let error = |kind| GgufError::new(path, kind);
        let file = File::open(path).map_err(|e| error(e.into()))?;
        let file_bytes = file.metadata().map_err(|e| error(e.into()))?.len();
        let header = parse_header(&file, file_bytes).map_err(error)?;
        Ok(GgufPart {
            path: path.to_path_buf(),
            file,
            header,
        })
    }

    fn split_value(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.header
            .metadata
            .unsigned(key)
            .map_err(|kind| GgufError::new(&self.path, kind))
    }
}

/// The parts of a split file name: prefix, 1-based part number, part count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitName {
    /// Everything before `-NNNNN-of-MMMMM.gguf`.
    pub prefix: String,
    /// The 1-based part number.
    pub number: u64,
    /// The number of parts.
    pub count: u64,
}

impl SplitName {
    /// Parses `PREFIX-NNNNN-of-MMMMM.gguf` (at least five digits each).
    pub fn parse(file_name: &str) -> Option<SplitName> {
        let stem = file_name.strip_suffix(".gguf")?;
        let (rest, count) = stem.rsplit_once("-of-")?;
        let (prefix, number) = rest.rsplit_once('-')?;
        let digits = |s: &str| s.len() >= 5 && s.bytes().all(|b| b.is_ascii_digit());
        if prefix.is_empty() || !digits(number) || !digits(count) {
            return None;
        }
        Some(SplitName {
            prefix: prefix.to_string(),
            number: number.parse().ok()?,
            count: count.parse().ok()?,
        })
    }

    /// Formats the file name of part `number` (1-based) of a set of `count` parts.
    pub fn file_name(prefix: &str, number: u64, count: u64) -> String {
        format!("{prefix}-{number:05}-of-{count:05}.gguf")
    }
}

/// Opens a GGUF file, or the whole split set when `path` is the first part of one.
///
/// # Errors
///
/// Fails when any part is invalid, when `path` is not the first part, or when parts are
/// missing (all missing names are listed). Also fails when the parts disagree on `split.*`
/// values, when a tensor name appears in two parts, or when a split part has been renamed or
/// joined with `cat`.
pub fn open_parts(path: &Path) -> Result<Vec<GgufPart>, GgufError> {
    let first = GgufPart::open(path)?;
    let count = first.split_value(SPLIT_COUNT_KEY)?.unwrap_or(1);
    if count <= 1 {
        return Ok(vec![first]);
    }
    let split_error = |message: String| GgufError::new(path, GgufErrorKind::Split(message));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(name) = SplitName::parse(&file_name) else {
        return Err(GgufError::new(
            path,
            GgufErrorKind::JoinedSplit {
                reason: format!(
                    "{SPLIT_COUNT_KEY} is {count} but the file name {file_name:?} does not \
                     follow PREFIX-NNNNN-of-NNNNN.gguf, so the file was renamed or built from \
                     joined parts"
                ),
            },
        ));
    };
    let number = first.split_value(SPLIT_NO_KEY)?.map(|n| n + 1);
    if number != Some(1) {
        return Err(split_error(format!(
            "this is part {} of a split set; open the first part, {}",
            number.map_or_else(|| format!("{SPLIT_NO_KEY} missing"), |n| n.to_string()),
            SplitName::file_name(&name.prefix, 1, count)
        )));
    }
    if name.number != 1 || name.count != count {
        return Err(split_error(format!(
            "the file name says part {} of {} but {SPLIT_NO_KEY} and {SPLIT_COUNT_KEY} say part 1 \
             of {count}",
            name.number, name.count
        )));
    }
    let total = first.split_value(SPLIT_TENSORS_COUNT_KEY)?.ok_or_else(|| {
        split_error(format!(
            "{SPLIT_COUNT_KEY} is {count} but {SPLIT_TENSORS_COUNT_KEY} is missing"
        ))
    })?;

    let dir = path.parent().unwrap_or(Path::new(""));
    let paths: Vec<PathBuf> = (2..=count)
        .map(|n| dir.join(SplitName::file_name(&name.prefix, n, count)))
        .collect();
    let missing: Vec<String> = paths
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        return Err(split_error(format!(
            "split set of {count} parts is incomplete; missing: {}",
            missing.join(", ")
        )));
    }

    let mut parts = vec![first];
    for (index, part_path) in paths.iter().enumerate() {
        let part = GgufPart::open(part_path)?;
        check_part(&part, index as u64 + 1, count, total)?;
        parts.push(part);
    }
    check_tensor_total(path, &parts, total)?;
    Ok(parts)
}

/// Checks a later part's `split.*` values against the first part's.
fn check_part(part: &GgufPart, split_no: u64, count: u64, total: u64) -> Result<(), GgufError> {
    let expected = [
        (SPLIT_NO_KEY, split_no),
        (SPLIT_COUNT_KEY, count),
        (SPLIT_TENSORS_COUNT_KEY, total),
    ];
    for (key, want) in expected {
        let found = part.split_value(key)?;
        if found != Some(want) {
            let found = found.map_or_else(|| "missing".to_string(), |v| v.to_string());
            return Err(GgufError::new(
                &part.path,
                GgufErrorKind::Split(format!(
                    "{key} is {found} but the set expects {want} for this part"
                )),
            ));
        }
    }
    Ok(())
}

fn check_tensor_total(path: &Path, parts: &[GgufPart], total: u64) -> Result<(), GgufError> {
    let mut names = HashSet::new();
    for part in parts {
        for tensor in &part.header.tensors {
            if !names.insert(tensor.name.as_str()) {
                return Err(GgufError::new(
                    &part.path,
                    GgufErrorKind::DuplicateTensor {
                        tensor: tensor.name.clone(),
                    },
                ));
            }
        }
    }
    if names.len() as u64 != total {
        return Err(GgufError::new(
            path,
            GgufErrorKind::Split(format!(
                "{SPLIT_TENSORS_COUNT_KEY} is {total} but the {} parts hold {} tensors",
                parts.len(),
                names.len()
            )),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_parse_and_format() {
        let name = SplitName::parse("model-q4-00002-of-00013.gguf").unwrap();
        assert_eq!(name.prefix, "model-q4");
        assert_eq!((name.number, name.count), (2, 13));
        assert_eq!(
            SplitName::file_name("model-q4", 2, 13),
            "model-q4-00002-of-00013.gguf"
        );
        for bad in [
            "model.gguf",
            "model-1-of-2.gguf",
            "-00001-of-00002.gguf",
            "m-00001-of-00002",
        ] {
            assert_eq!(SplitName::parse(bad), None, "{bad}");
        }
    }
}
