//! Every optimisation pipeline computes what the unoptimised graph computes: each reference
//! fixture (one or more per spec family, real weights) runs through the interpreter at -O0
//! and after the -O1 and -O2 pipelines, and the outputs must agree. The pass-specific
//! expectations (what a pass must and must not leave) live in `tests/passes.rs`.

mod common;

use bbc::compiler::{elab, interp, ir, passes, stats};
use std::collections::HashMap;
use std::path::Path;

#[test]
fn o1_and_o2_agree_with_o0_on_every_fixture() {
    let fixtures = common::reference_fixtures();
    assert!(fixtures.len() >= 20, "fixtures missing");
    let mut folded = 0;
    let mut fewer_kernels = 0;
    for fixture in fixtures {
        let (dir, model, w, inputs) = (
            &fixture.dir,
            &fixture.model,
            &fixture.weights,
            &fixture.inputs,
        );
        let reference = interp::run(&model.graph, inputs, w).unwrap();
        for level in [1, 2] {
            let mut graph = model.graph.clone();
            let runs = passes::run(
                &mut graph,
                &passes::pipeline(level),
                &passes::Options::default(),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            if level == 2
                && runs
                    .iter()
                    .any(|r| r.name == "fold-batch-norm" && r.changed)
            {
                folded += 1;
            }
            let (before, after) = (stats::stats(&model.graph), stats::stats(&graph));
            assert!(
                after.kernels <= before.kernels,
                "{}: -O{level} launches more kernels",
                dir.display()
            );
            assert!(
                after.intermediate_bytes <= before.intermediate_bytes,
                "{}: -O{level} writes more intermediate bytes",
                dir.display()
            );
            if level == 2 && after.kernels < before.kernels {
                fewer_kernels += 1;
            }
            let text = ir::print_text(&graph);
            // Optimised graphs, fusion groups included, print and parse back unchanged.
            let parsed = ir::parse_text(&text).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            assert_eq!(
                ir::print_text(&parsed),
                text,
                "{}: -O{level} text form does not round-trip",
                dir.display()
            );
            assert!(
                ir::verify(&parsed).is_empty(),
                "{}: {:?}",
                dir.display(),
                ir::verify(&parsed)
            );
            assert!(
                !text.contains(" = dropout(") && !text.contains(" = drop_path("),
                "{}: -O{level} left a no-op",
                dir.display()
            );
            let out = interp::run(&graph, inputs, w).unwrap();
            for (name, want) in &reference {
                let got = &out[name];
                let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
                let err = got
                    .iter()
                    .zip(want.iter())
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    err <= 1e-5 * scale,
                    "{}: -O{level} output `{name}` differs by {err:e}",
                    dir.display()
                );
            }
        }
    }
    assert!(
        folded >= 5,
        "fold-batch-norm fired on only {folded} fixtures"
    );
    assert!(
        fewer_kernels >= 20,
        "-O2 reduced the kernel count on only {fewer_kernels} fixtures"
    );
}

/// `model` of `specs/convnext.bb` at 64x64, before and after the -O2 pipeline.
fn convnext_at_o0_and_o2(model: &str) -> (ir::Graph, ir::Graph) {
    let program = elab::Program::load(Path::new("specs/convnext.bb"), &elab::FsLoader).unwrap();
    let opts = elab::Options {
        model: Some(model.into()),
        dims: vec![("H".into(), 64), ("W".into(), 64)],
        ..Default::default()
    };
    let before = program
        .elaborate(&opts)
        .unwrap_or_else(|d| panic!("{d:?}"))
        .graph;
    let mut after = before.clone();
    passes::run(
        &mut after,
        &passes::pipeline(2),
        &passes::Options::default(),
    )
    .unwrap();
    (before, after)
}

/// Kernels per inference in each ConvNeXt block (`stages.i.blocks.j`) of `graph`. Values
/// computed from weights alone, like the reshaped layer scale, are prepared once and are not
/// kernels.
fn kernels_per_block(graph: &ir::Graph) -> HashMap<String, usize> {
    use bbc::compiler::ir::NodeKind;
    let mut per_inference = std::collections::HashSet::new();
    let mut kernels: HashMap<String, usize> = HashMap::new();
    for id in graph.topo_order() {
        let node = graph.node(id);
        let depends = match node.kind {
            NodeKind::Input => true,
            NodeKind::Param { .. } => false,
            _ => graph.inputs(id).iter().any(|i| per_inference.contains(i)),
        };
        if !depends {
            continue;
        }
        per_inference.insert(id);
        let segs: Vec<&str> = node.name.split('.').collect();
        if segs.len() > 4
            && segs[0] == "stages"
            && segs[2] == "blocks"
            && !matches!(node.kind, NodeKind::Input)
        {
            *kernels.entry(segs[..4].join(".")).or_insert(0) += 1;
        }
    }
    kernels
}

/// The yardstick for ConvNeXt: at -O2 each block of convnext_atto (1x1-conv MLP) runs
/// as at most three kernels: depthwise conv + LayerNorm, fc1 + GELU, fc2 + layer scale +
/// residual.
#[test]
fn convnext_atto_blocks_run_as_three_kernels_at_o2() {
    let kernels = kernels_per_block(&convnext_at_o0_and_o2("convnext_atto").1);
    assert_eq!(
        kernels.len(),
        12,
        "convnext_atto has 12 blocks: {kernels:?}"
    );
    for (block, n) in &kernels {
        assert!(*n <= 3, "{block} runs {n} kernels at -O2");
    }
}

/// The same yardstick for the Linear-MLP form (convnext_tiny: permute to channels-last before
/// the LayerNorm, back after the layer scale): the depthwise conv stores channels-last, and
/// the fc2 epilogue stores back through the layout change so the residual add joins it. Every
/// layout change of the source is still in the optimised IR text, inside the group that
/// absorbs it.
#[test]
fn convnext_tiny_blocks_run_as_three_kernels_at_o2() {
    let (before, after) = convnext_at_o0_and_o2("convnext_tiny");
    let kernels = kernels_per_block(&after);
    assert_eq!(
        kernels.len(),
        18,
        "convnext_tiny has 18 blocks: {kernels:?}"
    );
    for (block, n) in &kernels {
        assert!(*n <= 3, "{block} runs {n} kernels at -O2");
    }
    let layout_changes = |text: &str| text.matches(" = permute(").count();
    let source = layout_changes(&ir::print_text(&before));
    assert_eq!(source, 2 * 18, "two layout changes per block in the spec");
    assert_eq!(layout_changes(&ir::print_text(&after)), source);
}
