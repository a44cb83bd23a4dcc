//! Elaboration semantics on small programs: parameter naming, sharing, size parameters,
//! variants, compile-time arithmetic, and the errors each rule produces.

use bbc_compiler::elab::{Elaborated, Options, Program};
use bbc_compiler::weights::param_table;

fn elaborate(src: &str, model: Option<&str>, dims: &[(&str, i64)]) -> Result<Elaborated, String> {
    let program = Program::from_source("t.bb", src).map_err(|e| e.render())?;
    let opts = Options {
        model: model.map(str::to_string),
        dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..Default::default()
    };
    program.elaborate(&opts).map_err(|ds| {
        ds.iter()
            .map(|d| format!("{} {}", d.code, d.message))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

fn keys(src: &str) -> Vec<String> {
    let m = elaborate(src, None, &[]).unwrap_or_else(|e| panic!("{e}"));
    param_table(&m.graph)
        .into_iter()
        .map(|p| format!("{} {:?}", p.key, p.shape))
        .collect()
}

fn error(src: &str) -> String {
    match elaborate(src, None, &[]) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn binding_names_seq_indices_tags_and_loops_make_pytorch_keys() {
    let k = keys(
        r#"
block unit(x: tensor[B, C, H, W], out: int) -> tensor {
    conv = conv2d(x, out=out, k=3, pad=1, bias=false);
    bn = batch_norm2d(conv);
    return relu(bn);
}
model m() {
    input x: f32[1, 3, 8, 8];
    stem = x |> seq { conv2d(out=4, k=1); relu(); conv2d(out=4, k=1); };
    h = stem;
    for i in 0..2 as "layer{i + 1}" {
        h = unit(h, 4) @_;
    }
    scope "head" {
        fc = linear(flatten(h), out=2) @"proj";
    }
    output y = fc;
}
"#,
    );
    assert_eq!(
        k,
        [
            "head.proj.bias [2]",
            "head.proj.weight [2, 256]",
            "layer1.bn.bias [4]",
            "layer1.bn.running_mean [4]",
            "layer1.bn.running_var [4]",
            "layer1.bn.weight [4]",
            "layer1.conv.weight [4, 4, 3, 3]",
            "layer2.bn.bias [4]",
            "layer2.bn.running_mean [4]",
            "layer2.bn.running_var [4]",
            "layer2.bn.weight [4]",
            "layer2.conv.weight [4, 4, 3, 3]",
            "stem.0.bias [4]",
            "stem.0.weight [4, 3, 1, 1]",
            "stem.2.bias [4]",
            "stem.2.weight [4, 4, 1, 1]",
        ]
    );
}

#[test]
fn applying_one_layer_value_twice_shares_its_parameters() {
    let src = r#"
model m() {
    input a: f32[2, 4];
    input b: f32[2, 4];
    proj = linear(out=3);
    pa = proj(a);
    pb = b |> proj;
    output y = pa + pb;
}
"#;
    assert_eq!(keys(src), ["proj.bias [3]", "proj.weight [3, 4]"]);
}

#[test]
fn two_calls_with_one_path_are_a_duplicate_not_sharing() {
    let e = error(
        r#"
model m() {
    input a: f32[2, 4];
    p = linear(a, out=3) @"fc";
    q = linear(a, out=3) @"fc";
    output y = p + q;
}
"#,
    );
    assert!(e.contains("E0304"), "{e}");
}

#[test]
fn an_unnamed_parameterised_call_is_an_error() {
    let e = error(
        r#"
model m() {
    input x: f32[1, 3, 8, 8];
    y = relu(conv2d(x, out=3, k=1)) + x;
    output out = y;
}
"#,
    );
    assert!(e.contains("E0303"), "{e}");
}

#[test]
fn size_parameters_take_defaults_or_overrides() {
    let src = r#"
model m(c: int = 3) {
    input x: f32[B=1, c, H=8, W=W0];
    output y = mean(x, axes=[2, 3]);
}
let W0 = 6;
"#;
    let m = elaborate(src, None, &[("H", 5), ("B", 2)]).unwrap();
    let x = m.graph.node(m.graph.inputs[0]);
    assert_eq!(x.shape, [2, 3, 5, 6]);
    let e = elaborate(src, None, &[("Q", 5)])
        .err()
        .expect("unknown dim");
    assert!(e.contains("E0207"), "{e}");
}

#[test]
fn variants_override_and_may_take_parameters() {
    let src = r#"
model base(width: int = 2, depth: int = 1) {
    input x: f32[1, 4];
    h = x;
    for i in 0..depth as "layers.{i}" {
        h = linear(h, out=width) @_;
    }
    output y = h;
}
model wide = base(width=8);
model scaled(phi: int) = base(width=2 ** phi, depth=phi);
"#;
    let m = elaborate(src, Some("wide"), &[]).unwrap();
    assert_eq!(m.graph.node(m.graph.outputs[0].value).shape, [1, 8]);
    let e = elaborate(src, Some("scaled"), &[])
        .err()
        .expect("phi has no value");
    assert!(e.contains("E0313") || e.contains("needs argument"), "{e}");
    let program = Program::from_source("t.bb", src).unwrap();
    let opts = Options {
        model: Some("scaled".into()),
        args: vec![("phi".into(), "3".into())],
        ..Default::default()
    };
    let m = program.elaborate(&opts).unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(m.graph.node(m.graph.outputs[0].value).shape, [1, 8]);
    assert_eq!(param_table(&m.graph).len(), 6, "three layers of width 2**3");
    // The command line is the outermost setting: it replaces what a variant fixes, as
    // keyword arguments to timm's `create_model` replace a variant's `model_args`.
    let opts = Options {
        model: Some("wide".into()),
        args: vec![("width".into(), "5".into()), ("depth".into(), "2".into())],
        ..Default::default()
    };
    let m = program.elaborate(&opts).unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(m.graph.node(m.graph.outputs[0].value).shape, [1, 5]);
    assert_eq!(param_table(&m.graph).len(), 4, "two layers");
    let opts = Options {
        model: Some("wide".into()),
        args: vec![("heigth".into(), "5".into())],
        ..Default::default()
    };
    let e = format!(
        "{:?}",
        program.elaborate(&opts).err().expect("no such parameter")
    );
    assert!(e.contains("no parameter `heigth`"), "{e}");
    let e = elaborate(src, Some("wid"), &[])
        .err()
        .expect("unknown model");
    assert!(e.contains("E0206"), "{e}");
}

#[test]
fn compile_time_arithmetic_follows_python() {
    let src = r#"
model m() {
    assert -7 // 2 == -4, "floor division";
    assert -7 % 3 == 2, "modulo takes the divisor's sign";
    assert round(2.5) == 2 && round(3.5) == 4 && round(-0.5) == 0, "round half to even";
    assert make_divisible(32 * 1.1, 8) == 32 && make_divisible(24 * 1.4, 8) == 32, "make_divisible";
    assert make_divisible(15, 8) == 16 && make_divisible(10, 8) == 16, "make_divisible bump";
    assert [x * 2 for x in 0..4 if x != 1] == [0, 4, 6], "comprehension";
    assert len(zip([1, 2, 3], ["a", "b"])) == 2, "zip";
    assert [i for (i, v) in enumerate([5, 6])] == [0, 1], "enumerate";
    assert 2 ** 10 == 1024 && 7 / 2 == 3.5, "powers and true division";
    input x: f32[1, 2];
    output y = x;
}
"#;
    elaborate(src, None, &[]).unwrap();
}

#[test]
fn integer_overflow_is_an_error_not_a_wrap() {
    let e = error("model m() { let a = 9223372036854775807 + 1; input x: f32[1]; output y = x; }");
    assert!(e.contains("E0308"), "{e}");
}

#[test]
fn independent_errors_are_all_reported() {
    let e = error(
        r#"
model m() {
    input x: f32[1, 3, 8, 8];
    a = conv2d(x, out=4, k=3, groups=2);
    b = relu(undefined_name);
    c = linear(x, outt=3);
    output y = x;
}
"#,
    );
    assert!(
        e.contains("E0401") && e.contains("E0201") && e.contains("E0203"),
        "{e}"
    );
}

#[test]
fn endless_loops_and_recursion_stop_with_a_diagnostic() {
    let e = error("model m() { let n = 0; for i in 0..1000000 { for j in 0..1000000 { let n = i; } } input x: f32[1]; output y = x; }");
    assert!(e.contains("E0311"), "{e}");
    let e = error("block b(x: tensor) -> tensor { return b(x) @_; } model m() { input x: f32[1]; y = b(x); output o = y; }");
    assert!(e.contains("E0311"), "{e}");
}

#[test]
fn duplicate_parameters_and_pattern_clashes_are_errors() {
    let e = error("model m(x: int = 1, x: int = 2) { input y: f32[1, 4]; output o = y; }");
    assert!(e.contains("E0202"), "{e}");
    let e = error(
        "block b(x: tensor[B, C], B: int = 7) -> tensor { return x; }\n\
         model m() { input x: f32[1, 4]; y = b(x); output o = y; }",
    );
    assert!(e.contains("E0301") && e.contains("`B` is both"), "{e}");
}

#[test]
fn an_item_imported_along_two_paths_is_one_item() {
    use bbc_compiler::elab::MemLoader;
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    let files = HashMap::from([
        (
            PathBuf::from("lib/a.bb"),
            "let K = 3;\nblock blk(x: tensor) -> tensor { return relu(x); }".to_string(),
        ),
        (PathBuf::from("lib/b.bb"), "import \"a.bb\";".to_string()),
        (PathBuf::from("lib/c.bb"), "import \"a.bb\";".to_string()),
        (
            PathBuf::from("main.bb"),
            "\u{feff}import \"lib/b.bb\";\nimport \"lib/c.bb\";\n\
             model m() { input x: f32[1, 4]; assert K == 3; y = blk(x); output o = y; }"
                .to_string(),
        ),
    ]);
    let program =
        Program::load(Path::new("main.bb"), &MemLoader(files)).unwrap_or_else(|e| panic!("{e:?}"));
    program
        .elaborate(&Options::default())
        .unwrap_or_else(|d| panic!("{d:?}"));
}

#[test]
fn a_let_used_before_it_is_defined_is_reported() {
    let e = error(
        "let A = B + 1;\nlet B = 2;\nmodel m() { input x: f32[1]; assert A == 3; output o = x; }",
    );
    assert!(e.contains("E0201") && e.contains("`B`"), "{e}");
}

/// `resolve` checks the spec as a whole, as listing its models (`bbc models`) needs: a model
/// defined twice was listed twice while every `check` refused it.
#[test]
fn resolving_a_spec_finds_names_defined_twice() {
    let one = "bb 0.1;\nmodel m() { input x: f32[1, 4]; output y = x; }\n";
    let program = Program::from_source("t.bb", one).expect("parses");
    assert!(program.resolve().is_ok());
    assert_eq!(program.models(), ["m"]);
    let twice = format!("{one}model m() {{ input x: f32[1, 4]; output y = x; }}\n");
    let program = Program::from_source("t.bb", &twice).expect("parses");
    let diags = program.resolve().expect_err("defined twice");
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].code, "E0202");
    assert!(
        diags[0].message.contains("defined twice"),
        "{}",
        diags[0].message
    );
}
