//! What several integration tests share: the committed PyTorch reference fixtures
//! (`tests/fixtures/reference/*/case.json`, made by `tools/reference/make_fixtures.py`),
//! each elaborated from its spec with its weights (generated from the case's
//! `weights.json`, see `recipe`) and inputs loaded.

// Each test binary compiles this module and reads only part of it.
#![allow(dead_code)]

pub mod models;
pub mod recipe;

use bbc::compiler::elab::{self, Elaborated};
use bbc::compiler::weights;
use bbc::runtime::{read_npy, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The folder holding one sub-folder per reference case.
pub fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

/// Writes reference case `case`'s weights (generated from its `weights.json`) as an F32
/// safetensors checkpoint `<dir>/<case>.safetensors`, for commands that take `--weights`.
pub fn weights_file(case: &str, dir: &Path) -> PathBuf {
    let recipe = recipe::WeightRecipe::read(&fixtures_root().join(case).join("weights.json"))
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let path = dir.join(format!("{case}.safetensors"));
    recipe
        .write_safetensors(&path)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    path
}

/// One reference case, ready to run.
pub struct Fixture {
    /// The fixture's folder name.
    pub label: String,
    pub dir: PathBuf,
    pub model: Elaborated,
    pub weights: BTreeMap<String, Tensor>,
    pub inputs: HashMap<String, Tensor>,
    /// The outputs PyTorch wrote (`<name>.npy` in `dir`).
    pub outputs: Vec<String>,
    /// The largest difference from PyTorch allowed, relative to an output's scale.
    pub tolerance: f64,
}

impl Fixture {
    /// PyTorch's value of output `name`.
    pub fn expected(&self, name: &str) -> Tensor {
        read_npy(self.dir.join(format!("{name}.npy"))).expect("output npy")
    }
}

/// Every fixture, in folder order; a broken fixture fails with its name.
pub fn reference_fixtures() -> Vec<Fixture> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_root())
        .expect("fixtures folder")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("case.json").exists())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let label = dir.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(dir.join("case.json")).expect("case.json");
            let case: serde_json::Value = serde_json::from_str(&text).expect("valid case.json");
            let strings = |key: &str| -> Vec<String> {
                case[key]
                    .as_array()
                    .expect(key)
                    .iter()
                    .map(|s| s.as_str().expect("string").to_string())
                    .collect()
            };
            let dims = case["dims"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, n)| (k.clone(), n.as_i64().expect("int dim")))
                        .collect()
                })
                .unwrap_or_default();
            let spec = root.join(case["spec"].as_str().expect("spec"));
            let program = elab::Program::load(&spec, &elab::FsLoader)
                .unwrap_or_else(|e| panic!("{label}: {}", e.render()));
            let opts = elab::Options {
                model: Some(case["model"].as_str().expect("model").into()),
                dims,
                ..Default::default()
            };
            let render = |d: &[bbc::grammar::Diagnostic]| bbc::render(d, Some(&program.sources));
            let model = program
                .elaborate(&opts)
                .unwrap_or_else(|d| panic!("{label}: {}", render(&d)));
            let recipe = recipe::WeightRecipe::read(&dir.join("weights.json"))
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            // The same checks as a checkpoint file gets: missing, unexpected, mis-shaped
            // and non-float entries, `rename` rules, BatchNorm counters skipped.
            let keys = weights::check(&model, &recipe.entries(), "weights.json")
                .unwrap_or_else(|d| panic!("{label}: {}", render(&d)));
            let weights = keys
                .into_iter()
                .map(|(key, stored)| {
                    let t = recipe
                        .tensor(&stored)
                        .unwrap_or_else(|e| panic!("{label}: {e}"));
                    (key, t)
                })
                .collect();
            let inputs = strings("inputs")
                .into_iter()
                .map(|name| {
                    let t = read_npy(dir.join(format!("{name}.npy"))).expect("input npy");
                    (name, t)
                })
                .collect();
            Fixture {
                outputs: strings("outputs"),
                tolerance: case["tolerance"].as_f64().expect("tolerance"),
                label,
                dir,
                model,
                weights,
                inputs,
            }
        })
        .collect()
}
