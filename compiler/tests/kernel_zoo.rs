//! Every kernel of the zoo's test models at -O2 (small input sizes) is lowered, JIT'd in
//! normal and bounds-checked mode, and compared with the reference implementations; the
//! nodes that fall back to the interpreter are listed, and there must be none.

mod kernel_common;

use kernel_common::{check_graph, zoo_graph, ZOO_MODELS};
use std::collections::BTreeSet;

#[test]
fn zoo_kernels_match_the_reference() {
    let mut kinds = BTreeSet::new();
    let mut fallbacks = BTreeSet::new();
    let mut total = 0;
    let mut times = Vec::new();
    for model in ZOO_MODELS {
        let graph = zoo_graph(model);
        let report = check_graph(&graph, 11, 2e-4);
        total += report.checked.len();
        times.extend(report.compile_times.iter().copied());
        kinds.extend(report.checked.iter().map(|(origin, _)| origin.clone()));
        for (node, err) in &report.unsupported {
            println!("{}: {node}: {err}", model.1);
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
