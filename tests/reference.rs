//! The interpreter against PyTorch: every case in `tests/fixtures/reference/` (made by
//! `tools/reference/make_fixtures.py`) is elaborated from its spec, loads the reference's
//! weights by name, and must reproduce the reference outputs.

use bbc::compiler::{elab, interp, weights};
use bbc::runtime::read_npy;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Case {
    dir: PathBuf,
    spec: String,
    model: String,
    dims: Vec<(String, i64)>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    tolerance: f64,
}

fn cases() -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("fixtures folder")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("case.json").exists())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let text = std::fs::read_to_string(dir.join("case.json")).expect("case.json");
            let v: serde_json::Value = serde_json::from_str(&text).expect("valid case.json");
            let strings = |key: &str| -> Vec<String> {
                v[key]
                    .as_array()
                    .expect(key)
                    .iter()
                    .map(|s| s.as_str().expect("string").to_string())
                    .collect()
            };
            let dims = v["dims"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, n)| (k.clone(), n.as_i64().expect("int dim")))
                        .collect()
                })
                .unwrap_or_default();
            Case {
                spec: v["spec"].as_str().expect("spec").to_string(),
                model: v["model"].as_str().expect("model").to_string(),
                dims,
                inputs: strings("inputs"),
                outputs: strings("outputs"),
                tolerance: v["tolerance"].as_f64().expect("tolerance"),
                dir,
            }
        })
        .collect()
}

#[test]
fn interpreter_matches_pytorch_on_every_fixture() {
    let cases = cases();
    assert!(
        cases.len() >= 7,
        "expected the committed fixtures, found {}",
        cases.len()
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for case in cases {
        let name = case.dir.file_name().unwrap().to_string_lossy().to_string();
        let program = elab::Program::load(&root.join(&case.spec), &elab::FsLoader)
            .unwrap_or_else(|e| panic!("{name}: {}", e.render()));
        let opts = elab::Options {
            model: Some(case.model.clone()),
            dims: case.dims.clone(),
            ..Default::default()
        };
        let model = program
            .elaborate(&opts)
            .unwrap_or_else(|d| panic!("{name}: {}", bbc::render(&d, Some(&program.sources))));
        let w = weights::load_file(&model, &case.dir.join("weights.safetensors"))
            .unwrap_or_else(|d| panic!("{name}: {}", bbc::render(&d, Some(&program.sources))));
        let inputs: HashMap<String, _> = case
            .inputs
            .iter()
            .map(|i| {
                (
                    i.clone(),
                    read_npy(case.dir.join(format!("{i}.npy"))).expect("input npy"),
                )
            })
            .collect();
        let outputs =
            interp::run(&model.graph, &inputs, &w).unwrap_or_else(|e| panic!("{name}: {e}"));
        for o in &case.outputs {
            let expected = read_npy(case.dir.join(format!("{o}.npy"))).expect("output npy");
            let actual = &outputs[o];
            assert_eq!(
                actual.shape(),
                expected.shape(),
                "{name}: output `{o}` shape"
            );
            let scale = expected.iter().fold(1.0f64, |m, v| m.max(v.abs() as f64));
            let err = actual
                .iter()
                .zip(expected.iter())
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs() as f64));
            assert!(
                err <= case.tolerance * scale,
                "{name}: output `{o}` differs from PyTorch by {err:e} (tolerance {:e} x scale {scale})",
                case.tolerance
            );
        }
    }
}
