//! Embedding bbc in a Rust program: compile a model of a bundled spec, initialise its weights
//! (or load a checkpoint), run it on an input and print a summary of every output.
//!
//! ```sh
//! cargo run --example embed -- [SPEC [MODEL]] [NAME=VALUE ...] [WEIGHTS.safetensors]
//! cargo run --example embed -- specs/convnext.bb convnext_test H=64 W=64
//! ```
//!
//! `NAME=VALUE` binds a size parameter of the model's input. The spec defaults to
//! `specs/convnext.bb` and its `convnext_test` model. Inputs are drawn from N(0, 1) with seed
//! 0 and weights seeded with 0 unless a checkpoint is given, exactly as `bbc run` does, so
//! the lines printed here are the ones `bbc run SPEC --model MODEL` prints.

use bbc::{CompileOptions, Model, Summary, Target, Tensor, Weights};
use std::path::PathBuf;
use std::process::ExitCode;

/// What to compile: the spec and the options read from the command line.
struct Request {
    spec: PathBuf,
    options: CompileOptions,
}

/// Reads `[SPEC [MODEL]] [NAME=VALUE ...] [WEIGHTS.safetensors]`.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Request, String> {
    let mut positional = Vec::new();
    let mut options = CompileOptions::new();
    for arg in args {
        if arg.ends_with(".safetensors") {
            options = options.weights(Weights::File(arg.into()));
        } else if let Some((name, value)) = arg.split_once('=') {
            let value: i64 = value
                .parse()
                .map_err(|_| format!("`{arg}`: the size must be an integer"))?;
            options = options.dim(name, value);
        } else {
            positional.push(arg);
        }
    }
    let mut positional = positional.into_iter();
    let spec = positional.next().map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("specs/convnext.bb"),
        PathBuf::from,
    );
    let model = positional.next().unwrap_or_else(|| "convnext_test".into());
    if let Some(extra) = positional.next() {
        return Err(format!("unexpected argument `{extra}`"));
    }
    Ok(Request {
        spec,
        options: options.model(model),
    })
}

/// Compiles the requested model for `target` and runs it once on its seeded inputs.
fn infer(request: &Request, target: Target) -> bbc::Result<(Model, Vec<Tensor>)> {
    let model = request
        .options
        .clone()
        .target(target)
        .compile_file(&request.spec)?;
    let inputs = model.random_inputs(0);
    let views: Vec<_> = inputs.iter().map(|x| x.view()).collect();
    let outputs = model.run(&views)?;
    Ok((model, outputs))
}

/// One line per output, with its shape and summary, and its first values.
fn report(model: &Model, outputs: &[Tensor]) -> String {
    let mut text = String::new();
    for (info, y) in model.outputs().iter().zip(outputs) {
        let summary = Summary::of(y).map_or_else(|| "empty".into(), |s| s.to_string());
        let first: Vec<String> = y.iter().take(6).map(|v| format!("{v:.6}")).collect();
        let more = if y.len() > 6 { ", ..." } else { "" };
        text += &format!("{}: f32{:?}  {summary}\n", info.name, info.shape);
        text += &format!("  [{}{more}]\n", first.join(", "));
    }
    text
}

fn main() -> ExitCode {
    let request = match parse_args(std::env::args().skip(1)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match infer(&request, Target::Cpu) {
        Ok((model, outputs)) => {
            print!("{}", report(&model, &outputs));
            ExitCode::SUCCESS
        }
        // Diagnostics display with their source snippets.
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(args: &[&str]) -> Request {
        parse_args(args.iter().map(|s| s.to_string())).unwrap()
    }

    #[test]
    fn the_default_model_matches_the_interpreter() {
        let request = request(&["H=64", "W=64"]);
        let (model, got) = infer(&request, Target::Cpu).unwrap();
        let (_, want) = infer(&request, Target::Interp).unwrap();
        assert_eq!(model.inputs()[0].shape, [1, 3, 64, 64]);
        for (g, w) in got.iter().zip(&want) {
            let scale = w.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let err = g
                .iter()
                .zip(w)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 2e-5 * scale, "error {err:e}");
        }
        let text = report(&model, &got);
        assert!(text.starts_with("logits: f32[1, 10]  min "), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn arguments_choose_spec_model_sizes_and_weights() {
        let r = request(&[
            "specs/deep_sets.bb",
            "deep_sets_mean",
            "N=9",
            "w.safetensors",
        ]);
        assert_eq!(r.spec, PathBuf::from("specs/deep_sets.bb"));
        let debug = format!("{:?}", r.options);
        assert!(
            debug.contains("deep_sets_mean") && debug.contains("\"N\", 9"),
            "{debug}"
        );
        assert!(debug.contains("w.safetensors"), "{debug}");
        assert!(parse_args(["H=x".to_string()]).is_err());
        assert!(parse_args(["a", "b", "c"].map(String::from)).is_err());
    }

    #[test]
    fn a_missing_checkpoint_is_a_weights_error() {
        let request = request(&["H=32", "W=32", "no_such_file.safetensors"]);
        match infer(&request, Target::Cpu) {
            Err(bbc::Error::Weights(d)) => {
                assert!(d.to_string().contains("no_such_file.safetensors"), "{d}")
            }
            other => panic!("{:?}", other.map(|(m, _)| m)),
        }
    }
}
