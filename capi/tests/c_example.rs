//! `examples/embed.c` compiled with the system C compiler against `libbbc`, run, and its
//! printed outputs compared with what the Rust API computes for the same model and input.
//! Without a C compiler the test says so and passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../specs/convnext.bb");

/// The shared library, newest first of where cargo puts it: `target/<profile>/examples`
/// (built by `cargo test` as the `bbc` example) or `target/<profile>` (`cargo build`); this
/// test runs from `target/<profile>/deps`.
fn library() -> PathBuf {
    let file = format!(
        "{}bbc{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("the test's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let candidates = [profile.join("examples").join(&file), profile.join(&file)];
    candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| {
            panic!("{file} is not built (looked for {candidates:?}); run `cargo test -p bbc-capi`")
        })
}

/// `embed.c` compiled and linked against `libbbc` once for all tests, or `None` without a C
/// compiler.
fn build_example() -> Option<PathBuf> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT.get_or_init(compile_example).clone()
}

fn compile_example() -> Option<PathBuf> {
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no C compiler (`cc`) to build examples/embed.c");
        return None;
    }
    let lib_dir = library().parent().expect("a folder").to_path_buf();
    let capi = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bbc-embed-c");
    let out = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
        .arg(capi)
        .arg(capi.join("examples/embed.c"))
        .arg("-L")
        .arg(&lib_dir)
        .args(["-lbbc", "-o"])
        .arg(&exe)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .output()
        .expect("cc runs");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

fn run(exe: &Path, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .output()
        .expect("the example runs")
}

/// The values of the `output NAME [SHAPE]: v0 v1 ...` lines, by name.
fn printed_outputs(stdout: &str) -> Vec<(String, Vec<f32>)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("output "))
        .map(|l| {
            let (head, values) = l.split_once(':').expect("`name [shape]: values`");
            let name = head.split_whitespace().next().expect("a name").to_string();
            let values = values
                .split_whitespace()
                .map(|v| v.parse().expect("a number"))
                .collect();
            (name, values)
        })
        .collect()
}

#[test]
fn the_c_example_prints_what_the_rust_api_computes() {
    let Some(exe) = build_example() else { return };
    let out = run(&exe, &[SPEC, "convnext_test", "H=32", "W=32"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("input x [1, 3, 32, 32]"), "{stdout}");
    let printed = printed_outputs(&stdout);

    let model = facade::Model::builder()
        .model("convnext_test")
        .dim("H", 32)
        .dim("W", 32)
        .compile_file(SPEC)
        .expect("compiles");
    // The input embed.c feeds: element j is ((j % 23) - 11) / 16.
    let x: Vec<f32> = (0..model.inputs()[0].len())
        .map(|j| ((j % 23) as f32 - 11.0) / 16.0)
        .collect();
    let mut y = vec![0.0f32; model.outputs()[0].len()];
    model.run_into(&[&x], &mut [&mut y]).expect("runs");

    assert_eq!(printed.len(), 1, "{stdout}");
    let (name, values) = &printed[0];
    assert_eq!(name, &model.outputs()[0].name);
    assert_eq!(values.len(), y.len());
    let scale = y.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (c, rust) in values.iter().zip(&y) {
        // %.9g prints every float exactly; threads may order sums differently.
        assert!(
            (c - rust).abs() <= 1e-5 * scale,
            "C printed {c}, Rust computed {rust}"
        );
    }
}

#[test]
fn the_c_example_reports_errors_with_their_diagnostics() {
    let Some(exe) = build_example() else { return };
    let out = run(&exe, &[SPEC, "convnext_tset"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error[E0206]") && stderr.contains("did you mean `convnext_test`?"),
        "{stderr}"
    );
}
