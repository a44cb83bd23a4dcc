//! Two insta snapshots of the Graph IR text per model of every spec in `specs/`, discovered
//! automatically: as elaborated, and after the `-O2` pipeline (`__O2`), which also has to
//! round-trip through the text form. Adding a spec or a model adds snapshots, and a snapshot
//! whose model no longer exists fails the suite. Regenerate with `INSTA_UPDATE=always cargo test --test snapshots`
//! and review the diff.

use bbc::compiler::{elab, ir, passes};
use std::collections::BTreeSet;
use std::path::Path;

/// `(spec stem, model)` for every model of every spec, in a stable order.
fn models() -> Vec<(String, String, elab::Program)> {
    let mut specs: Vec<_> = std::fs::read_dir("specs")
        .expect("specs folder")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "bb"))
        .collect();
    specs.sort();
    let mut out = Vec::new();
    for path in specs {
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let program = elab::Program::load(&path, &elab::FsLoader)
            .unwrap_or_else(|e| panic!("{}", e.render()));
        for model in program.models() {
            let p = elab::Program::load(&path, &elab::FsLoader).expect("loaded above");
            out.push((stem.clone(), model, p));
        }
    }
    out
}

fn snapshot_name(spec: &str, model: &str) -> String {
    format!("{spec}__{model}")
}

fn optimized_snapshot_name(spec: &str, model: &str) -> String {
    format!("{spec}__{model}__O2")
}

#[test]
fn ir_snapshot_per_model() {
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.set_snapshot_path("snapshots");
    settings.bind(|| {
        for (spec, model, program) in models() {
            let opts = elab::Options {
                model: Some(model.clone()),
                dims: vec![],
                ..Default::default()
            };
            let elaborated = program.elaborate(&opts).unwrap_or_else(|d| {
                panic!(
                    "{spec}/{model}: {}",
                    bbc::render(&d, Some(&program.sources))
                )
            });
            let text = ir::print_text(&elaborated.graph);
            insta::assert_snapshot!(snapshot_name(&spec, &model), text);

            let mut graph = elaborated.graph;
            passes::run(
                &mut graph,
                &passes::pipeline(2),
                &passes::Options::default(),
            )
            .unwrap_or_else(|e| panic!("{spec}/{model}: {e}"));
            let text = ir::print_text(&graph);
            let parsed = ir::parse_text(&text).unwrap_or_else(|e| panic!("{spec}/{model}: {e}"));
            assert_eq!(
                ir::print_text(&parsed),
                text,
                "{spec}/{model}: the -O2 text form does not round-trip"
            );
            insta::assert_snapshot!(optimized_snapshot_name(&spec, &model), text);
        }
    });
}

#[test]
fn no_orphaned_snapshots() {
    let expected: BTreeSet<String> = models()
        .iter()
        .flat_map(|(s, m, _)| [snapshot_name(s, m), optimized_snapshot_name(s, m)])
        .map(|name| format!("{name}.snap"))
        .collect();
    let dir = Path::new("tests/snapshots");
    let orphans: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .to_string()
            })
            .filter(|n| n.ends_with(".snap") && !expected.contains(n))
            .collect()
        })
        .unwrap_or_default();
    assert!(
        orphans.is_empty(),
        "snapshots without a model in specs/: {orphans:?} (delete them)"
    );
}

#[test]
fn ir_text_round_trips_for_every_model() {
    for (spec, model, program) in models() {
        let opts = elab::Options {
            model: Some(model.clone()),
            dims: vec![],
            ..Default::default()
        };
        let Ok(elaborated) = program.elaborate(&opts) else {
            continue;
        };
        let text = ir::print_text(&elaborated.graph);
        let parsed = ir::parse_text(&text).unwrap_or_else(|e| panic!("{spec}/{model}: {e}"));
        assert_eq!(
            ir::print_text(&parsed),
            text,
            "{spec}/{model}: text form does not round-trip"
        );
        assert!(
            ir::verify(&parsed).is_empty(),
            "{spec}/{model}: {:?}",
            ir::verify(&parsed)
        );
    }
}
