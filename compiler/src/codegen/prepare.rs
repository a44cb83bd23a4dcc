//! Weight preparation shared by every backend: the values of an optimised graph that are
//! computed from parameters alone (BatchNorm folded into conv weights, reshaped layer
//! scales, wavelet-folded filters, weight slices) and that per-inference kernels read. They
//! are evaluated once, when the weights are bound, never per inference.
//!
//! Weights are large (100 MB for ResNet-50), so this is on the compile-time critical path.
//! A parameter read as is, and a reshape of one, is lent out of the weight map, not copied.
//! The ops that move or scale whole weights (broadcasting `add`/`sub`/`mul`/`div`, `slice`)
//! run on plain row-major f32 loops that compute exactly what the op table's reference
//! implementation computes (the same single f32 operation per element, in any order, so the
//! results are bit-identical; the tests compare them with the interpreter on the zoo).
//! Everything else (the per-channel BatchNorm arithmetic on vectors, constants of shape
//! generators) runs the op table's implementation or the interpreter on a group's body.

use crate::interp::{self, InterpError};
use crate::ir::{Graph, NodeKind, ValueId};
use crate::ops::layout::SliceRange;
use crate::ops::OpDef;
use bbc_runtime::Tensor;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Row-major data of a prepared value: borrowed from the weights (or the graph's constants)
/// when it passes through unchanged, owned when computed.
pub type Data<'a> = Cow<'a, [f32]>;

/// Released buffers kept for reuse: enough for the few large weights alive at once.
const SPARE_BUFFERS: usize = 4;

/// The values computed from parameters alone that per-inference steps (or the outputs)
/// read, all evaluated now, as owned row-major data: for a backend that uploads them.
pub fn prepare(
    graph: &Graph,
    dependent: &HashSet<ValueId>,
    weights: &BTreeMap<String, Tensor>,
) -> Result<HashMap<ValueId, Vec<f32>>, InterpError> {
    let mut preparer = Preparer::new(graph, dependent, weights);
    let needed = preparer.needed();
    let mut out = HashMap::with_capacity(needed.len());
    for id in needed {
        preparer.prepare(id)?;
        out.insert(id, preparer.get(id).expect("just prepared").to_vec());
    }
    Ok(out)
}

/// Evaluates parameter-only values on demand, for a backend that consumes them one node at
/// a time (and copies them into its own layout): [`Preparer::prepare`] on a node's
/// parameter-only operands before building it, [`Preparer::done_with`] after. Computed
/// values are freed after their last reader and their buffers reused for the next ones, so
/// a model's folded weights are never all alive at once and mostly land in memory that is
/// already mapped: first-touch page faults cost several times the folding arithmetic here
/// (ResNet-50's preparation went from about 60 ms, every folded weight in fresh memory, to
/// 14 ms).
pub struct Preparer<'a> {
    graph: &'a Graph,
    weights: &'a BTreeMap<String, Tensor>,
    /// Which nodes are computed from parameters alone.
    fixed: HashSet<ValueId>,
    /// Evaluated values that some reader has not consumed yet.
    values: HashMap<ValueId, Data<'a>>,
    /// Readers (operand edges, and graph outputs, which never finish) not yet done with
    /// each parameter-only value.
    readers: HashMap<ValueId, usize>,
    spare: Vec<Vec<f32>>,
    /// Values asked for so far.
    prepared: HashSet<ValueId>,
}

impl<'a> Preparer<'a> {
    /// A preparer for `graph`, whose nodes in `dependent` are computed per inference.
    pub fn new(
        graph: &'a Graph,
        dependent: &HashSet<ValueId>,
        weights: &'a BTreeMap<String, Tensor>,
    ) -> Preparer<'a> {
        let fixed: HashSet<ValueId> = graph
            .nodes
            .node_indices()
            .filter(|id| !dependent.contains(id))
            .collect();
        let mut preparer = Preparer {
            graph,
            weights,
            fixed,
            values: HashMap::new(),
            readers: HashMap::new(),
            spare: Vec::new(),
            prepared: HashSet::new(),
        };
        // Readers that will ever be done with a value: per-inference nodes, graph outputs,
        // and the parameter-only nodes something needed is computed from (a dead one would
        // keep its operands alive to the end).
        let mut evaluated: HashSet<ValueId> = HashSet::new();
        let mut stack = preparer.needed();
        while let Some(id) = stack.pop() {
            if evaluated.insert(id) {
                stack.extend(graph.inputs(id));
            }
        }
        let mut readers: HashMap<ValueId, usize> = HashMap::new();
        for id in graph.nodes.node_indices() {
            if preparer.fixed.contains(&id) && !evaluated.contains(&id) {
                continue;
            }
            for operand in graph.inputs(id) {
                if preparer.fixed.contains(&operand) {
                    *readers.entry(operand).or_insert(0) += 1;
                }
            }
        }
        for o in &graph.outputs {
            if preparer.fixed.contains(&o.value) {
                *readers.entry(o.value).or_insert(0) += 1;
            }
        }
        preparer.readers = readers;
        preparer
    }

    /// The parameter-only values that nodes computed per inference, or the outputs, read.
    pub fn needed(&self) -> Vec<ValueId> {
        let mut needed: BTreeSet<ValueId> = self
            .graph
            .outputs
            .iter()
            .map(|o| o.value)
            .filter(|v| self.fixed.contains(v))
            .collect();
        for id in self.graph.nodes.node_indices() {
            if !self.fixed.contains(&id) {
                needed.extend(
                    self.graph
                        .inputs(id)
                        .into_iter()
                        .filter(|v| self.fixed.contains(v)),
                );
            }
        }
        needed.into_iter().collect()
    }

    /// Evaluates parameter-only value `id` (and what it is computed from), unless it is
    /// already.
    pub fn prepare(&mut self, id: ValueId) -> Result<(), InterpError> {
        self.prepared.insert(id);
        if self.values.contains_key(&id) {
            return Ok(());
        }
        // Post-order over the ancestors not evaluated yet, without recursion.
        let mut stack = vec![(id, false)];
        while let Some((node, expanded)) = stack.pop() {
            if self.values.contains_key(&node) {
                continue;
            }
            if expanded {
                let value = self.evaluate(node)?;
                self.values.insert(node, value);
                continue;
            }
            stack.push((node, true));
            for operand in self.graph.inputs(node) {
                if !self.values.contains_key(&operand) {
                    stack.push((operand, false));
                }
            }
        }
        Ok(())
    }

    /// The data of a prepared value, until its readers are done with it.
    pub fn get(&self, id: ValueId) -> Option<&[f32]> {
        self.values.get(&id).map(|d| &**d)
    }

    /// How many values have been asked for.
    pub fn prepared(&self) -> usize {
        self.prepared.len()
    }

    /// Node `id` has been built and no longer needs its operands: the parameter-only ones no
    /// one else reads are freed.
    pub fn done_with(&mut self, id: ValueId) {
        for operand in self.graph.inputs(id) {
            if self.fixed.contains(&operand) {
                self.release(operand);
            }
        }
    }

    /// One reader of `id` is done with it; the last one frees it and keeps its buffer.
    fn release(&mut self, id: ValueId) {
        let Some(left) = self.readers.get_mut(&id) else {
            return;
        };
        *left = left.saturating_sub(1);
        if *left > 0 {
            return;
        }
        if let Some(Cow::Owned(buffer)) = self.values.remove(&id) {
            self.spare.push(buffer);
            if self.spare.len() > SPARE_BUFFERS {
                let smallest = (0..self.spare.len())
                    .min_by_key(|&i| self.spare[i].capacity())
                    .expect("not empty");
                self.spare.swap_remove(smallest);
            }
        }
    }

    /// An empty buffer for `len` elements: the smallest spare one that fits, or a new one.
    fn buffer(&mut self, len: usize) -> Vec<f32> {
        let best = (0..self.spare.len())
            .filter(|&i| self.spare[i].capacity() >= len)
            .min_by_key(|&i| self.spare[i].capacity());
        match best {
            Some(i) => {
                let mut buffer = self.spare.swap_remove(i);
                buffer.clear();
                buffer
            }
            None => Vec::with_capacity(len),
        }
    }

    /// The value of parameter-only node `id`, whose operands are evaluated; releases one
    /// reader of each operand.
    fn evaluate(&mut self, id: ValueId) -> Result<Data<'a>, InterpError> {
        let graph = self.graph;
        let node = graph.node(id);
        let operands = graph.inputs(id);
        let shape_of = |i: usize| graph.node(operands[i]).shape.as_slice();
        let value = match &node.kind {
            NodeKind::Input => return Err(InterpError::MissingInput(node.name.clone())),
            NodeKind::Param { .. } => {
                let t = self
                    .weights
                    .get(&node.name)
                    .ok_or_else(|| InterpError::MissingWeight(node.name.clone()))?;
                if t.shape() != node.shape.as_slice() {
                    return Err(InterpError::WeightShape {
                        name: node.name.clone(),
                        expected: node.shape.clone(),
                        actual: t.shape().to_vec(),
                    });
                }
                match t.as_slice() {
                    Some(s) => Cow::Borrowed(s),
                    None => Cow::Owned(t.iter().copied().collect()),
                }
            }
            NodeKind::Const { data } => Cow::Borrowed(data.as_slice()),
            NodeKind::Op { op, attrs } => match op.name {
                // Row-major order is unchanged: the same data under a new shape, moved when
                // this is its last reader.
                "reshape" | "flatten" | "identity" => {
                    let only = operands[0];
                    if self.readers.get(&only) == Some(&1) {
                        self.readers.insert(only, 0);
                        return Ok(self.values.remove(&only).expect("evaluated first"));
                    }
                    self.values[&only].clone()
                }
                "slice" => {
                    let range = SliceRange::new(attrs, shape_of(0))
                        .expect("the verifier checked the slice against its operand");
                    let mut out = self.buffer(node.numel());
                    slice(&self.values[&operands[0]], shape_of(0), &range, &mut out);
                    Cow::Owned(out)
                }
                "add" | "sub" | "mul" | "div" => {
                    let mut out = self.buffer(node.numel());
                    broadcast_binary(
                        op,
                        [
                            (&self.values[&operands[0]], shape_of(0)),
                            (&self.values[&operands[1]], shape_of(1)),
                        ],
                        &node.shape,
                        &mut out,
                    );
                    Cow::Owned(out)
                }
                _ => Cow::Owned(self.reference(id, &operands)?),
            },
            NodeKind::Fused { .. } => Cow::Owned(self.reference(id, &operands)?),
        };
        for operand in operands {
            self.release(operand);
        }
        Ok(value)
    }

    /// Node `id` computed by the op table's implementation (or the interpreter on a
    /// group's body), on operands copied into tensors: for the small values (per-channel
    /// BatchNorm arithmetic, generated constants) no fast path covers.
    fn reference(&self, id: ValueId, operands: &[ValueId]) -> Result<Vec<f32>, InterpError> {
        let graph = self.graph;
        let tensors: Vec<Tensor> = operands
            .iter()
            .map(|o| {
                Tensor::from_shape_vec(graph.node(*o).shape.as_slice(), self.values[o].to_vec())
                    .expect("prepared data has its node's element count")
            })
            .collect();
        let result = match &graph.node(id).kind {
            NodeKind::Op { op, attrs } => {
                let refs: Vec<&Tensor> = tensors.iter().collect();
                (op.eval)(attrs, &refs)
            }
            NodeKind::Fused { body, .. } => {
                let named: HashMap<String, Tensor> = body
                    .inputs
                    .iter()
                    .zip(tensors)
                    .map(|(&b, t)| (body.node(b).name.clone(), t))
                    .collect();
                let name = &body.outputs[0].name;
                interp::run(body, &named, &BTreeMap::new())?
                    .remove(name)
                    .expect("a fusion body has one output")
            }
            NodeKind::Input | NodeKind::Param { .. } | NodeKind::Const { .. } => {
                unreachable!("leaves are evaluated by the caller")
            }
        };
        Ok(match result.as_slice() {
            Some(s) => s.to_vec(),
            None => result.iter().copied().collect(),
        })
    }
}

/// The `slice` op on row-major `data` of `shape`: whole runs of the axes after the sliced
/// one are copied at once; appended to `out`.
fn slice(data: &[f32], shape: &[usize], r: &SliceRange, out: &mut Vec<f32>) {
    let inner: usize = shape[r.axis + 1..].iter().product();
    let outer: usize = shape[..r.axis].iter().product();
    let extent = shape[r.axis];
    for o in 0..outer {
        for i in 0..r.len {
            let at = (o * extent + r.start + i * r.step) * inner;
            out.extend_from_slice(&data[at..at + inner]);
        }
    }
}

/// Element strides of a row-major operand of `shape` broadcast to `out` (NumPy rules,
/// aligned on the last axis): 0 along an axis it is broadcast over.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; out.len()];
    let mut step = 1;
    for (k, &n) in shape.iter().enumerate().rev() {
        let axis = out.len() - shape.len() + k;
        if n != 1 {
            strides[axis] = step;
        }
        step *= n;
    }
    strides
}

/// `out` and the two operands' strides with unit axes dropped and neighbouring axes merged
/// wherever both operands step through them as one, so the innermost loop is as long as
/// possible (`[64, 3, 7, 7] · [64, 1, 1, 1]` becomes `[64, 147]` with strides `[147, 1]`
/// and `[1, 0]`).
fn collapse(out: &[usize], a: &[usize], b: &[usize]) -> Vec<(usize, [usize; 2])> {
    let mut axes: Vec<(usize, [usize; 2])> = Vec::new();
    for (k, &n) in out.iter().enumerate() {
        if n == 1 {
            continue;
        }
        let strides = [a[k], b[k]];
        if let Some((m, inner)) = axes.last_mut() {
            if (0..2).all(|o| inner[o] == strides[o] * n) {
                *m *= n;
                *inner = strides;
                continue;
            }
        }
        axes.push((n, strides));
    }
    axes
}

/// A broadcasting binary op of the op table (`add`, `sub`, `mul`, `div`) on row-major
/// operands, producing `out_shape`, appended to `out`.
fn broadcast_binary(
    op: &OpDef,
    [a, b]: [(&[f32], &[usize]); 2],
    out_shape: &[usize],
    out: &mut Vec<f32>,
) {
    match op.name {
        "add" => broadcast_with(a, b, out_shape, out, |x, y| x + y),
        "sub" => broadcast_with(a, b, out_shape, out, |x, y| x - y),
        "mul" => broadcast_with(a, b, out_shape, out, |x, y| x * y),
        "div" => broadcast_with(a, b, out_shape, out, |x, y| x / y),
        other => unreachable!("`{other}` is not one of the fast binary ops"),
    }
}

/// `f` elementwise over the broadcast of `a` and `b`, in row-major order of `out_shape`.
/// The innermost run is a plain loop over two slices or a slice and a scalar, which the
/// compiler vectorises.
fn broadcast_with(
    (a, a_shape): (&[f32], &[usize]),
    (b, b_shape): (&[f32], &[usize]),
    out_shape: &[usize],
    out: &mut Vec<f32>,
    f: impl Fn(f32, f32) -> f32 + Copy,
) {
    let axes = collapse(
        out_shape,
        &broadcast_strides(a_shape, out_shape),
        &broadcast_strides(b_shape, out_shape),
    );
    let total: usize = out_shape.iter().product();
    out.reserve(total);
    if total == 0 {
        return;
    }
    let Some(&(run, [sa, sb])) = axes.last() else {
        // Every axis has extent 1 (or the result is a scalar).
        if total == 1 {
            out.push(f(a[0], b[0]));
        }
        return;
    };
    let outer = &axes[..axes.len() - 1];
    let mut index = vec![0usize; outer.len()];
    let (mut ia, mut ib) = (0usize, 0usize);
    loop {
        match (sa, sb) {
            (1, 1) => out.extend(
                a[ia..ia + run]
                    .iter()
                    .zip(&b[ib..ib + run])
                    .map(|(&x, &y)| f(x, y)),
            ),
            (1, 0) => {
                let y = b[ib];
                out.extend(a[ia..ia + run].iter().map(|&x| f(x, y)));
            }
            (0, 1) => {
                let x = a[ia];
                out.extend(b[ib..ib + run].iter().map(|&y| f(x, y)));
            }
            _ => out.extend((0..run).map(|i| f(a[ia + i * sa], b[ib + i * sb]))),
        }
        // Advance the odometer over the outer axes, innermost first.
        let mut k = outer.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            let (n, [da, db]) = outer[k];
            index[k] += 1;
            ia += da;
            ib += db;
            if index[k] < n {
                break;
            }
            index[k] = 0;
            ia -= da * n;
            ib -= db * n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elab;
    use crate::ir::Output;
    use crate::ops::{self, Attr, Attrs};
    use crate::passes::{self, input_dependent};
    use crate::weights::init_weights;
    use std::path::Path;

    /// The parameter-only values as the interpreter computes them: the graph without the
    /// per-inference nodes, run with the needed values as its outputs.
    fn interpreted(
        graph: &Graph,
        dependent: &HashSet<ValueId>,
        needed: &[ValueId],
        weights: &BTreeMap<String, Tensor>,
    ) -> HashMap<ValueId, Vec<f32>> {
        let mut fixed = graph.clone();
        fixed.nodes.retain_nodes(|_, n| !dependent.contains(&n));
        fixed.inputs.clear();
        fixed.outputs = needed
            .iter()
            .map(|&value| Output {
                name: graph.node(value).name.clone(),
                value,
            })
            .collect();
        let mut values = interp::run(&fixed, &HashMap::new(), weights).expect("runs");
        needed
            .iter()
            .map(|&id| {
                let t = values.remove(&graph.node(id).name).expect("an output");
                (id, t.iter().copied().collect())
            })
            .collect()
    }

    fn tensor(shape: &[usize], seed: u32) -> Tensor {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 97.0 - 5.0
            })
            .collect();
        Tensor::from_shape_vec(shape, data).expect("sized")
    }

    fn op(name: &str) -> &'static OpDef {
        ops::lookup(name).expect("an op of the table")
    }

    /// Every fast binary op on every broadcasting pattern the folds produce (and some they
    /// do not) agrees bit for bit with the op table.
    #[test]
    fn broadcast_binary_matches_the_op_table() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[64, 3, 7, 7], &[64, 1, 1, 1]),
            (&[64, 1, 1, 1], &[64, 3, 7, 7]),
            (&[5, 6], &[5, 6]),
            (&[5, 6], &[6]),
            (&[5, 1], &[1, 6]),
            (&[2, 3, 4, 5], &[3, 1, 5]),
            (&[4, 1, 3], &[2, 1]),
            (&[7], &[]),
            (&[], &[]),
            (&[1, 1], &[1]),
            (&[3, 0, 2], &[2]),
        ];
        for name in ["add", "sub", "mul", "div"] {
            for (i, &(sa, sb)) in cases.iter().enumerate() {
                let (a, b) = (tensor(sa, i as u32), tensor(sb, 7 + i as u32));
                let expected = (op(name).eval)(&Attrs::new(), &[&a, &b]);
                let mut got = vec![f32::NAN];
                broadcast_binary(
                    op(name),
                    [
                        (a.as_slice().expect("standard"), sa),
                        (b.as_slice().expect("standard"), sb),
                    ],
                    expected.shape(),
                    &mut got,
                );
                assert_eq!(got.remove(0).to_bits(), f32::NAN.to_bits(), "appends");
                let expected: Vec<u32> = expected.iter().map(|v| v.to_bits()).collect();
                let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, expected, "{name} {sa:?} {sb:?}");
            }
        }
    }

    #[test]
    fn slice_matches_the_op_table() {
        let x = tensor(&[4, 9, 3], 1);
        let cases: &[(i64, i64, i64, i64)] = &[
            (0, 1, 3, 1),
            (1, 2, 8, 3),
            (1, -4, 100, 2),
            (2, 0, 3, 1),
            (1, 5, 2, 1),
        ];
        for &(axis, start, end, step) in cases {
            let mut attrs = Attrs::new();
            attrs.insert("axis".into(), Attr::Int(axis));
            attrs.insert("start".into(), Attr::Int(start));
            attrs.insert("end".into(), Attr::Int(end));
            attrs.insert("step".into(), Attr::Int(step));
            let expected = (op("slice").eval)(&attrs, &[&x]);
            let range = SliceRange::new(&attrs, x.shape()).expect("valid");
            let mut got = Vec::new();
            slice(x.as_slice().expect("standard"), x.shape(), &range, &mut got);
            assert_eq!(got, expected.iter().copied().collect::<Vec<_>>());
        }
    }

    /// Every model of every spec in the zoo up to `max_params` parameters, elaborated
    /// and optimised at -O2, with seeded weights.
    fn zoo(max_params: usize) -> Vec<(String, Graph, BTreeMap<String, Tensor>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs");
        let mut specs: Vec<_> = std::fs::read_dir(&dir)
            .expect("the zoo")
            .map(|e| e.expect("an entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "bb"))
            .collect();
        specs.sort();
        let mut models = Vec::new();
        for spec in specs {
            let program = elab::Program::load(&spec, &elab::FsLoader)
                .unwrap_or_else(|e| panic!("{}", e.render()));
            for model in program.models() {
                let opts = elab::Options {
                    model: Some(model.clone()),
                    ..Default::default()
                };
                let built = program
                    .elaborate(&opts)
                    .unwrap_or_else(|d| panic!("{model}: {d:?}"));
                let params: usize = crate::weights::param_table(&built.graph)
                    .iter()
                    .map(|p| p.numel())
                    .sum();
                if params > max_params {
                    continue;
                }
                let mut graph = built.graph;
                passes::run(
                    &mut graph,
                    &passes::pipeline(2),
                    &passes::Options::default(),
                )
                .expect("optimises");
                let weights = init_weights(&graph, 3);
                models.push((model, graph, weights));
            }
        }
        models
    }

    /// Prepares the values of `graph` the way a backend does (each node's operands before
    /// it is built, released after) and checks them against the interpreter, bit for bit;
    /// parameters read unchanged must be lent, not copied, and nothing but the outputs may
    /// stay alive at the end. Returns how many values were prepared.
    fn check_against_interpreter(
        model: &str,
        graph: &Graph,
        weights: &BTreeMap<String, Tensor>,
    ) -> usize {
        let dependent = input_dependent(graph);
        let mut preparer = Preparer::new(graph, &dependent, weights);
        let needed = preparer.needed();
        let expected = interpreted(graph, &dependent, &needed, weights);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let check = |preparer: &Preparer<'_>, id: ValueId| {
            let name = &graph.node(id).name;
            let data = &preparer.values[&id];
            assert_eq!(bits(data), bits(&expected[&id]), "{model}: `{name}`");
            if let NodeKind::Param { .. } = graph.node(id).kind {
                assert!(
                    matches!(data, Cow::Borrowed(_)),
                    "{model}: parameter `{name}` was copied"
                );
            }
        };
        for id in graph.topo_order() {
            if !dependent.contains(&id) {
                continue;
            }
            for operand in graph.inputs(id) {
                if !dependent.contains(&operand) {
                    preparer.prepare(operand).expect("prepares");
                    check(&preparer, operand);
                }
            }
            preparer.done_with(id);
        }
        for o in &graph.outputs {
            if !dependent.contains(&o.value) {
                preparer.prepare(o.value).expect("prepares");
                check(&preparer, o.value);
            }
        }
        let outputs: HashSet<ValueId> = graph.outputs.iter().map(|o| o.value).collect();
        let left: Vec<&str> = preparer
            .values
            .keys()
            .filter(|id| !outputs.contains(id))
            .map(|&id| graph.node(id).name.as_str())
            .collect();
        assert!(left.is_empty(), "{model}: still held after use: {left:?}");
        assert_eq!(preparer.prepared(), needed.len(), "{model}");
        needed.len()
    }

    /// The fast paths compute what the interpreter computes on every model of the zoo small
    /// enough for a debug build (every test configuration and the small real models).
    #[test]
    fn zoo_prepared_values_match_the_interpreter() {
        let models = zoo(3_000_000);
        assert!(models.len() >= 20, "only {} models", models.len());
        let mut values = 0;
        for (model, graph, weights) in &models {
            values += check_against_interpreter(model, graph, weights);
        }
        println!("{} models, {values} prepared values", models.len());
        assert!(values > 0);
    }

    /// The same on every model of the zoo, whatever its size (2-3 minutes):
    /// `cargo test -p bbc-compiler --lib prepare -- --ignored`.
    #[test]
    #[ignore]
    fn whole_zoo_prepared_values_match_the_interpreter() {
        let models = zoo(usize::MAX);
        assert!(models.len() >= 80, "only {} models", models.len());
        let mut values = 0;
        for (model, graph, weights) in &models {
            values += check_against_interpreter(model, graph, weights);
        }
        println!("{} models, {values} prepared values", models.len());
        assert!(values > 0);
    }
}
