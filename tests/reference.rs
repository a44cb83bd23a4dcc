//! The interpreter against PyTorch: every case in `tests/fixtures/reference/` (made by
//! `tools/reference/make_fixtures.py`) is elaborated from its spec, loads the reference's
//! weights by name, and must reproduce the reference outputs.

mod common;

use bbc::compiler::interp;

#[test]
fn interpreter_matches_pytorch_on_every_fixture() {
    let cases = common::reference_fixtures();
    assert!(
        cases.len() >= 7,
        "expected the committed fixtures, found {}",
        cases.len()
    );
    for case in cases {
        let name = &case.label;
        let outputs = interp::run(&case.model.graph, &case.inputs, &case.weights)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for o in &case.outputs {
            let expected = case.expected(o);
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
