//! Properties of reshard and export over random shapes, dtypes and ceilings.

mod common;

use std::path::Path;

use common::{write_safetensors, TestTensor};
use proptest::prelude::*;
use shardkit::dtype::DType;
use shardkit::export::{export_safetensors, ExportOptions};
use shardkit::plan::PlanOptions;
use shardkit::reshard::{reshard, WriteOptions};
use shardkit::source::{self, TensorSource};

const DTYPES: &[DType] = &[
    DType::BOOL,
    DType::U8,
    DType::I8,
    DType::F8_E4M3,
    DType::F8_E5M2FNUZ,
    DType::F6_E3M2,
    DType::F8_E8M0,
    DType::F4,
    DType::F6_E2M3,
    DType::I16,
    DType::F16,
    DType::BF16,
    DType::I32,
    DType::F32,
    DType::C64,
    DType::F64,
    DType::U64,
];

fn tensor_strategy() -> impl Strategy<Value = (usize, Vec<u64>)> {
    let shape = prop_oneof![
        Just(vec![]),
        (0u64..40).prop_map(|n| vec![n]),
        (0u64..30, 1u64..12).prop_map(|(a, b)| vec![a, b * 4]),
        (1u64..6, 1u64..4, 1u64..3).prop_map(|(a, b, c)| vec![a, b, c * 4]),
    ];
    (0..DTYPES.len(), shape)
}

fn make_tensors(specs: &[(usize, Vec<u64>)]) -> Vec<TestTensor> {
    specs
        .iter()
        .enumerate()
        .filter_map(|(i, (dtype, shape))| {
            let dtype = DTYPES[*dtype];
            let elements: u64 = shape.iter().product();
            dtype.bytes_for(elements)?;
            // Names in several scripts, to check they travel byte for byte.
            let name = match i % 3 {
                0 => format!("layer.{i}.weight"),
                1 => format!("שכבה.{i}"),
                _ => format!("层_{i}.偏置"),
            };
            Some(TestTensor::patterned(&name, dtype, shape, i as u8))
        })
        .collect()
}

fn read_all(source: &dyn TensorSource, index: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; source.tensors()[index].bytes as usize];
    source.read_at(index, 0, &mut bytes).unwrap();
    bytes
}

fn options(max_chunk_bytes: u64, per_tensor: bool) -> WriteOptions {
    WriteOptions {
        plan: PlanOptions {
            max_chunk_bytes,
            per_tensor,
        },
        threads: Some(2),
        force: false,
    }
}

fn check_chunks_within(dir: &Path, ceiling: u64) {
    for entry in std::fs::read_dir(dir.join("chunks")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.len() as u64 <= ceiling,
            "{} is {} bytes, over {ceiling}",
            path.display(),
            bytes.len()
        );
        safetensors::SafeTensors::deserialize(&bytes)
            .expect("every chunk is a valid safetensors file");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn reshard_and_export_preserve_every_byte(
        specs in prop::collection::vec(tensor_strategy(), 1..8),
        ceiling in 600u64..3000,
        per_tensor in any::<bool>(),
        second_ceiling in 700u64..5000,
    ) {
        let tensors = make_tensors(&specs);
        prop_assume!(!tensors.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("model.safetensors");
        write_safetensors(&input, &tensors);

        let first = dir.path().join("chunked");
        let result = reshard(&input, &first, options(ceiling, per_tensor), &|_| {});
        let summary = match result {
            Ok(summary) => summary,
            // A row wider than the ceiling is a legitimate refusal; nothing must be written.
            Err(shardkit::reshard::WriteError::Plan(_)) => {
                prop_assert!(!first.exists());
                return Ok(());
            }
            Err(other) => panic!("{other}"),
        };
        check_chunks_within(&first, ceiling);
        prop_assert!(shardkit::verify::verify(&first, Some(1)).unwrap().ok());
        if per_tensor {
            for chunk in 0..summary.manifest.chunks.len() {
                let owners = summary.manifest.tensors.iter().filter(|t| t.pieces.iter().any(|p| p.chunk == chunk)).count();
                prop_assert_eq!(owners, 1);
            }
        }

        let chunked = source::open(&first).unwrap();
        for (index, tensor) in tensors.iter().enumerate() {
            prop_assert_eq!(&chunked.tensors()[index].name, &tensor.name);
            prop_assert_eq!(read_all(chunked.as_ref(), index), tensor.data.clone());
        }

        let second = dir.path().join("rechunked");
        if reshard(&first, &second, options(second_ceiling, false), &|_| {}).is_ok() {
            check_chunks_within(&second, second_ceiling);
            let exported = dir.path().join("exported");
            let export_options = ExportOptions { max_shard_bytes: 1000, threads: Some(1), force: false, dtype: None };
            export_safetensors(&second, &exported, export_options).unwrap();
            let back = source::open(&exported).unwrap();
            prop_assert_eq!(back.tensors().len(), tensors.len());
            for tensor in &tensors {
                let index = back.tensors().iter().position(|t| t.name == tensor.name).unwrap();
                prop_assert_eq!(&back.tensors()[index].shape, &tensor.shape);
                prop_assert_eq!(read_all(back.as_ref(), index), tensor.data.clone());
            }
        }
    }
}

#[test]
fn reshard_output_is_byte_identical_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    let tensors = vec![
        TestTensor::patterned("a", DType::BF16, &[300, 16], 1),
        TestTensor::patterned("b", DType::F32, &[7], 2),
        TestTensor::patterned("c", DType::F16, &[50, 8], 3),
    ];
    write_safetensors(&input, &tensors);
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let first = dir.path().join("one");
    let second = dir.path().join("two");
    reshard(&input, &first, options(4000, false), &|_| {}).unwrap();
    reshard(
        &input,
        &second,
        WriteOptions {
            threads: Some(1),
            ..options(4000, false)
        },
        &|_| {},
    )
    .unwrap();
    assert_eq!(common::read_tree(&first), common::read_tree(&second));
}
