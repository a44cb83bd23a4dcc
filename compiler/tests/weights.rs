//! Checkpoints against the parameter table: strict checking from the header, `rename` and
//! `ignore` rules, BatchNorm's `num_batches_tracked`, loading, and seeded initialisation.

use bbc_compiler::elab::{Elaborated, Options, Program};
use bbc_compiler::weights::{self, check, init_weights, param_table};
use bbc_runtime::{Checkpoint, DType, EntryInfo, Tensor};
use std::path::PathBuf;

const SPEC: &str = r#"
model m() {
    rename "^backbone\.conv\." => "conv.";
    ignore "^aux_head\.";
    input x: f32[1, 3, 4, 4];
    conv = conv2d(x, out=2, k=1, bias=false);
    bn = batch_norm2d(conv);
    output y = bn;
}
"#;

fn model() -> Elaborated {
    let program = Program::from_source("t.bb", SPEC).unwrap_or_else(|e| panic!("{e:?}"));
    program
        .elaborate(&Options::default())
        .unwrap_or_else(|d| panic!("{d:?}"))
}

fn entry(name: &str, dtype: DType, shape: &[usize]) -> EntryInfo {
    EntryInfo {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
    }
}

#[test]
fn renamed_ignored_and_counter_keys_are_accepted() {
    let m = model();
    let entries = [
        entry("backbone.conv.weight", DType::F32, &[2, 3, 1, 1]),
        entry("bn.weight", DType::F32, &[2]),
        entry("bn.bias", DType::F16, &[2]),
        entry("bn.running_mean", DType::F32, &[2]),
        entry("bn.running_var", DType::BF16, &[2]),
        entry("bn.num_batches_tracked", DType::I64, &[]),
        entry("aux_head.weight", DType::F32, &[7]),
    ];
    let map = check(&m, &entries, "ckpt").unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(map["conv.weight"], "backbone.conv.weight");
    assert_eq!(map.len(), 5);
}

#[test]
fn every_problem_is_reported_at_its_declaration() {
    let m = model();
    let entries = [
        entry("conv.weight", DType::F32, &[2, 3, 3, 3]),
        entry("bn.weight", DType::I64, &[2]),
        entry("bn.bais", DType::F32, &[2]),
        entry("bn.running_mean", DType::F32, &[2]),
    ];
    let diags = check(&m, &entries, "ckpt").expect_err("four problems");
    let codes: Vec<&str> = diags.iter().map(|d| d.code).collect();
    assert_eq!(
        codes,
        ["E0503", "E0504", "E0501", "E0501", "E0502"],
        "{diags:?}"
    );
    // Model-side problems point at the declaring call.
    assert!(diags[..4].iter().all(|d| d.span.is_some()));
    assert_eq!(
        diags[4].help.as_deref(),
        Some("did you mean `bn.bias`? (add `rename \"...\" => \"...\";` to map it)")
    );
}

#[test]
fn initialised_weights_round_trip_through_a_checkpoint() {
    let m = model();
    let w = init_weights(&m.graph, 7);
    assert_eq!(w.len(), param_table(&m.graph).len());
    assert!(w["bn.running_var"].iter().all(|&v| v == 1.0));
    assert!(w["conv.weight"]
        .iter()
        .all(|&v| v.abs() <= 1.0 / 3f32.sqrt()));
    assert_eq!(w, init_weights(&m.graph, 7), "seeded init is deterministic");
    assert_ne!(w["conv.weight"], init_weights(&m.graph, 8)["conv.weight"]);

    let dir = std::env::temp_dir().join(format!("bbc-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join("w.safetensors");
    let named: Vec<(String, &Tensor)> = w.iter().map(|(k, v)| (k.clone(), v)).collect();
    bbc_runtime::save(&path, &named).unwrap();
    assert_eq!(
        Checkpoint::header_only(&path).unwrap().entries().len(),
        w.len()
    );
    let loaded = weights::load_file(&m, &path).unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(loaded, w);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_wrapper_prefix_is_reported_once_with_the_rename_that_fixes_it() {
    let m = model();
    let prefixed: Vec<EntryInfo> = param_table(&m.graph)
        .iter()
        .map(|p| entry(&format!("module.{}", p.key), DType::F32, &p.shape))
        .collect();
    let diags = check(&m, &prefixed, "ckpt").expect_err("prefixed keys");
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert!(diags[0].message.contains("extra prefix `module.`"));
    assert_eq!(
        diags[0].help.as_deref(),
        Some("add `rename \"^module\\.\" => \"\";` to the model")
    );
}
