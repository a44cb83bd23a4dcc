//! Models for backend tests: every spec's test models (names containing `test`) with seeded
//! weights and N(0, 1) inputs, the -O2 pipeline, and the deviation measure the backends are
//! held to against the interpreter.

use bbc::compiler::ir::Graph;
use bbc::compiler::{elab, passes, weights};
use bbc::runtime::{Rng, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A graph with the weights and inputs to run it on.
pub struct Model {
    pub label: String,
    pub graph: Graph,
    pub weights: BTreeMap<String, Tensor>,
    pub inputs: HashMap<String, Tensor>,
}

/// `model` of `spec` with size parameters `dims`; panics with the rendered diagnostics.
pub fn elaborate(spec: &Path, model: &str, dims: Vec<(String, i64)>) -> Graph {
    let program = elab::Program::load(spec, &elab::FsLoader)
        .unwrap_or_else(|e| panic!("{}: {}", spec.display(), e.render()));
    let opts = elab::Options {
        model: Some(model.into()),
        dims,
        ..Default::default()
    };
    program
        .elaborate(&opts)
        .unwrap_or_else(|d| panic!("{model}: {}", bbc::render(&d, Some(&program.sources))))
        .graph
}

/// A model with seeded weights and N(0, 1) inputs.
pub fn seeded(spec: &str, model: &str, dims: &[(&str, i64)]) -> Model {
    let dims = dims.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let graph = elaborate(Path::new(spec), model, dims);
    with_data(model, graph, 3, 5)
}

/// The graph of the one model `source` (`.bb` text, named `file` in diagnostics) defines;
/// panics with the rendered diagnostics.
pub fn from_source(file: &str, source: &str) -> Graph {
    let program =
        elab::Program::from_source(file, source).unwrap_or_else(|e| panic!("{}", e.render()));
    program
        .elaborate(&elab::Options::default())
        .unwrap_or_else(|d| panic!("{file}: {}", bbc::render(&d, Some(&program.sources))))
        .graph
}

/// `graph` with weights initialised from `weight_seed` and N(0, 1) inputs drawn from
/// `input_seed` (forked per input name).
pub fn with_data(label: &str, graph: Graph, weight_seed: u64, input_seed: u64) -> Model {
    let weights = weights::init_weights(&graph, weight_seed);
    let rng = Rng::new(input_seed);
    let inputs = graph
        .inputs
        .iter()
        .map(|&i| {
            let n = graph.node(i);
            (
                n.name.clone(),
                rng.fork(&n.name).standard_normal_tensor(&n.shape),
            )
        })
        .collect();
    Model {
        label: label.to_string(),
        graph,
        weights,
        inputs,
    }
}

/// Every spec's test models (names containing `test`), in file and declaration order.
pub fn test_models() -> Vec<Model> {
    let mut specs: Vec<PathBuf> = std::fs::read_dir("specs")
        .expect("specs")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "bb"))
        .collect();
    specs.sort();
    let mut out = Vec::new();
    for spec in specs {
        let program = elab::Program::load(&spec, &elab::FsLoader).expect("loads");
        for model in program.models().into_iter().filter(|m| m.contains("test")) {
            out.push(seeded(&spec.to_string_lossy(), &model, &[]));
        }
    }
    out
}

/// `graph` after the -O2 pipeline as a CPU build runs it.
pub fn optimized(graph: &Graph) -> Graph {
    optimized_for(graph, bbc::Target::Cpu)
}

/// `graph` after the -O2 pipeline as a build for `target` runs it (less the passes the
/// target declines).
pub fn optimized_for(graph: &Graph, target: bbc::Target) -> Graph {
    let pipeline: Vec<_> = passes::pipeline(2)
        .into_iter()
        .filter(|p| !target.declines_pass(p.name()))
        .collect();
    let mut g = graph.clone();
    passes::run(&mut g, &pipeline, &passes::Options::default()).expect("passes");
    g
}

/// Largest `|got − want|` over all outputs, relative to each output's scale
/// (`max(1, max |want|)`); NaN where `want` is not NaN counts as infinitely far.
pub fn deviation(got: &BTreeMap<String, Tensor>, want: &BTreeMap<String, Tensor>) -> f64 {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    want.iter()
        .map(|(name, w)| {
            let g = &got[name];
            assert_eq!(g.shape(), w.shape(), "output `{name}`");
            let scale = w.iter().fold(1f64, |m, v| m.max(f64::from(v.abs())));
            let err = g
                .iter()
                .zip(w.iter())
                .map(|(a, b)| {
                    if a.is_nan() && b.is_nan() {
                        0.0
                    } else {
                        f64::from((a - b).abs())
                    }
                })
                .fold(
                    0.0,
                    |m: f64, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
                );
            err / scale
        })
        .fold(0.0, f64::max)
}
