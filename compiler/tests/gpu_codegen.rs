//! GPU code generation: every kernel of the zoo's test models is emitted in WGSL and CUDA C;
//! every WGSL source must parse and validate with naga, and every CUDA source must compile
//! to PTX for sm_80 and sm_90 with NVRTC when the library is present (a visible skip
//! otherwise: put the `nvidia-cuda-nvrtc-cu12` wheel's `lib` folder on `LD_LIBRARY_PATH`).
//! Launch plans of every zoo model must validate, keep graph outputs in the arena, and never
//! let a launch's output overlap a buffer it reads. Representative kernels are pinned as
//! insta snapshots in both dialects.

mod kernel_common;

use bbc_compiler::codegen::gpu::{self, arena_bindings, plan, Dialect, GpuError, GpuOptions};
use bbc_compiler::ir::{Graph, NodeKind};
use bbc_compiler::kernel::{lower_node, Kernel};
use bbc_compiler::weights::init_weights;
use bbc_runtime::gpu::{BindingAccess, LaunchPlan, Place};
use kernel_common::{optimize, parse, zoo_graph, ZOO_MODELS};
use std::collections::BTreeSet;

/// Parses and validates a WGSL module with naga, as wgpu does.
fn validate_wgsl(source: &str) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    )
    .validate(&module)
    .map_err(|e| e.emit_to_string(source))?;
    Ok(())
}

/// Compiles CUDA sources to PTX for sm_80 and sm_90; `false` when NVRTC is not present.
fn compile_cuda(sources: &[(String, String)]) -> bool {
    // SAFETY: only tries to load the library; every other NVRTC call panics without it.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return false;
    }
    for arch in ["sm_80", "sm_90"] {
        for (name, source) in sources {
            let opts = cudarc::nvrtc::CompileOptions {
                arch: Some(arch),
                ..Default::default()
            };
            if let Err(e) = cudarc::nvrtc::compile_ptx_with_opts(source, opts) {
                panic!("{name} does not compile for {arch}: {e:?}\n{source}");
            }
        }
    }
    true
}

/// A graph in the IR text form, optimised at -O2.
fn optimized(text: &str) -> Graph {
    let mut graph = parse(text);
    optimize(&mut graph);
    graph
}

fn computed(graph: &Graph) -> Vec<bbc_compiler::ir::ValueId> {
    graph
        .topo_order()
        .into_iter()
        .filter(|&id| {
            matches!(
                graph.node(id).kind,
                NodeKind::Op { .. } | NodeKind::Fused { .. }
            )
        })
        .collect()
}

fn emit(kernel: &Kernel, dialect: Dialect, opts: &GpuOptions) -> gpu::Emitted {
    gpu::emit(kernel, dialect, &arena_bindings(kernel, dialect), opts)
        .unwrap_or_else(|e| panic!("{} ({}): {e}", kernel.name, kernel.origin))
}

#[test]
fn every_zoo_kernel_emits_valid_wgsl_and_cuda() {
    let mut kinds = BTreeSet::new();
    let mut cuda = Vec::new();
    let mut wgsl = 0;
    // The zoo's test models are too small for tensor cores; the last graph is not.
    let mut graphs: Vec<(&str, Graph)> = ZOO_MODELS.iter().map(|m| (m.1, zoo_graph(m))).collect();
    graphs.push(("tensor_core", optimized(TENSOR_CORE_GRAPH)));
    for (label, graph) in &graphs {
        for id in computed(graph) {
            // Parameter-only nodes lower too; the zoo has no node without a kernel.
            let kernel = lower_node(graph, id)
                .unwrap_or_else(|e| panic!("{label}: {}: {e}", graph.node(id).name));
            kinds.insert(kernel.origin.clone());
            let w = emit(&kernel, Dialect::Wgsl, &GpuOptions::default());
            if let Err(e) = validate_wgsl(&w.source) {
                panic!(
                    "{}: `{}` ({}):\n{e}\n{}",
                    label, kernel.name, kernel.origin, w.source
                );
            }
            wgsl += 1;
            for tensor_cores in [false, true] {
                let c = emit(&kernel, Dialect::Cuda, &GpuOptions { tensor_cores });
                cuda.push((format!("{label}: {}", kernel.name), c.source));
            }
        }
    }
    for kind in ["elementwise", "epilogue", "dwconv_norm", "attention", "fff"] {
        assert!(
            kinds.contains(kind),
            "no `{kind}` kernel in the zoo: {kinds:?}"
        );
    }
    cuda.sort();
    cuda.dedup();
    let tensor_core = cuda.iter().filter(|(_, s)| s.contains("mma.sync")).count();
    assert!(
        tensor_core > 0,
        "no product in the zoo runs on tensor cores"
    );
    println!("{wgsl} WGSL kernels validated; kinds {kinds:?}");
    if compile_cuda(&cuda) {
        println!(
            "{} CUDA kernels ({tensor_core} on tensor cores) compiled for sm_80 and sm_90",
            cuda.len()
        );
    } else {
        println!(
            "SKIPPED: NVRTC not found; {} CUDA kernels were generated but not compiled",
            cuda.len()
        );
    }
}

/// Checks the invariants every executor relies on beyond [`LaunchPlan::validate`].
fn check_plan(
    name: &str,
    plan: &LaunchPlan,
    constants: &std::collections::BTreeMap<String, bbc_runtime::Tensor>,
) {
    plan.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    for key in plan.constant_keys() {
        assert!(constants.contains_key(key), "{name}: no constant `{key}`");
    }
    for b in &plan.buffers {
        if let Place::Constant { key } = &b.place {
            assert_eq!(constants[key].len(), b.len, "{name}: constant `{key}`");
        }
    }
    for o in &plan.outputs {
        assert!(
            matches!(plan.buffers[o.buffer].place, Place::Arena { .. }),
            "{name}: output `{}` is not in the arena",
            o.name
        );
    }
    let range = |b: usize| match plan.buffers[b].place {
        Place::Arena { offset } => Some(offset..offset + plan.buffers[b].len),
        Place::Constant { .. } => None,
    };
    for l in &plan.launches {
        let (out, reads) = l.args.split_last().expect("a launch binds its output");
        let out = range(*out).expect("outputs live in the arena");
        for r in reads.iter().filter_map(|&b| range(b)) {
            assert!(
                r.end <= out.start || out.end <= r.start || r.is_empty() || out.is_empty(),
                "{name}: launch `{}` writes {out:?} over a buffer it reads, {r:?}",
                l.step
            );
        }
    }
    assert!(plan.kernels.len() <= plan.launches.len());
}

#[test]
fn zoo_plans_validate() {
    for model in ZOO_MODELS {
        let graph = zoo_graph(model);
        let weights = init_weights(&graph, 3);
        for dialect in [Dialect::Wgsl, Dialect::Cuda] {
            let (plan, constants) = plan::build(&graph, &weights, dialect, &GpuOptions::default())
                .unwrap_or_else(|e| panic!("{}: {e}", model.1));
            check_plan(model.1, &plan, &constants);
            assert_eq!(plan.inputs.len(), graph.inputs.len());
            assert_eq!(plan.outputs.len(), graph.outputs.len());
            if dialect == Dialect::Wgsl {
                for k in &plan.kernels {
                    validate_wgsl(&k.source)
                        .unwrap_or_else(|e| panic!("{}: {}:\n{e}", model.1, k.name));
                }
            }
        }
    }
}

#[test]
fn outputs_that_are_inputs_or_constants_are_copied() {
    let graph = optimized(
        "graph t {
  input %x: f32[2, 3]
  param %w: f32[2, 3] = uniform(1.0)
  %y = relu(%x): f32[2, 3]
  output %a = %x
  output %b = %w
  output %c = %y
}
",
    );
    let weights = init_weights(&graph, 1);
    for dialect in [Dialect::Wgsl, Dialect::Cuda] {
        let (plan, constants) =
            plan::build(&graph, &weights, dialect, &GpuOptions::default()).expect("builds");
        check_plan("copies", &plan, &constants);
        let copies: Vec<&bbc_runtime::gpu::Launch> = plan
            .launches
            .iter()
            .filter(|l| l.step == "a" || l.step == "b")
            .collect();
        assert_eq!(copies.len(), 2);
        assert_eq!(constants.len(), 1);
        assert_eq!(constants["w"], weights["w"]);
        // The constant is bound read-only; in CUDA every input is, so both copies share one
        // kernel, while WGSL binds the arena read-write (one buffer, one access per dispatch).
        let constant_copy = &plan.kernels[copies[1].kernel];
        assert_eq!(constant_copy.bindings[0], BindingAccess::Read);
        let shared = copies[0].kernel == copies[1].kernel;
        assert_eq!(shared, dialect == Dialect::Cuda);
    }
}

#[test]
fn unlowerable_nodes_are_all_listed() {
    let group = |name: &str, input: &str| {
        format!(
            "  %{name} = fused elementwise(%{input}): f32[2, 3] {{
    input %in0: f32[2, 3]
    %{name}_s = softmax(%in0) {{axis=-1}}: f32[2, 3]
    %{name} = exp(%{name}_s): f32[2, 3]
    output %out = %{name}
  }}
"
        )
    };
    let text = format!(
        "graph t {{\n  input %x: f32[2, 3]\n{}{}  output %out = %h\n}}\n",
        group("g", "x"),
        group("h", "g")
    );
    let graph = parse(&text);
    let err = plan::build(
        &graph,
        &Default::default(),
        Dialect::Cuda,
        &GpuOptions::default(),
    )
    .expect_err("a softmax inside an elementwise group has no kernel");
    let GpuError::Unsupported(nodes) = &err else {
        panic!("{err}")
    };
    let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["g", "h"], "{err}");
    assert!(err.to_string().contains("softmax"), "{err}");
}

/// Largest `|got − want|` over all outputs, relative to each output's scale
/// (`max(1, max |want|)`); NaN where `want` is not counts as infinitely far.
fn deviation(
    got: &std::collections::BTreeMap<String, bbc_runtime::Tensor>,
    want: &std::collections::BTreeMap<String, bbc_runtime::Tensor>,
) -> f64 {
    want.iter()
        .map(|(name, w)| {
            let g = &got[name];
            let scale = w.iter().fold(1f64, |m, &x| m.max(f64::from(x).abs()));
            g.iter()
                .zip(w.iter())
                .map(|(&g, &w)| match (g.is_nan(), w.is_nan()) {
                    (true, true) => 0.0,
                    (false, false) => f64::from(g - w).abs() / scale,
                    _ => f64::INFINITY,
                })
                .fold(0.0, f64::max)
        })
        .fold(0.0, f64::max)
}

/// Runs `graph` through the CUDA plan with seeded weights and inputs; returns the deviation
/// from the interpreter and how many launches ran on tensor cores.
fn cuda_deviation(label: &str, graph: &Graph, opts: &GpuOptions) -> (f64, usize) {
    let weights = init_weights(graph, 5);
    let mut rng = kernel_common::Rng(17);
    let inputs: std::collections::HashMap<String, bbc_runtime::Tensor> = graph
        .inputs
        .iter()
        .map(|&i| (graph.node(i).name.clone(), rng.tensor(&graph.node(i).shape)))
        .collect();
    let want = bbc_compiler::interp::run(graph, &inputs, &weights)
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let (plan, constants) = plan::build(graph, &weights, Dialect::Cuda, opts)
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let tensor_core = plan
        .launches
        .iter()
        .filter(|l| plan.kernels[l.kernel].source.contains("mma.sync"))
        .count();
    let mut exe =
        bbc_runtime::gpu::open(plan, &constants).unwrap_or_else(|e| panic!("{label}: {e}"));
    let got = exe.run(&inputs).unwrap_or_else(|e| panic!("{label}: {e}"));
    (deviation(&got, &want), tensor_core)
}

/// Products large enough for tensor cores (each over 64 images or batch entries, so that
/// they have the workgroups tensor cores ask for), with partial edge tiles: a padded
/// convolution with its epilogue and a batched matrix product.
const TENSOR_CORE_GRAPH: &str = r#"graph t {
  input %x: f32[64, 16, 18, 15]
  param %c.weight: f32[64, 16, 3, 3] = uniform(0.2)
  param %c.bias: f32[64] = uniform(0.2)
  %c = conv2d(%x, %c.weight, %c.bias) {bias=true, dilation=[1, 1], groups=1, k=[3, 3], out=64, pad=[1, 1], s=[1, 1]}: f32[64, 64, 18, 15]
  %r = relu(%c): f32[64, 64, 18, 15]
  input %a: f32[64, 100, 70]
  input %b: f32[64, 70, 76]
  %mm = matmul(%a, %b): f32[64, 100, 76]
  output %out = %r
  output %o2 = %mm
}
"#;

/// On a machine with a CUDA device: every zoo model through the CUDA plan, with the plain
/// tiled products (within 2e-5 of the interpreter, relative to each output's scale) and on
/// tensor cores (TF32 products: within 1e-2), and products that do run on tensor cores.
#[test]
fn zoo_models_run_on_cuda() {
    if let Err(e) = bbc_runtime::gpu::cuda::check_libraries() {
        println!("SKIPPED: no CUDA ({e})");
        return;
    }
    for (tensor_cores, tolerance) in [(false, 2e-5), (true, 1e-2)] {
        let opts = GpuOptions { tensor_cores };
        let mut worst = (0.0, "");
        for model in ZOO_MODELS {
            let (dev, _) = cuda_deviation(model.1, &zoo_graph(model), &opts);
            assert!(
                dev <= tolerance,
                "{} (tensor cores {tensor_cores}): deviation {dev:e} > {tolerance:e}",
                model.1
            );
            if dev >= worst.0 {
                worst = (dev, model.1);
            }
        }
        println!(
            "CUDA, tensor cores {tensor_cores}: {} models, largest deviation {:e} ({})",
            ZOO_MODELS.len(),
            worst.0,
            worst.1
        );
        let graph = optimized(TENSOR_CORE_GRAPH);
        let (dev, launches) = cuda_deviation("tensor-core products", &graph, &opts);
        println!("CUDA, tensor cores {tensor_cores}: large products deviate by {dev:e}");
        assert!(dev <= tolerance, "large products: deviation {dev:e}");
        assert_eq!(launches, if tensor_cores { 2 } else { 0 });
    }
}

/// Two large products: a 2048³ matrix product and a 3x3 convolution with its epilogue.
const LARGE_PRODUCTS: &str = r#"graph t {
  input %a: f32[2048, 2048]
  input %b: f32[2048, 2048]
  %mm = matmul(%a, %b): f32[2048, 2048]
  input %x: f32[8, 256, 28, 28]
  param %c.weight: f32[256, 256, 3, 3] = uniform(0.05)
  param %c.bias: f32[256] = uniform(0.05)
  %c = conv2d(%x, %c.weight, %c.bias) {bias=true, dilation=[1, 1], groups=1, k=[3, 3], out=256, pad=[1, 1], s=[1, 1]}: f32[8, 256, 28, 28]
  %r = relu(%c): f32[8, 256, 28, 28]
  output %o1 = %mm
  output %o2 = %r
}
"#;

/// Device time of the large products with the plain tiled kernels and on tensor cores, and
/// their agreement (TF32: within 1e-2 of each output's scale). Run on a CUDA machine with
/// `--ignored`; the interpreter would take minutes on these sizes.
#[test]
#[ignore]
fn product_throughput_on_cuda() {
    if let Err(e) = bbc_runtime::gpu::cuda::check_libraries() {
        println!("SKIPPED: no CUDA ({e})");
        return;
    }
    let graph = optimized(LARGE_PRODUCTS);
    let weights = init_weights(&graph, 5);
    let mut rng = kernel_common::Rng(17);
    let inputs: std::collections::HashMap<String, bbc_runtime::Tensor> = graph
        .inputs
        .iter()
        .map(|&i| (graph.node(i).name.clone(), rng.tensor(&graph.node(i).shape)))
        .collect();
    let flops = |step: &str| match step {
        "mm" => 2.0 * 2048f64.powi(3),
        _ => 2.0 * 256.0 * (256.0 * 9.0) * (28.0 * 28.0) * 8.0,
    };
    let mut results = Vec::new();
    for tensor_cores in [false, true] {
        let (plan, constants) = plan::build(
            &graph,
            &weights,
            Dialect::Cuda,
            &GpuOptions { tensor_cores },
        )
        .expect("builds");
        let mut exe = bbc_runtime::gpu::open(plan, &constants).expect("loads");
        let got = exe.run(&inputs).expect("runs");
        exe.set_profiling(true).expect("the device times launches");
        let runs = 5;
        for _ in 0..runs {
            exe.run(&inputs).expect("runs");
        }
        for (step, time) in exe.profile() {
            let per_run = time.as_secs_f64() / f64::from(runs);
            println!(
                "tensor cores {tensor_cores}: {step}: {:.3} ms, {:.1} TFLOP/s",
                per_run * 1e3,
                flops(&step) / per_run / 1e12
            );
        }
        results.push(got);
    }
    let dev = deviation(&results[1], &results[0]);
    println!("tensor cores against the tiled kernels: {dev:e}");
    assert!(dev <= 1e-2, "tensor cores deviate by {dev:e}");
}

/// A loop kernel needing more than 65,535 workgroups is dispatched as a 2-D grid: on each
/// device present (a Vulkan adapter, such as lavapipe in CI; a CUDA device), every element
/// is computed exactly once.
#[test]
fn a_grid_past_one_dimension_covers_every_element() {
    let len = 65_536 * 256 + 1000;
    let graph = optimized(&format!(
        "graph t {{\n  input %x: f32[{len}]\n  %y = mul(%x, %x): f32[{len}]\n  output %out = %y\n}}\n"
    ));
    let inputs =
        std::collections::HashMap::from([("x".to_string(), kernel_common::Rng(9).tensor(&[len]))]);
    let want = bbc_compiler::interp::run(&graph, &inputs, &Default::default()).expect("runs");
    let mut ran = Vec::new();
    for dialect in [Dialect::Wgsl, Dialect::Cuda] {
        let (plan, constants) =
            plan::build(&graph, &Default::default(), dialect, &GpuOptions::default())
                .expect("builds");
        assert_eq!(plan.launches.len(), 1);
        assert_eq!(plan.launches[0].grid, [65_535, 2, 1]);
        let mut exe = match bbc_runtime::gpu::open(plan, &constants) {
            Ok(exe) => exe,
            Err(e) => {
                println!("SKIPPED on {dialect:?}: {e}");
                continue;
            }
        };
        let got = exe.run(&inputs).expect("runs");
        assert_eq!(deviation(&got, &want), 0.0, "{dialect:?}");
        ran.push(dialect);
    }
    println!("2-D grid checked on {ran:?}");
}

/// Representative kernels: an elementwise group, layer norm, softmax, attention, a padded
/// convolution with its epilogue, a max pool and a transposed convolution.
const GRAPH: &str = r#"graph t {
  input %x: f32[1, 6, 7, 9]
  param %c.weight: f32[8, 6, 3, 3] = uniform(0.2)
  param %c.bias: f32[8] = uniform(0.2)
  %c = conv2d(%x, %c.weight, %c.bias) {bias=true, dilation=[1, 1], groups=1, k=[3, 3], out=8, pad=[1, 1], s=[1, 1]}: f32[1, 8, 7, 9]
  %act = gelu(%c) {approximate="none"}: f32[1, 8, 7, 9]
  %sm = softmax(%act) {axis=-1}: f32[1, 8, 7, 9]
  param %l.weight: f32[9] = ones
  param %l.bias: f32[9] = zeros
  %ln = layer_norm(%sm, %l.weight, %l.bias) {affine=true, eps=1e-5}: f32[1, 8, 7, 9]
  %pool = max_pool2d(%ln) {ceil_mode=true, k=[3, 3], pad=[1, 1], s=[2, 2]}: f32[1, 8, 4, 5]
  param %t.weight: f32[8, 4, 2, 2] = uniform(0.2)
  param %t.bias: f32[4] = uniform(0.2)
  %up = conv_transpose2d(%pool, %t.weight, %t.bias) {bias=true, dilation=[1, 1], groups=1, k=[2, 2], out=4, output_padding=[0, 0], pad=[0, 0], s=[2, 2]}: f32[1, 4, 8, 10]
  %e1 = sigmoid(%x): f32[1, 6, 7, 9]
  %e2 = tanh(%e1): f32[1, 6, 7, 9]
  output %out = %up
  output %o2 = %e2
  input %q: f32[1, 5, 2, 6]
  input %k: f32[1, 7, 2, 6]
  input %v: f32[1, 7, 2, 3]
  %qh = permute(%q) {dims=[0, 2, 1, 3]}: f32[1, 2, 5, 6]
  %kt = permute(%k) {dims=[0, 2, 3, 1]}: f32[1, 2, 6, 7]
  %vh = permute(%v) {dims=[0, 2, 1, 3]}: f32[1, 2, 7, 3]
  %scores = matmul(%qh, %kt): f32[1, 2, 5, 7]
  %attn = softmax(%scores) {axis=-1}: f32[1, 2, 5, 7]
  %o = matmul(%attn, %vh): f32[1, 2, 5, 3]
  output %o3 = %o
}
"#;

/// Both dialects' sources of the kernel computing node `name` of [`GRAPH`] after -O2.
fn sources(name: &str) -> String {
    let g = optimized(GRAPH);
    let id = g
        .find(name)
        .unwrap_or_else(|| panic!("no node `{name}` after -O2"));
    let kernel = lower_node(&g, id).expect("lowers");
    let mut out = String::new();
    for dialect in [Dialect::Wgsl, Dialect::Cuda] {
        let e = emit(&kernel, dialect, &GpuOptions::default());
        if dialect == Dialect::Wgsl {
            validate_wgsl(&e.source).unwrap_or_else(|err| panic!("{err}\n{}", e.source));
        }
        out.push_str(&format!(
            "// {dialect:?}: workgroup {:?}, grid {:?}\n{}\n",
            e.workgroup, e.grid, e.source
        ));
    }
    out
}

#[test]
fn elementwise_sources() {
    insta::assert_snapshot!(sources("e1"));
}

#[test]
fn conv_epilogue_sources() {
    insta::assert_snapshot!(sources("c"));
}

#[test]
fn softmax_sources() {
    insta::assert_snapshot!(sources("sm"));
}

#[test]
fn layer_norm_sources() {
    insta::assert_snapshot!(sources("ln"));
}

#[test]
fn max_pool_sources() {
    insta::assert_snapshot!(sources("pool"));
}

#[test]
fn attention_sources() {
    insta::assert_snapshot!(sources("scores"));
}

#[test]
fn transposed_conv_sources() {
    insta::assert_snapshot!(sources("up"));
}

/// Rows long enough for cooperative reductions (one workgroup per row): a layer norm, a
/// softmax, a mean and a max over feature maps, and an elementwise tail.
const LONG_ROWS: &str = r#"graph t {
  input %x: f32[3, 768]
  param %l.weight: f32[768] = uniform(0.5)
  param %l.bias: f32[768] = uniform(0.5)
  %ln = layer_norm(%x, %l.weight, %l.bias) {affine=true, eps=1e-5}: f32[3, 768]
  %sm = softmax(%ln) {axis=-1}: f32[3, 768]
  output %o1 = %sm
  input %f: f32[2, 5, 16, 20]
  %avg = mean(%f) {axes=[2, 3], keepdim=true}: f32[2, 5, 1, 1]
  %r = relu(%avg): f32[2, 5, 1, 1]
  output %o2 = %r
  %mx = max(%f) {axes=[2, 3], keepdim=false}: f32[2, 5]
  output %o3 = %mx
}
"#;

/// Each reduction kernel of [`LONG_ROWS`] runs one workgroup per grid iteration, validates, and
/// on each device present (lavapipe in CI, a CUDA device) matches the interpreter.
#[test]
fn long_reductions_share_a_workgroup() {
    let graph = optimized(LONG_ROWS);
    let mut cuda = Vec::new();
    for name in ["ln", "sm", "avg", "mx"] {
        let id = graph
            .find(name)
            .unwrap_or_else(|| panic!("no `{name}` after -O2"));
        let kernel = lower_node(&graph, id).expect("lowers");
        for dialect in [Dialect::Wgsl, Dialect::Cuda] {
            let e = emit(&kernel, dialect, &GpuOptions::default());
            assert_eq!(e.workgroup, [128, 1, 1], "{}:\n{}", kernel.name, e.source);
            assert_eq!(e.grid[0] as usize, kernel.grid_extent(), "{}", kernel.name);
            match dialect {
                Dialect::Wgsl => {
                    validate_wgsl(&e.source).unwrap_or_else(|err| panic!("{err}\n{}", e.source))
                }
                Dialect::Cuda => cuda.push((kernel.name.clone(), e.source)),
            }
        }
    }
    if !compile_cuda(&cuda) {
        println!("SKIPPED CUDA compilation: NVRTC not found");
    }
    // Rows past one grid dimension: whole workgroups leave, before any barrier.
    let many = optimized(
        "graph t {\n  input %y: f32[70000, 256]\n  %s = sum(%y) {axes=[1], keepdim=false}: f32[70000]\n  output %o = %s\n}\n",
    );
    let kernel = lower_node(&many, many.find("s").expect("a sum")).expect("lowers");
    let e = emit(&kernel, Dialect::Wgsl, &GpuOptions::default());
    assert_eq!((e.workgroup, e.grid), ([128, 1, 1], [65_535, 2, 1]));
    validate_wgsl(&e.source).unwrap_or_else(|err| panic!("{err}\n{}", e.source));

    let ran = matches_interpreter_on_devices(&graph, 1e-5);
    println!("cooperative reductions checked on {ran:?}");
}

/// Runs `graph` (seeded weights and inputs) on each device present (lavapipe in CI, a CUDA
/// device) and checks it against the interpreter within `tol` of each output's scale;
/// returns the dialects that ran.
fn matches_interpreter_on_devices(graph: &Graph, tol: f64) -> Vec<Dialect> {
    let weights = init_weights(graph, 3);
    let mut rng = kernel_common::Rng(23);
    let inputs: std::collections::HashMap<String, bbc_runtime::Tensor> = graph
        .inputs
        .iter()
        .map(|&i| (graph.node(i).name.clone(), rng.tensor(&graph.node(i).shape)))
        .collect();
    let want = bbc_compiler::interp::run(graph, &inputs, &weights).expect("runs");
    let mut ran = Vec::new();
    for dialect in [Dialect::Wgsl, Dialect::Cuda] {
        let (plan, constants) =
            plan::build(graph, &weights, dialect, &GpuOptions::default()).expect("builds");
        let mut exe = match bbc_runtime::gpu::open(plan, &constants) {
            Ok(exe) => exe,
            Err(e) => {
                println!("SKIPPED on {dialect:?}: {e}");
                continue;
            }
        };
        let got = exe.run(&inputs).expect("runs");
        // Partial sums combine in a different order than the interpreter's.
        let dev = deviation(&got, &want);
        assert!(dev <= tol, "{dialect:?} deviates by {dev:e}");
        ran.push(dialect);
    }
    ran
}

/// A depthwise convolution + LayerNorm over a 7x7 map (ConvNeXt's last stage, narrowed,
/// channels first): one fused kernel whose 7 grid iterations (rows) each get a workgroup,
/// although the kernel reads back the convolution it stored in its output before
/// normalising it; a 3x3 convolution over the same map and a classifier over 2 rows.
const SHORT_GRID: &str = r#"graph t {
  input %x: f32[1, 96, 7, 7]
  param %dw.weight: f32[96, 1, 7, 7] = uniform(0.15)
  param %dw.bias: f32[96] = uniform(0.15)
  %dw = conv2d(%x, %dw.weight, %dw.bias) {bias=true, dilation=[1, 1], groups=96, k=[7, 7], out=96, pad=[3, 3], s=[1, 1]}: f32[1, 96, 7, 7]
  param %n.weight: f32[96] = uniform(0.5)
  param %n.bias: f32[96] = uniform(0.5)
  %n = layer_norm2d(%dw, %n.weight, %n.bias) {affine=true, eps=1e-6}: f32[1, 96, 7, 7]
  output %o1 = %n
  param %c.weight: f32[128, 96, 3, 3] = uniform(0.03)
  param %c.bias: f32[128] = uniform(0.03)
  %c = conv2d(%x, %c.weight, %c.bias) {bias=true, dilation=[1, 1], groups=1, k=[3, 3], out=128, pad=[1, 1], s=[1, 1]}: f32[1, 128, 7, 7]
  output %o2 = %c
  input %v: f32[2, 300]
  param %fc.weight: f32[10, 300] = uniform(0.05)
  param %fc.bias: f32[10] = uniform(0.05)
  %fc = linear(%v, %fc.weight, %fc.bias) {bias=true, out=10}: f32[2, 10]
  output %o3 = %fc
}
"#;

/// Short grids still fill a device: the fused depthwise convolution + LayerNorm runs one
/// workgroup per row, and products with few output tiles split their depth over groups
/// of invocations (a 3x3 convolution over 49 pixels, a classifier over 2 rows); all match
/// the interpreter on each device present.
#[test]
fn short_grids_share_workgroups_and_split_products() {
    let graph = optimized(SHORT_GRID);
    let shape = |name: &str, dialect| {
        let id = graph
            .find(name)
            .unwrap_or_else(|| panic!("no `{name}` after -O2"));
        let kernel = lower_node(&graph, id).expect("lowers");
        let e = emit(&kernel, dialect, &GpuOptions::default());
        if dialect == Dialect::Wgsl {
            validate_wgsl(&e.source).unwrap_or_else(|err| panic!("{err}\n{}", e.source));
        }
        (e.workgroup, e.grid)
    };
    // Split groups: as many as 256 invocations and 16 KiB of workgroup memory hold on WGSL,
    // 512 invocations and 48 KiB on CUDA.
    for (dialect, groups) in [(Dialect::Wgsl, [4, 32]), (Dialect::Cuda, [8, 128])] {
        let dw = ([128, 1, 1], [7, 1, 1]);
        assert_eq!(shape("dw", dialect), dw, "{dialect:?}");
        // 16 x 32 tiles; groups of 8 x 8 invocations.
        let c = ([8, 8 * groups[0], 1], [2, 8, 1]);
        assert_eq!(shape("c", dialect), c, "{dialect:?}");
        // Two rows: 2 x 16 tiles; groups of 4 x 1 invocations.
        let fc = ([4, groups[1], 1], [1, 1, 1]);
        assert_eq!(shape("fc", dialect), fc, "{dialect:?}");
    }
    let ran = matches_interpreter_on_devices(&graph, 1e-5);
    println!("short grids checked on {ran:?}");
}

#[test]
fn cooperative_layer_norm_sources() {
    let g = optimized(LONG_ROWS);
    let kernel = lower_node(&g, g.find("ln").expect("a layer norm")).expect("lowers");
    let mut out = String::new();
    for dialect in [Dialect::Wgsl, Dialect::Cuda] {
        let e = emit(&kernel, dialect, &GpuOptions::default());
        out.push_str(&format!(
            "// {dialect:?}: workgroup {:?}, grid {:?}\n{}\n",
            e.workgroup, e.grid, e.source
        ));
    }
    insta::assert_snapshot!(out);
}
