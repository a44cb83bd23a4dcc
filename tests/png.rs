//! PNG input and output: the runtime's `read_png`/`write_png` round trip, and `bbc run` on
//! `.png` files end to end — super-resolving a small generated image with the tiny RDN of
//! `specs/rdn.bb` into a PNG of twice the size, then scoring it with the `uiqi` op through a
//! second spec that takes two PNG inputs.

use bbc::runtime::{read_npy, read_png, write_png, Tensor};
use ndarray::IxDyn;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bbc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bbc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("bbc runs")
}

fn ok(args: &[&str]) -> String {
    let out = bbc(args);
    assert!(
        out.status.success(),
        "bbc {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = bbc(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "bbc {args:?} should fail with 1"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A scratch folder removed at the end of the test.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("bbc-png-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Scratch(dir)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A smooth colour test image on the 8-bit grid, [1, 3, h, w].
fn test_image(h: usize, w: usize) -> Tensor {
    Tensor::from_shape_fn(IxDyn(&[1, 3, h, w]), |i| {
        let (c, y, x) = (i[1] as f32, i[2] as f32, i[3] as f32);
        let v = 0.5 + 0.4 * ((0.7 + 0.3 * c) * x / w as f32 * 3.0 + y / h as f32 * 2.0 - c).sin();
        (v * 255.0).round() / 255.0
    })
}

#[test]
fn round_trip_keeps_8_bit_images_exactly() {
    let dir = Scratch::new("round-trip");
    let rgb = test_image(5, 7);
    let p = dir.path("rgb.png");
    write_png(&p, &rgb).expect("write");
    assert_eq!(read_png(&p).expect("read"), rgb);

    let grey = Tensor::from_shape_fn(IxDyn(&[1, 6, 4]), |i| {
        ((i[1] * 4 + i[2]) * 10) as f32 / 255.0
    });
    let p = dir.path("grey.png");
    write_png(&p, &grey).expect("write [C, H, W]");
    let back = read_png(&p).expect("read");
    assert_eq!(back.shape(), &[1, 1, 6, 4]);
    assert_eq!(
        back.iter().copied().collect::<Vec<_>>(),
        grey.iter().copied().collect::<Vec<_>>()
    );

    // Out-of-range values clamp; off-grid values round to the nearest level.
    let odd = Tensor::from_shape_vec(IxDyn(&[1, 1, 1, 3]), vec![-3.0, 0.3, 7.0]).unwrap();
    write_png(&p, &odd).expect("write");
    let back: Vec<f32> = read_png(&p).expect("read").iter().copied().collect();
    assert_eq!(back, [0.0, 77.0 / 255.0, 1.0]);
}

#[test]
fn rdn_super_resolves_a_png_and_uiqi_scores_it() {
    let dir = Scratch::new("rdn");
    let (h, w) = (12, 10);
    let lr = test_image(h, w);
    write_png(dir.path("lr.png"), &lr).expect("write input");

    // The tiny RDN is built for 8x8 inputs: a 12x10 image is refused with a hint ...
    let err = fails(&[
        "run",
        "specs/rdn.bb",
        "--model",
        "rdn_test",
        "--input",
        &dir.path("lr.png"),
        "--output",
        &dir.path("sr.png"),
    ]);
    assert!(err.contains("has 12x10 RGB pixels"), "{err}");
    assert!(err.contains("--dim H=12 --dim W=10"), "{err}");
    assert!(!Path::new(&dir.path("sr.png")).exists());

    // ... and taken once the size parameters say so.
    let out = ok(&[
        "run",
        "specs/rdn.bb",
        "--model",
        "rdn_test",
        "--dim",
        "H=12",
        "--dim",
        "W=10",
        "--input",
        &dir.path("lr.png"),
        "--output",
        &dir.path("sr.png"),
    ]);
    assert!(out.starts_with("sr: f32[1, 3, 24, 20]"), "{out}");
    let sr = read_png(dir.path("sr.png")).expect("output PNG");
    assert_eq!(sr.shape(), &[1, 3, 2 * h, 2 * w]);
    assert!(sr.iter().all(|v| (0.0..=1.0).contains(v)));

    // The reference: the low-resolution image enlarged by pixel repetition.
    let reference = Tensor::from_shape_fn(IxDyn(&[1, 3, 2 * h, 2 * w]), |i| {
        lr[[0, i[1], i[2] / 2, i[3] / 2]]
    });
    write_png(dir.path("ref.png"), &reference).expect("write reference");
    let spec = dir.path("score.bb");
    std::fs::write(
        &spec,
        "bb 0.1;\nmodel score() {\n    input a: f32[1, 3, H=16, W=16];\n    input b: f32[1, 3, H, W];\n    \
         output q = uiqi(a, b);\n}\n",
    )
    .expect("write spec");
    let score = |a: &str, b: &str, to: &str| -> f32 {
        ok(&[
            "run",
            &spec,
            "--dim",
            "H=24",
            "--dim",
            "W=20",
            "--input",
            &format!("a={a}"),
            "--input",
            &format!("b={b}"),
            "--output",
            to,
        ]);
        let q = read_npy(to).expect("score written");
        assert_eq!(q.shape(), &[1]);
        q[[0]]
    };
    let same = score(
        &dir.path("ref.png"),
        &dir.path("ref.png"),
        &dir.path("q_same.npy"),
    );
    assert!((same - 1.0).abs() < 1e-6, "uiqi(ref, ref) = {same}");
    let q = score(
        &dir.path("sr.png"),
        &dir.path("ref.png"),
        &dir.path("q.npy"),
    );
    let q_swapped = score(
        &dir.path("ref.png"),
        &dir.path("sr.png"),
        &dir.path("q2.npy"),
    );
    assert!((-1.0..1.0).contains(&q), "uiqi(sr, ref) = {q}");
    assert_eq!(q, q_swapped);
}

#[test]
fn png_shape_errors_are_reported_before_running() {
    let dir = Scratch::new("errors");
    // An output that is not an image cannot become a PNG.
    let err = fails(&[
        "run",
        "specs/deep_sets.bb",
        "--model",
        "deep_sets_sum",
        "--output",
        &dir.path("y.png"),
    ]);
    assert!(err.contains("cannot write output `y` [2, 1] to"), "{err}");
    assert!(err.contains("[1, C, H, W]"), "{err}");
    // A grey image for a colour model.
    let grey = Tensor::from_elem(IxDyn(&[1, 1, 8, 8]), 0.5);
    write_png(dir.path("grey.png"), &grey).expect("write");
    let err = fails(&[
        "run",
        "specs/rdn.bb",
        "--model",
        "rdn_test",
        "--input",
        &dir.path("grey.png"),
    ]);
    assert!(
        err.contains("has 8x8 grey pixels") && err.contains("RGB images"),
        "{err}"
    );
    // An input of a channel count no PNG is read as: no conversion can help.
    let err = fails(&[
        "run",
        "specs/deep_sets.bb",
        "--model",
        "deep_sets_sum",
        "--input",
        &dir.path("grey.png"),
    ]);
    assert!(
        err.contains("takes 2 channels, so give it as a .npy array")
            && !err.contains("convert the PNG"),
        "{err}"
    );
    // Not a PNG at all.
    std::fs::write(dir.path("fake.png"), b"GIF89a").expect("write");
    let err = fails(&[
        "run",
        "specs/rdn.bb",
        "--model",
        "rdn_test",
        "--input",
        &dir.path("fake.png"),
    ]);
    assert!(
        err.contains("cannot read input `x`") && err.contains("not a readable PNG"),
        "{err}"
    );
}
