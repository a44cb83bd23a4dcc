//! Shared by the Kernel IR tests: reference values of every node of a graph (the
//! interpreter's op implementations), and checking one node's JIT'd kernel against them in
//! normal and bounds-checked mode.

#![allow(dead_code)]

use bbc_compiler::codegen::cpu::{compile, Options};
use bbc_compiler::ir::{Graph, NodeKind, ValueId};
use bbc_compiler::kernel::{lower_node, Kernel, LowerError};
use bbc_compiler::{interp, ir, passes};
use ndarray::{ArrayD, IxDyn};
use std::collections::{BTreeMap, HashMap};

/// SplitMix64: deterministic inputs without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }

    pub fn tensor(&mut self, shape: &[usize]) -> ArrayD<f32> {
        let n = shape.iter().product();
        let data = (0..n).map(|_| self.uniform(-2.0, 2.0)).collect();
        ArrayD::from_shape_vec(IxDyn(shape), data).expect("sizes agree")
    }
}

pub fn parse(text: &str) -> Graph {
    let g = ir::parse_text(text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    let problems = ir::verify(&g);
    assert!(problems.is_empty(), "{problems:?}");
    g
}

pub fn optimize(graph: &mut Graph) {
    passes::run(graph, &passes::pipeline(2), &passes::Options::default()).expect("passes");
}

/// The value of every node, computed with the op table's reference implementations.
pub fn reference_values(graph: &Graph, rng: &mut Rng) -> HashMap<ValueId, ArrayD<f32>> {
    let mut values: HashMap<ValueId, ArrayD<f32>> = HashMap::new();
    for id in graph.topo_order() {
        let node = graph.node(id);
        let operands: Vec<&ArrayD<f32>> = graph.inputs(id).iter().map(|o| &values[o]).collect();
        let v = match &node.kind {
            NodeKind::Input | NodeKind::Param { .. } => rng.tensor(&node.shape),
            NodeKind::Const { data } => {
                ArrayD::from_shape_vec(IxDyn(&node.shape), data.clone()).expect("sizes agree")
            }
            NodeKind::Op { op, attrs } => (op.eval)(attrs, &operands),
            NodeKind::Fused { body, .. } => {
                let args: HashMap<String, ArrayD<f32>> = body
                    .inputs
                    .iter()
                    .zip(&operands)
                    .map(|(&b, o)| (body.node(b).name.clone(), (*o).clone()))
                    .collect();
                let out = interp::run(body, &args, &BTreeMap::new()).expect("group runs");
                out.into_values().next().expect("one output")
            }
        };
        values.insert(id, v.as_standard_layout().into_owned());
    }
    values
}

/// Largest deviation of `got` from `want`, relative to `1 + |want|`.
pub fn max_error(got: &[f32], want: &[f32]) -> f32 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            if g.is_nan() && w.is_nan() || g == w {
                0.0
            } else {
                (g - w).abs() / (1.0 + w.abs())
            }
        })
        .fold(0.0, f32::max)
}

/// What checking a graph's kernels found.
#[derive(Debug, Default)]
pub struct Report {
    /// `(origin, node)` of every kernel compiled and matched.
    pub checked: Vec<(String, String)>,
    /// Nodes with no lowering, with the reason.
    pub unsupported: Vec<(String, LowerError)>,
    /// JIT compile time of each checked kernel (normal mode).
    pub compile_times: Vec<std::time::Duration>,
}

/// Lowers, compiles (normal and bounds-checked) and runs every computed node of `graph`,
/// comparing with the reference within `tol` (relative to 1 + |expected|).
pub fn check_graph(graph: &Graph, seed: u64, tol: f32) -> Report {
    let mut rng = Rng(seed);
    let values = reference_values(graph, &mut rng);
    let mut report = Report::default();
    for id in graph.topo_order() {
        let node = graph.node(id);
        if matches!(
            node.kind,
            NodeKind::Input | NodeKind::Param { .. } | NodeKind::Const { .. }
        ) {
            continue;
        }
        let kernel = match lower_node(graph, id) {
            Ok(k) => k,
            Err(e) => {
                report.unsupported.push((node.name.clone(), e));
                continue;
            }
        };
        let inputs: Vec<&[f32]> = graph
            .inputs(id)
            .iter()
            .map(|o| values[o].as_slice().expect("standard layout"))
            .collect();
        let want = values[&id].as_slice().expect("standard layout");
        let time = check_kernel(&kernel, &inputs, want, tol);
        report.compile_times.push(time);
        report
            .checked
            .push((kernel.origin.clone(), node.name.clone()));
    }
    report
}

/// Runs `kernel` in both modes and compares with `want`; returns the normal mode's compile
/// time.
pub fn check_kernel(
    kernel: &Kernel,
    inputs: &[&[f32]],
    want: &[f32],
    tol: f32,
) -> std::time::Duration {
    let mut time = std::time::Duration::ZERO;
    for bounds_checked in [false, true] {
        let opts = Options {
            bounds_checked,
            ..Options::default()
        };
        let compiled = compile(kernel, &opts)
            .unwrap_or_else(|e| panic!("{e}\n{}", bbc_compiler::kernel::print_kernel(kernel)));
        // NaN-filled, so an element the kernel forgets to write shows up.
        let mut out = vec![f32::NAN; want.len()];
        compiled.run(inputs, &mut out).unwrap_or_else(|e| {
            panic!(
                "{} (checked={bounds_checked}): {e}\n{}",
                kernel.name,
                bbc_compiler::kernel::print_kernel(kernel)
            )
        });
        if !bounds_checked {
            time = compiled.compile_time;
        }
        let err = max_error(&out, want);
        assert!(
            err <= tol,
            "{} ({}), checked={bounds_checked}: error {err} > {tol}\n{}\ngot  {:?}\nwant {:?}",
            kernel.name,
            kernel.origin,
            bbc_compiler::kernel::print_kernel(kernel),
            &out[..out.len().min(16)],
            &want[..want.len().min(16)]
        );
    }
    time
}

/// A zoo model: spec file, model name, size parameters.
pub type Model = (&'static str, &'static str, &'static [(&'static str, i64)]);

/// The zoo's test models with small input sizes, covering every kernel kind.
pub const ZOO_MODELS: &[Model] = &[
    ("convnext.bb", "convnext_test", &[("H", 37), ("W", 33)]),
    (
        "resnet.bb",
        "resnet_test_bottleneck",
        &[("H", 35), ("W", 29)],
    ),
    ("efficientnet.bb", "efficientnet_test", &[("H", 33)]),
    ("tnt.bb", "tnt_test", &[]),
    ("wavelet.bb", "wavecnet_test", &[("H", 32), ("W", 32)]),
    ("poapl.bb", "poapl_test", &[]),
    ("rdn.bb", "rdn_test", &[]),
    ("deep_sets.bb", "deep_sets_masked", &[]),
    ("spatial_broadcast_decoder.bb", "sbd_test", &[]),
    ("fff.bb", "fff_bifpn_test", &[]),
    ("multiscale.bb", "res2net_test", &[("H", 33), ("W", 31)]),
    ("densenet.bb", "densenet_test", &[("H", 32), ("W", 32)]),
];

/// A zoo model elaborated from its spec and optimised at -O2.
pub fn zoo_graph((spec, model, dims): &Model) -> Graph {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../specs")
        .join(spec);
    let program = bbc_compiler::elab::Program::load(&path, &bbc_compiler::elab::FsLoader)
        .unwrap_or_else(|e| panic!("{}", e.render()));
    let opts = bbc_compiler::elab::Options {
        model: Some(model.to_string()),
        dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..Default::default()
    };
    let mut graph = program
        .elaborate(&opts)
        .unwrap_or_else(|d| panic!("{model}: {d:?}"))
        .graph;
    optimize(&mut graph);
    graph
}
