//! Pass tests as small text-IR files (`tests/passes/*.ir`), in the style of LLVM's FileCheck:
//! `# RUN: pass,pass` names the passes, `# CHECK: text` lines must appear in the output in
//! order, `# CHECK-NOT: text` must not appear anywhere. Each case is also run through the
//! interpreter before and after (seeded weights and inputs), and the outputs must agree.

use bbc::compiler::{interp, ir, passes, weights};
use bbc::runtime::Rng;
use std::collections::HashMap;

#[test]
fn every_pass_case_rewrites_as_checked_and_computes_the_same() {
    let mut files: Vec<_> = std::fs::read_dir("tests/passes")
        .expect("tests/passes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ir"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "pass cases missing");
    let mut tested = std::collections::BTreeSet::new();
    for path in files {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let directive = |tag: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix(&format!("# {tag}:")))
                .map(|s| s.trim().to_string())
                .collect()
        };
        let run: Vec<String> = directive("RUN")
            .join(",")
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        let ir_text: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut graph = ir::parse_text(&ir_text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            ir::verify(&graph).is_empty(),
            "{name}: {:?}",
            ir::verify(&graph)
        );
        let before = graph.clone();
        let pipeline: Vec<_> = run
            .iter()
            .map(|p| passes::lookup(p).unwrap_or_else(|| panic!("{name}: unknown pass {p}")))
            .collect();
        tested.extend(run.iter().cloned());
        passes::run(&mut graph, &pipeline, &passes::Options::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = ir::print_text(&graph);
        let mut rest = out.as_str();
        for want in directive("CHECK") {
            match rest.find(&want) {
                Some(at) => rest = &rest[at + want.len()..],
                None => panic!("{name}: `{want}` not found (in order) in:\n{out}"),
            }
        }
        for banned in directive("CHECK-NOT") {
            assert!(
                !out.contains(&banned),
                "{name}: `{banned}` still present in:\n{out}"
            );
        }
        // Same outputs before and after, on seeded weights and inputs.
        let w = weights::init_weights(&before, 1);
        let mut rng = Rng::new(2);
        let inputs: HashMap<String, _> = before
            .inputs
            .iter()
            .map(|&i| {
                let n = before.node(i);
                (n.name.clone(), rng.standard_normal_tensor(&n.shape))
            })
            .collect();
        let a = interp::run(&before, &inputs, &w).unwrap();
        let b = interp::run(&graph, &inputs, &w).unwrap();
        for (k, va) in &a {
            let err = va
                .iter()
                .zip(b[k].iter())
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(err <= 1e-5, "{name}: output {k} changed by {err}");
        }
    }
    let all: std::collections::BTreeSet<String> =
        passes::all().iter().map(|p| p.name().to_string()).collect();
    let untested: Vec<_> = all.difference(&tested).collect();
    assert!(
        untested.is_empty(),
        "passes without a test case: {untested:?}"
    );
}
