//! The GPU launch-plan builder: an optimised graph and its weights become a runtime
//! [`LaunchPlan`] (kernel sources, buffers, launches) and the constant tensors it binds.
//!
//! Values computed from parameters alone are evaluated once here
//! ([`prepare`], shared with the CPU executable) and
//! become constant buffers keyed by their node's name. Every per-inference node becomes one
//! launch of its lowered kernel; identical sources are kept once. A node the Kernel IR
//! cannot lower fails the build, listing every such node: the GPU has no fallback. A graph
//! output that is a graph input or a constant is copied into its own arena buffer by a copy
//! kernel, so outputs are always arena buffers. Arena offsets come from the liveness
//! planner, in units of [`ARENA_ALIGN`] elements.

use super::{arena_bindings, emit, Emitted, GpuError, GpuOptions, Unsupported};
use crate::codegen::per_inference_nodes;
use crate::codegen::prepare::prepare;
use crate::ir::{Graph, NodeKind, ValueId};
use crate::kernel::{lower_node, Access, Body, Buffer, Expr, Index, Kernel, Stmt, Var};
use crate::passes::input_dependent;
use bbc_runtime::arena::{plan_arena, Lifetime};
use bbc_runtime::gpu::{
    BindingAccess, BufferDecl, Dialect, IoDecl, KernelSource, Launch, LaunchPlan, Place,
    ARENA_ALIGN, PLAN_FORMAT,
};
use bbc_runtime::Tensor;
use std::collections::{BTreeMap, HashMap};

/// One launch before the arena is planned.
struct Step {
    name: String,
    kernel: Kernel,
    /// Buffer index of each kernel buffer (operands, then the output).
    args: Vec<usize>,
}

/// Buffers as they are declared, with the graph value each holds.
#[derive(Default)]
struct Buffers {
    decls: Vec<BufferDecl>,
    of_value: HashMap<ValueId, usize>,
}

impl Buffers {
    fn add(&mut self, name: &str, len: usize, place: Place) -> usize {
        self.decls.push(BufferDecl {
            name: name.to_string(),
            len,
            place,
        });
        self.decls.len() - 1
    }

    fn is_constant(&self, i: usize) -> bool {
        matches!(self.decls[i].place, Place::Constant { .. })
    }
}

/// Compiles `graph` (normally optimised at `-O2`) into a launch plan in `dialect` and the
/// constant tensors its buffers name, by key.
pub fn build(
    graph: &Graph,
    weights: &BTreeMap<String, Tensor>,
    dialect: Dialect,
    opts: &GpuOptions,
) -> Result<(LaunchPlan, BTreeMap<String, Tensor>), GpuError> {
    let dependent = input_dependent(graph);
    let nodes = per_inference_nodes(graph, &dependent);
    // Lower everything first, so one error lists every node without a kernel.
    let mut kernels = Vec::with_capacity(nodes.len());
    let mut unsupported = Vec::new();
    for &id in &nodes {
        match lower_node(graph, id) {
            Ok(k) => kernels.push(k),
            Err(e) => {
                let node = graph.node(id);
                let crate::kernel::LowerError::Unsupported { op, reason } = e;
                unsupported.push(Unsupported {
                    node: node.name.clone(),
                    op,
                    reason,
                });
            }
        }
    }
    if !unsupported.is_empty() {
        return Err(GpuError::Unsupported(unsupported));
    }
    let prepared =
        prepare(graph, &dependent, weights).map_err(|e| GpuError::Weights(e.to_string()))?;

    let mut buffers = Buffers::default();
    let mut constants = BTreeMap::new();
    let mut value_buffer = |buffers: &mut Buffers, id: ValueId| -> Result<usize, GpuError> {
        if let Some(&b) = buffers.of_value.get(&id) {
            return Ok(b);
        }
        let node = graph.node(id);
        let b = if dependent.contains(&id) {
            // Offsets are assigned once the arena is planned.
            buffers.add(&node.name, node.numel(), Place::Arena { offset: 0 })
        } else {
            let data = prepared.get(&id).ok_or_else(|| {
                GpuError::Weights(format!("no prepared value for `{}`", node.name))
            })?;
            let tensor = Tensor::from_shape_vec(node.shape.as_slice(), data.clone())
                .map_err(|e| GpuError::Weights(format!("`{}`: {e}", node.name)))?;
            constants.insert(node.name.clone(), tensor);
            buffers.add(
                &node.name,
                node.numel(),
                Place::Constant {
                    key: node.name.clone(),
                },
            )
        };
        buffers.of_value.insert(id, b);
        Ok(b)
    };

    let inputs: Vec<usize> = graph
        .inputs
        .iter()
        .map(|&i| value_buffer(&mut buffers, i))
        .collect::<Result<_, _>>()?;
    let mut steps = Vec::with_capacity(nodes.len() + graph.outputs.len());
    for (&id, kernel) in nodes.iter().zip(kernels) {
        let mut args = graph
            .inputs(id)
            .into_iter()
            .map(|o| value_buffer(&mut buffers, o))
            .collect::<Result<Vec<_>, _>>()?;
        args.push(value_buffer(&mut buffers, id)?);
        steps.push(Step {
            name: graph.node(id).name.clone(),
            kernel,
            args,
        });
    }
    // Outputs that no step computes get their own copy.
    let mut outputs = Vec::with_capacity(graph.outputs.len());
    for o in &graph.outputs {
        let node = graph.node(o.value);
        let source = value_buffer(&mut buffers, o.value)?;
        let computed = matches!(node.kind, NodeKind::Op { .. } | NodeKind::Fused { .. })
            && dependent.contains(&o.value);
        let buffer = if computed {
            source
        } else {
            let copy = buffers.add(&o.name, node.numel(), Place::Arena { offset: 0 });
            steps.push(Step {
                name: o.name.clone(),
                kernel: copy_kernel(&o.name, &node.shape),
                args: vec![source, copy],
            });
            copy
        };
        outputs.push(IoDecl {
            name: o.name.clone(),
            shape: node.shape.clone(),
            buffer,
        });
    }

    let arena_len = place_in_arena(&mut buffers, &steps, &inputs, &outputs)?;
    let (kernel_sources, launches) = emit_steps(&steps, &buffers, dialect, opts)?;
    let plan = LaunchPlan {
        format: PLAN_FORMAT,
        dialect,
        arena_len,
        buffers: buffers.decls,
        kernels: kernel_sources,
        launches,
        inputs: graph
            .inputs
            .iter()
            .zip(&inputs)
            .map(|(&i, &buffer)| IoDecl {
                name: graph.node(i).name.clone(),
                shape: graph.node(i).shape.clone(),
                buffer,
            })
            .collect(),
        outputs,
    };
    Ok((plan, constants))
}

/// A loop kernel copying `input` to `output`, both of `shape`.
fn copy_kernel(name: &str, shape: &[usize]) -> Kernel {
    let buffer = |name: &str, access| Buffer {
        name: name.to_string(),
        shape: shape.to_vec(),
        access,
    };
    let input = buffer("in0", Access::Read);
    let len = input.len();
    let v = Var { id: 0, extent: len };
    Kernel {
        name: name.to_string(),
        origin: "copy".into(),
        buffers: vec![input, buffer("out", Access::Write)],
        tables: Vec::new(),
        scratch: Vec::new(),
        body: Body::Loops {
            grid: v,
            vector: true,
            body: vec![Stmt::Store {
                buf: 1,
                index: Index::Var(v),
                value: Expr::load(0, v),
            }],
        },
    }
}

/// Places the arena buffers by liveness (graph inputs and outputs live throughout) and
/// returns the arena's length in elements.
fn place_in_arena(
    buffers: &mut Buffers,
    steps: &[Step],
    inputs: &[usize],
    outputs: &[IoDecl],
) -> Result<usize, GpuError> {
    let arena: Vec<usize> = (0..buffers.decls.len())
        .filter(|&b| !buffers.is_constant(b))
        .collect();
    let slot: HashMap<usize, usize> = arena.iter().enumerate().map(|(s, &b)| (b, s)).collect();
    let mut lifetimes: Vec<Lifetime> = arena
        .iter()
        .map(|&b| Lifetime {
            // The planner aligns bytes to its own alignment, a divisor of this one, so
            // sizes in whole alignment units keep every offset a multiple of it.
            bytes: buffers.decls[b].len.next_multiple_of(ARENA_ALIGN) * size_of::<f32>(),
            first_def: usize::MAX,
            last_use: 0,
            pinned: false,
        })
        .collect();
    for (s, step) in steps.iter().enumerate() {
        let (written, read) = step.args.split_last().expect("a kernel has an output");
        let l = &mut lifetimes[slot[written]];
        l.first_def = l.first_def.min(s);
        l.last_use = l.last_use.max(s);
        for b in read.iter().filter_map(|b| slot.get(b)) {
            lifetimes[*b].last_use = lifetimes[*b].last_use.max(s);
        }
    }
    for b in inputs.iter().chain(outputs.iter().map(|o| &o.buffer)) {
        lifetimes[slot[b]].pinned = true;
    }
    for l in &mut lifetimes {
        if l.first_def == usize::MAX {
            // Graph inputs are written before the first launch.
            l.first_def = 0;
        }
        l.last_use = l.last_use.max(l.first_def);
    }
    let planned = plan_arena(&lifetimes).map_err(|e| GpuError::Arena(e.to_string()))?;
    let unit = ARENA_ALIGN * size_of::<f32>();
    for (&b, &offset) in arena.iter().zip(&planned.offsets) {
        if offset % unit != 0 {
            return Err(GpuError::Arena(format!(
                "the planner placed `{}` at byte {offset}, not a multiple of {unit}",
                buffers.decls[b].name
            )));
        }
        buffers.decls[b].place = Place::Arena {
            offset: offset / size_of::<f32>(),
        };
    }
    Ok(planned.size / size_of::<f32>())
}

/// Kernel sources (identical ones kept once) and one launch per step.
fn emit_steps(
    steps: &[Step],
    buffers: &Buffers,
    dialect: Dialect,
    opts: &GpuOptions,
) -> Result<(Vec<KernelSource>, Vec<Launch>), GpuError> {
    let mut sources: Vec<KernelSource> = Vec::new();
    let mut by_source: HashMap<String, usize> = HashMap::new();
    let mut launches = Vec::with_capacity(steps.len());
    let mut unsupported = Vec::new();
    for step in steps {
        // Constants are separate buffers: read-only even where arena bindings cannot be.
        let bindings: Vec<BindingAccess> = arena_bindings(&step.kernel, dialect)
            .into_iter()
            .zip(&step.args)
            .map(|(access, &b)| {
                if buffers.is_constant(b) {
                    BindingAccess::Read
                } else {
                    access
                }
            })
            .collect();
        let Emitted {
            source,
            workgroup,
            grid,
        } = match emit(&step.kernel, dialect, &bindings, opts) {
            Ok(e) => e,
            Err(e) => {
                unsupported.push(Unsupported {
                    node: step.name.clone(),
                    op: step.kernel.origin.clone(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let kernel = match by_source.get(&source) {
            Some(&k) => k,
            None => {
                sources.push(KernelSource {
                    name: kernel_name(&step.name, sources.len()),
                    entry: super::ENTRY.to_string(),
                    source: source.clone(),
                    workgroup,
                    bindings,
                });
                by_source.insert(source, sources.len() - 1);
                sources.len() - 1
            }
        };
        launches.push(Launch {
            step: step.name.clone(),
            kernel,
            args: step.args.clone(),
            grid,
        });
    }
    if !unsupported.is_empty() {
        return Err(GpuError::Unsupported(unsupported));
    }
    Ok((sources, launches))
}

/// A file-name-safe, unique kernel name: its position, then the first step's name.
fn kernel_name(step: &str, position: usize) -> String {
    let clean: String = step
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(48)
        .collect();
    format!("k{position:03}_{clean}")
}
