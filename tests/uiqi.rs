//! The `uiqi` op (Universal Image Quality Index, Wang & Bovik 2002) against the committed
//! reference values of `tools/reference/uiqi.py` (the MATLAB sum form in exact rational
//! arithmetic), run through the whole pipeline (spec → elaboration → interpreter), plus its
//! properties: uiqi(x, x) = 1, symmetry, and values in [−1, 1].

use bbc::compiler::elab::{Options, Program};
use bbc::compiler::{interp, weights};
use bbc::runtime::{read_npy, Tensor};
use ndarray::IxDyn;
use proptest::prelude::*;
use std::collections::HashMap;
use std::path::Path;

const SPEC: &str = "bb 0.1;
model score(window: int = 8) {
    input a: f32[B, C, H, W];
    input b: f32[B, C, H, W];
    output q = uiqi(a, b, window=window);
}
";

/// Runs `uiqi(a, b, window)` through a spec and the interpreter.
fn uiqi(a: &Tensor, b: &Tensor, window: usize) -> Tensor {
    let program =
        Program::from_source("score.bb", SPEC).unwrap_or_else(|e| panic!("{}", e.render()));
    let s = a.shape();
    let opts = Options {
        model: Some("score".into()),
        dims: ["B", "C", "H", "W"]
            .iter()
            .zip(s)
            .map(|(n, &v)| (n.to_string(), v as i64))
            .collect(),
        args: vec![("window".into(), window.to_string())],
    };
    let model = program
        .elaborate(&opts)
        .unwrap_or_else(|d| panic!("{}", bbc::render(&d, Some(&program.sources))));
    let w = weights::init_weights(&model.graph, 0);
    let inputs = HashMap::from([("a".to_string(), a.clone()), ("b".to_string(), b.clone())]);
    let mut out = interp::run(&model.graph, &inputs, &w).unwrap_or_else(|e| panic!("{e}"));
    out.remove("q").expect("output q")
}

#[test]
fn matches_the_exact_reference_on_every_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/uiqi");
    let text = std::fs::read_to_string(dir.join("cases.json")).expect("cases.json");
    let cases: serde_json::Value = serde_json::from_str(&text).expect("valid json");
    let cases = cases.as_object().expect("an object");
    assert!(cases.len() >= 6, "fixtures lost cases: {}", cases.len());
    for (name, case) in cases {
        let window = case["window"].as_u64().expect("window") as usize;
        let load = |part: &str| read_npy(dir.join(format!("{name}_{part}.npy"))).expect("npy");
        let (a, b, want) = (load("a"), load("b"), load("q"));
        let got = uiqi(&a, &b, window);
        assert_eq!(got.shape(), want.shape(), "{name}");
        for (g, w) in got.iter().zip(want.iter()) {
            assert!((g - w).abs() <= 1e-5, "{name}: got {got}, reference {want}");
        }
    }
}

#[test]
fn the_guards_show_in_the_fixtures() {
    // Identical images score 1, mirrored ones −1, zero-mean windows the MATLAB code's 1.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/uiqi");
    let q = |name: &str| read_npy(dir.join(format!("{name}_q.npy"))).expect("npy");
    assert_eq!(q("identical").iter().copied().collect::<Vec<_>>(), [1.0]);
    assert_eq!(q("zero_mean").iter().copied().collect::<Vec<_>>(), [1.0]);
    assert!((q("mirror")[[0]] + 1.0).abs() < 1e-6);
}

/// Images whose pixels take a few levels, so flat and zero windows are common.
fn images() -> impl Strategy<Value = (Tensor, Tensor, usize)> {
    (1usize..3, 1usize..3, 2usize..7, 2usize..7, 1usize..4).prop_flat_map(|(b, c, h, w, k)| {
        let n = b * c * h * w;
        let k = k.min(h).min(w);
        let pixel = prop_oneof![
            3 => (0u8..3).prop_map(|v| f32::from(v) * 0.5),
            2 => -1.0f32..1.0,
        ];
        (
            proptest::collection::vec(pixel.clone(), n),
            proptest::collection::vec(pixel, n),
        )
            .prop_map(move |(x, y)| {
                let t = |v: Vec<f32>| Tensor::from_shape_vec(IxDyn(&[b, c, h, w]), v).unwrap();
                (t(x), t(y), k)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn identical_images_score_one((x, _y, k) in images()) {
        let q = uiqi(&x, &x, k);
        prop_assert!(q.iter().all(|v| (v - 1.0).abs() <= 1e-6), "{q}");
    }

    #[test]
    fn symmetric_and_bounded((x, y, k) in images()) {
        let (xy, yx) = (uiqi(&x, &y, k), uiqi(&y, &x, k));
        prop_assert_eq!(&xy, &yx);
        prop_assert!(xy.iter().all(|v| (-1.0..=1.0).contains(v)), "{xy}");
        prop_assert_eq!(xy.shape(), &[x.shape()[0]]);
    }
}
