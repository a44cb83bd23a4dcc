//! Every kernel of the zoo's test models at -O2 (small input sizes) is lowered, JIT'd in
//! normal and bounds-checked mode, and compared with the reference implementations; the
//! nodes that fall back to the interpreter are listed, and there must be none.

mod kernel_common;

use bbc_compiler::elab;
use kernel_common::{check_graph, optimize};
use std::collections::BTreeSet;
use std::path::Path;

/// A zoo model: spec file, model name, size parameters.
type Model = (&'static str, &'static str, &'static [(&'static str, i64)]);

const MODELS: &[Model] = &[
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

#[test]
fn zoo_kernels_match_the_reference() {
    let mut kinds = BTreeSet::new();
    let mut fallbacks = BTreeSet::new();
    let mut total = 0;
    let mut times = Vec::new();
    for (spec, model, dims) in MODELS {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../specs")
            .join(spec);
        let program = elab::Program::load(&path, &elab::FsLoader)
            .unwrap_or_else(|e| panic!("{}", e.render()));
        let opts = elab::Options {
            model: Some(model.to_string()),
            dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        };
        let mut graph = program
            .elaborate(&opts)
            .unwrap_or_else(|d| panic!("{model}: {d:?}"))
            .graph;
        optimize(&mut graph);
        let report = check_graph(&graph, 11, 2e-4);
        total += report.checked.len();
        times.extend(report.compile_times.iter().copied());
        kinds.extend(report.checked.iter().map(|(origin, _)| origin.clone()));
        for (node, err) in &report.unsupported {
            println!("{model}: {node}: {err}");
            let bbc_compiler::kernel::LowerError::Unsupported { op, .. } = err;
            fallbacks.insert(op.clone());
        }
    }
    println!("{total} kernels checked; kinds: {kinds:?}; fallbacks: {fallbacks:?}");
    times.sort();
    let mean = times.iter().sum::<std::time::Duration>() / times.len().max(1) as u32;
    println!(
        "JIT compile time per kernel: mean {mean:?}, median {:?}, max {:?}",
        times[times.len() / 2],
        times.last().copied().unwrap_or_default()
    );
    let kinds_expected = [
        "elementwise",
        "epilogue",
        "dwconv_norm",
        "conv2d",
        "linear",
        "attention",
        "fff",
    ];
    for kind in kinds_expected {
        assert!(
            kinds.contains(kind),
            "no `{kind}` kernel in the zoo run: {kinds:?}"
        );
    }
    assert!(
        fallbacks.is_empty(),
        "ops falling back to the interpreter: {fallbacks:?}"
    );
}
