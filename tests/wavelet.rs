//! The Haar wavelet ops against PyWavelets, and their round trip.
//!
//! - `haar_dwt` reproduces `pywt.dwt2(x, 'haar')` and `haar_idwt` reproduces `pywt.idwt2` on
//!   the committed data in `tests/fixtures/reference/wavelet_pywt/` (written by
//!   `tools/reference/cases/wavelet.py`; see the README there), to 1e-6 absolute. Result
//!   channel `4c + k` of `haar_dwt` is band `k` (cA, cH, cV, cD) of input channel `c`.
//! - `haar_idwt(haar_dwt(x)) == x` to 1e-6 on random shapes and values in [-2, 2] (proptest),
//!   both through the op table and through an elaborated spec run by the interpreter.
//! - Odd sizes and channel counts not divisible by 4 are shape errors (E0401) at elaboration.

use bbc::compiler::elab::{Options, Program};
use bbc::compiler::interp;
use bbc::compiler::ops::{lookup, Attrs};
use bbc::runtime::{read_npy, Tensor};
use ndarray::{s, ArrayD, Axis, IxDyn};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const BANDS: [&str; 4] = ["cA", "cH", "cV", "cD"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/wavelet_pywt")
}

fn npy(name: &str) -> Tensor {
    read_npy(fixtures().join(format!("{name}.npy"))).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Runs a parameter-free op through its shape rule and reference implementation.
fn op(name: &str, x: &Tensor) -> Result<Tensor, String> {
    let op = lookup(name).unwrap_or_else(|| panic!("no op {name}"));
    let attrs = Attrs::new();
    let shape = (op.shape)(&attrs, &[x.shape().to_vec()])?;
    let y = (op.eval)(&attrs, &[x]);
    assert_eq!(
        y.shape(),
        &shape[..],
        "{name}: eval disagrees with the shape rule"
    );
    Ok(y)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .fold(0.0, |m, (p, q)| m.max(f64::from((p - q).abs())))
}

/// `[..., C, 4, h, w]` band `k` of every channel: channels k, k+4, ... of the DWT result.
fn band(y: &Tensor, k: usize) -> Tensor {
    y.slice_axis(Axis(1), ndarray::Slice::new(k as isize, None, 4))
        .to_owned()
}

#[test]
fn dwt_matches_pywavelets() {
    let mut worst = 0.0f64;
    for case in ["a", "b"] {
        let x = npy(&format!("{case}.x"));
        let y = op("haar_dwt", &x).unwrap();
        let (b, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        assert_eq!(y.shape(), &[b, 4 * c, h / 2, w / 2]);
        for (k, name) in BANDS.iter().enumerate() {
            let want = npy(&format!("{case}.{name}"));
            let err = max_abs_diff(&band(&y, k), &want);
            assert!(err <= 1e-6, "{case} {name}: max |bbc - pywt| = {err:e}");
            worst = worst.max(err);
        }
    }
    eprintln!("haar_dwt vs pywt.dwt2: max abs error {worst:e}");
}

#[test]
fn idwt_matches_pywavelets() {
    let bands: Vec<Tensor> = BANDS.iter().map(|n| npy(&format!("inv.{n}"))).collect();
    let (b, c, h, w) = {
        let s = bands[0].shape();
        (s[0], s[1], s[2], s[3])
    };
    // Interleave to the haar_dwt layout: channel 4c + k is band k of channel c.
    let mut y = ArrayD::<f32>::zeros(IxDyn(&[b, 4 * c, h, w]));
    for (k, band) in bands.iter().enumerate() {
        for ch in 0..c {
            y.slice_mut(s![.., 4 * ch + k, .., ..])
                .assign(&band.slice(s![.., ch, .., ..]));
        }
    }
    let x = op("haar_idwt", &y).unwrap();
    let err = max_abs_diff(&x, &npy("inv.x"));
    assert!(err <= 1e-6, "max |bbc - pywt.idwt2| = {err:e}");
    eprintln!("haar_idwt vs pywt.idwt2: max abs error {err:e}");
    // And back: the DWT of the reconstruction is the bands again.
    let err = max_abs_diff(&op("haar_dwt", &x).unwrap(), &y);
    assert!(err <= 1e-6, "dwt(idwt(y)) - y = {err:e}");
}

fn elaborate(src: &str) -> Result<bbc::compiler::elab::Elaborated, String> {
    let program = Program::from_source("w.bb", src).map_err(|e| e.render())?;
    program
        .elaborate(&Options::default())
        .map_err(|d| bbc::render(&d, Some(&program.sources)))
}

#[test]
fn shape_errors_are_diagnostics() {
    let check = |dims: &str, op: &str, want: &str| {
        let src = format!(
            "model m() {{\n    input x: f32[{dims}];\n    y = {op}(x);\n    output out = y;\n}}\n"
        );
        let err = elaborate(&src).err().expect("a shape error");
        assert!(
            err.contains(&format!("error[E0401]: shape error in `{op}`")),
            "{err}"
        );
        assert!(err.contains(want), "{err}");
    };
    check(
        "1, 3, 7, 8",
        "haar_dwt",
        "height 7 is odd; the Haar transform halves H and W",
    );
    check(
        "1, 3, 8, 5",
        "haar_dwt",
        "width 5 is odd; the Haar transform halves H and W",
    );
    check(
        "1, 6, 2, 2",
        "haar_idwt",
        "6 channels are not divisible by 4",
    );
}

/// `[lead..., C, 2h, 2w]` with values in [-2, 2].
fn shape_and_values() -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
    (
        prop::collection::vec(1usize..=3, 0..=2),
        1usize..=4,
        1usize..=5,
        1usize..=5,
    )
        .prop_flat_map(|(lead, c, h, w)| {
            let shape: Vec<usize> = lead.into_iter().chain([c, 2 * h, 2 * w]).collect();
            let n: usize = shape.iter().product();
            (Just(shape), prop::collection::vec(-2.0f32..=2.0, n))
        })
}

proptest! {
    // No regression files: failures print their shape and values.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn idwt_inverts_dwt((shape, data) in shape_and_values()) {
        let x = Tensor::from_shape_vec(IxDyn(&shape), data).unwrap();
        let y = op("haar_dwt", &x).unwrap();
        let mut want = shape.clone();
        let r = want.len();
        want[r - 3] *= 4;
        want[r - 2] /= 2;
        want[r - 1] /= 2;
        prop_assert_eq!(y.shape(), &want[..]);
        let back = op("haar_idwt", &y).unwrap();
        let err = max_abs_diff(&back, &x);
        prop_assert!(err <= 1e-6, "shape {:?}: max |idwt(dwt(x)) - x| = {:e}", shape, err);
    }

    #[test]
    fn roundtrip_through_the_interpreter(
        (b, c, h, w) in (1usize..=2, 1usize..=3, 1usize..=4, 1usize..=4),
        seed in any::<u64>(),
    ) {
        let src = format!(
            "model rt() {{\n    input x: f32[{b}, {c}, {}, {}];\n    \
             bands = haar_dwt(x);\n    output y = haar_idwt(bands);\n    output z = bands;\n}}\n",
            2 * h,
            2 * w
        );
        let model = elaborate(&src).map_err(TestCaseError::fail)?;
        // A small LCG: values in [-2, 2].
        let mut state = seed | 1;
        let n = b * c * 4 * h * w;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        let x = Tensor::from_shape_vec(IxDyn(&[b, c, 2 * h, 2 * w]), data).unwrap();
        let inputs = HashMap::from([("x".to_string(), x.clone())]);
        let out = interp::run(&model.graph, &inputs, &BTreeMap::new())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(out["z"].shape(), &[b, 4 * c, h, w][..]);
        let err = max_abs_diff(&out["y"], &x);
        prop_assert!(err <= 1e-6, "max |idwt(dwt(x)) - x| = {:e}", err);
    }
}
