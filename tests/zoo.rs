//! Canonical and test configurations of the zoo elaborate with exactly the reference's
//! parameter counts. The table lives in `tests/fixtures/param_counts.tsv` (one row per model,
//! with where the number comes from), so a new spec adds rows, not code.

use bbc::compiler::elab::{FsLoader, Options, Program};
use bbc::compiler::ops::ParamKind;
use bbc::compiler::weights::param_table;
use std::path::Path;

#[test]
fn parameter_counts_match_the_references() {
    let table = std::fs::read_to_string("tests/fixtures/param_counts.tsv").expect("table");
    let mut failures = Vec::new();
    let mut rows = 0;
    for line in table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        assert!(cols.len() >= 5, "malformed row: {line}");
        let (spec, model, args, params, keys) = (cols[0], cols[1], cols[2], cols[3], cols[4]);
        rows += 1;
        let program =
            Program::load(Path::new(spec), &FsLoader).unwrap_or_else(|e| panic!("{}", e.render()));
        let args: Vec<(String, String)> = if args == "-" {
            Vec::new()
        } else {
            args.split(';')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("NAME=VALUE");
                    (k.to_string(), v.to_string())
                })
                .collect()
        };
        let opts = Options {
            model: Some(model.to_string()),
            args,
            ..Default::default()
        };
        let m = match program.elaborate(&opts) {
            Ok(m) => m,
            Err(d) => {
                failures.push(format!(
                    "{model}: {}",
                    bbc::render(&d, Some(&program.sources))
                ));
                continue;
            }
        };
        let table = param_table(&m.graph);
        let learned: usize = table
            .iter()
            .filter(|p| p.kind == ParamKind::Param)
            .map(|p| p.numel())
            .sum();
        if learned.to_string() != params {
            failures.push(format!(
                "{model}: {learned} parameters, the reference has {params}"
            ));
        }
        if keys != "-" && table.len().to_string() != keys {
            failures.push(format!(
                "{model}: {} state_dict keys, the reference has {keys}",
                table.len()
            ));
        }
    }
    assert!(rows >= 7, "the table lost its rows");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
