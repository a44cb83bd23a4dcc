//! The serialisable description of a CPU plan, and its resolution into a runnable one.
//!
//! The compiler's plan builder lowers a graph once, to a [`PlanDesc`]: the values, inputs
//! and outputs, and every [`Step`] in the [`Described`] form, which holds plain data: kernels
//! by index into a table of generated functions, weights by index into the model's constants
//! (their prepared, unpacked data kept apart, in constant order), convolutions by shape.
//! [`resolve_step`] turns a described step into the one an [`Executor`] runs, packing its
//! convolution and GEMM weights for the pool's thread count and taking its code from the
//! function table; [`PlanDesc::assemble`] builds the [`Plan`] around resolved steps.
//!
//! The JIT resolves each step as soon as it is built, with JIT'd function pointers, while the
//! weights it packs are in memory; an ahead-of-time object (see [`crate::aot`]) embeds the
//! description as JSON with a table of its compiled functions, and [`PlanDesc::instantiate`]
//! resolves every step at load. Both run the same steps; only code emission differs. Host
//! steps (reference implementations, for nodes without a kernel) refer to closures the JIT
//! supplies; a description resolved without them is refused.

use crate::arena::AlignedBuffer;
use crate::exec::{
    BandLoop, ExecError, Executor, Form, Gemm, GemmOperand, HostFn, LoopFn, PackedWeight, Plan,
    ProductMap, Resolved, Slot, Step, StepKernel, TileEpilogue, TileFn, View,
};
use crate::kernels::{
    Conv2d, Conv2dShape, DepthwiseConv2d, KernelError, MatRef, PackedMatrix, PanelMatrix,
};
use crate::pool::ThreadPool;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The version of the [`PlanDesc`] layout; a description of another version is refused.
pub const PLAN_FORMAT: u32 = 4;

/// The form of a described step: indices and shapes, no code or packed data.
#[derive(Clone, Copy, Debug, Default)]
pub struct Described;

impl Form for Described {
    /// An index into the function table ([`PlanDesc::functions`]).
    type Loop = usize;
    type Tile = usize;
    type Conv = ConvDesc;
    type Depthwise = DepthwiseDesc;
    type Packed = PackedDesc;
    /// An index into the host functions the JIT supplies.
    type Host = usize;
}

/// A [`Form`] whose leaves serialise, so its steps do.
pub trait SerialForm:
    Form<
    Loop: Serialize + DeserializeOwned,
    Tile: Serialize + DeserializeOwned,
    Conv: Serialize + DeserializeOwned,
    Depthwise: Serialize + DeserializeOwned,
    Packed: Serialize + DeserializeOwned,
    Host: Serialize + DeserializeOwned,
>
{
}

impl SerialForm for Described {}

/// A convolution with constant `weight` (PyTorch layout `[C_out, C_in/groups, kh, kw]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvDesc {
    pub shape: Conv2dShape,
    pub weight: usize,
}

/// A depthwise convolution with constant `weight` `[C_out, 1, kh, kw]` and optional `bias`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepthwiseDesc {
    pub shape: Conv2dShape,
    pub weight: usize,
    pub bias: Option<usize>,
}

/// The constant matrices of a GEMM operand, all views of one constant; each is packed at
/// resolution with the operand's `[rows, cols]` (`[m, k]` for A, `[k, n]` for B).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedDesc {
    pub constant: usize,
    pub matrices: Vec<MatrixView>,
}

/// Element `(i, j)` of a matrix at `offset + i·row_stride + j·col_stride` of its constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixView {
    pub offset: usize,
    pub row_stride: isize,
    pub col_stride: isize,
}

/// The signature of a generated function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FunctionKind {
    /// [`LoopFn`]: a loop kernel, or the rest of a depthwise group run on bands.
    Loop,
    /// [`TileFn`]: a contraction's epilogue.
    Tile,
}

/// An entry of the function table a description is resolved with.
#[derive(Clone, Copy, Debug)]
pub enum Code {
    Loop(LoopFn),
    Tile(TileFn),
}

impl Code {
    pub fn kind(&self) -> FunctionKind {
        match self {
            Code::Loop(_) => FunctionKind::Loop,
            Code::Tile(_) => FunctionKind::Tile,
        }
    }
}

/// A constant: a weight or a value prepared from the weights (folded BatchNorm, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstantDesc {
    /// The graph value it holds, for messages.
    pub name: String,
    /// Element count.
    pub len: usize,
}

/// A model input or output: row-major f32 of `shape`, in `slot`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoDesc {
    pub name: String,
    pub shape: Vec<usize>,
    pub slot: Slot,
}

impl IoDesc {
    /// Element count.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A whole plan as data.
#[derive(Serialize, Deserialize)]
pub struct PlanDesc {
    /// [`PLAN_FORMAT`].
    pub format: u32,
    /// The model's name.
    pub model: String,
    /// Element count of every activation.
    pub values: Vec<usize>,
    pub constants: Vec<ConstantDesc>,
    /// The kind of each function of the table, in table order.
    pub functions: Vec<FunctionKind>,
    /// In [`Executor::run`] order; each one's slot is a value.
    pub inputs: Vec<IoDesc>,
    pub outputs: Vec<IoDesc>,
    pub steps: Vec<Step<Described>>,
    /// [`Plan::views`].
    #[serde(default)]
    pub views: Vec<View>,
}

/// Whether a GEMM step's constant right operand is packed in panels for the dense kernel:
/// the CPU runs it, the left operand is an activation with contiguous rows, and the product
/// is written row-major or column-major (in place, or row-major to scratch).
fn dense_product(g: &Gemm<Described>) -> bool {
    let a_rows = match g.a {
        GemmOperand::Buffer { col_stride, .. } => col_stride == 1 || g.k <= 1,
        GemmOperand::Packed { .. } => false,
    };
    let row_major =
        g.product.scatter.is_some() || g.out_col_stride == 1 || g.out_row_stride == 1 || g.m <= 1;
    PanelMatrix::supported() && a_rows && row_major && matches!(g.b, GemmOperand::Packed { .. })
}

fn invalid(what: String) -> ExecError {
    ExecError::Plan(what)
}

impl PlanDesc {
    /// An empty plan for `model`.
    pub fn new(model: &str) -> PlanDesc {
        PlanDesc {
            format: PLAN_FORMAT,
            model: model.to_string(),
            values: Vec::new(),
            constants: Vec::new(),
            functions: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            steps: Vec::new(),
            views: Vec::new(),
        }
    }

    /// The description's stored form (JSON), as an object file embeds it.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a plan description always serialises")
    }

    /// Reads [`PlanDesc::to_bytes`]' output back (unchecked: see [`PlanDesc::validate`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<PlanDesc, ExecError> {
        serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("the plan description does not parse: {e}")))
    }

    /// Checks what the executor does not: the format, and that every index (functions of the
    /// right kind, constants, values) and every input and output size is in range.
    pub fn validate(&self) -> Result<(), ExecError> {
        if self.format != PLAN_FORMAT {
            return Err(invalid(format!(
                "plan format {} (this runtime reads format {PLAN_FORMAT})",
                self.format
            )));
        }
        let slot_ok = |slot: Slot| match slot {
            Slot::Value(v) => v < self.values.len(),
            Slot::Constant(c) => c < self.constants.len(),
            Slot::Unused | Slot::Product => true,
        };
        for io in &self.inputs {
            if !matches!(io.slot, Slot::Value(v) if v < self.values.len() && self.values[v] == io.len())
            {
                return Err(invalid(format!("input `{}`: {:?}", io.name, io.slot)));
            }
        }
        for io in &self.outputs {
            let len = match io.slot {
                Slot::Value(v) => self.values.get(v),
                Slot::Constant(c) => self.constants.get(c).map(|c| &c.len),
                Slot::Unused | Slot::Product => None,
            };
            if len != Some(&io.len()) {
                return Err(invalid(format!("output `{}`: {:?}", io.name, io.slot)));
            }
        }
        for step in &self.steps {
            let fail = |what: &str| Err(invalid(format!("step `{}`: {what}", step.name)));
            if !step.slots.iter().all(|&s| slot_ok(s)) {
                return fail("a slot out of range");
            }
            let function = |i: usize, kind: FunctionKind| self.functions.get(i) == Some(&kind);
            let constant = |c: usize| c < self.constants.len();
            let product = |p: &ProductMap<Described>| match p.epilogue {
                Some(TileEpilogue::Generated(f)) => function(f, FunctionKind::Tile),
                Some(TileEpilogue::Native(_)) | None => true,
            };
            let operand = |o: &GemmOperand<Described>| match o {
                GemmOperand::Packed { matrices, .. } => constant(matrices.constant),
                GemmOperand::Buffer { .. } => true,
            };
            let ok = match &step.kernel {
                StepKernel::Loops { entry, .. } => function(*entry, FunctionKind::Loop),
                StepKernel::Conv {
                    conv, product: p, ..
                } => constant(conv.weight) && product(p),
                StepKernel::Gemm(g) => operand(&g.a) && operand(&g.b) && product(&g.product),
                StepKernel::ConvTranspose { product: p, .. } => product(p),
                StepKernel::Depthwise { conv, rest, .. } => {
                    constant(conv.weight)
                        && conv.bias.is_none_or(constant)
                        && rest.is_none_or(|r| function(r.entry, FunctionKind::Loop))
                }
                StepKernel::Norm { .. }
                | StepKernel::Softmax { .. }
                | StepKernel::MaxPool { .. }
                | StepKernel::Resize { .. }
                | StepKernel::Host(_) => true,
            };
            if !ok {
                return fail("a function or constant out of range, or of the wrong kind");
            }
        }
        Ok(())
    }

    /// The plan of resolved `steps` (this description's, in order) over `constants` (all of
    /// them, in order). Constants no slot or output reads were only packed: they are
    /// dropped here, so the raw weights do not stay in memory beside the packed ones.
    pub fn assemble(&self, steps: Vec<Step>, mut constants: Vec<AlignedBuffer>) -> Plan {
        let mut in_place = vec![false; constants.len()];
        let slots = self.steps.iter().flat_map(|s| &s.slots);
        for slot in slots.chain(self.outputs.iter().map(|o| &o.slot)) {
            if let Slot::Constant(c) = *slot {
                if let Some(used) = in_place.get_mut(c) {
                    *used = true;
                }
            }
        }
        for (data, used) in constants.iter_mut().zip(in_place) {
            if !used {
                *data = AlignedBuffer::zeroed(0);
            }
        }
        let value = |io: &IoDesc| match io.slot {
            Slot::Value(v) => v,
            // Refused by `validate`; an out-of-range value is refused by the executor.
            _ => usize::MAX,
        };
        Plan {
            values: self.values.clone(),
            constants,
            inputs: self.inputs.iter().map(value).collect(),
            outputs: self.outputs.iter().map(|o| o.slot).collect(),
            steps,
            views: self.views.clone(),
        }
    }

    /// Resolves every step with `constants` (in order, as [`PlanDesc::constants`] sizes
    /// them) and `functions` (in table order, of [`PlanDesc::functions`]' kinds), and sets
    /// the plan up on `pool`. A plan with host steps is refused: it has no host code here.
    pub fn instantiate(
        &self,
        constants: Vec<AlignedBuffer>,
        functions: &[Code],
        pool: ThreadPool,
    ) -> Result<Executor, ExecError> {
        self.validate()?;
        let kinds: Vec<FunctionKind> = functions.iter().map(Code::kind).collect();
        if kinds != self.functions {
            return Err(invalid(format!(
                "{} functions given, the plan has {} (or their kinds differ)",
                functions.len(),
                self.functions.len()
            )));
        }
        let lens: Vec<usize> = self.constants.iter().map(|c| c.len).collect();
        if constants
            .iter()
            .map(AlignedBuffer::len)
            .ne(lens.iter().copied())
        {
            return Err(invalid(
                "the constants do not have the sizes the plan gives them".into(),
            ));
        }
        let threads = pool.threads();
        let steps = self
            .steps
            .iter()
            .map(|step| {
                let data = |c: usize| constants.get(c).map(AlignedBuffer::as_slice);
                let function = |i: usize| functions.get(i).copied();
                resolve_step(step, &data, &function, &mut |_| None, threads)
            })
            .collect::<Result<Vec<Step>, ExecError>>()?;
        Executor::new(self.assemble(steps, constants), pool)
    }
}

/// Resolves a described step: convolution and GEMM weights packed from `constant(index)`
/// (tiled for a pool of `threads`), functions taken from `function(index)`, host code from
/// `host(index)`. Sizes are checked by the kernels' constructors and, for slots, by the
/// executor.
pub fn resolve_step<'a>(
    step: &Step<Described>,
    constant: &dyn Fn(usize) -> Option<&'a [f32]>,
    function: &dyn Fn(usize) -> Option<Code>,
    host: &mut dyn FnMut(usize) -> Option<HostFn>,
    threads: usize,
) -> Result<Step, ExecError> {
    let fail = |what: String| invalid(format!("step `{}`: {what}", step.name));
    let kernel_err = |source: KernelError| ExecError::Kernel {
        step: step.name.clone(),
        source,
    };
    let data = |c: usize| constant(c).ok_or_else(|| fail(format!("no data for constant {c}")));
    let loop_fn = |i: usize| match function(i) {
        Some(Code::Loop(f)) => Ok(f),
        _ => Err(fail(format!("function {i} is not a loop kernel"))),
    };
    let tile_fn = |i: usize| match function(i) {
        Some(Code::Tile(f)) => Ok(f),
        _ => Err(fail(format!("function {i} is not an epilogue"))),
    };
    let product = |p: &ProductMap<Described>| -> Result<ProductMap, ExecError> {
        Ok(ProductMap {
            rows_per_batch: p.rows_per_batch,
            transposed: p.transposed,
            bias: p.bias,
            scatter: p.scatter.clone(),
            epilogue: match p.epilogue {
                None => None,
                Some(TileEpilogue::Generated(f)) => Some(TileEpilogue::Generated(tile_fn(f)?)),
                Some(TileEpilogue::Native(e)) => Some(TileEpilogue::Native(e)),
            },
        })
    };
    let operand = |o: &GemmOperand<Described>,
                   [rows, cols]: [usize; 2],
                   panels: bool|
     -> Result<GemmOperand, ExecError> {
        Ok(match o {
            GemmOperand::Packed { matrices, of_batch } => {
                let source = data(matrices.constant)?;
                let packed = matrices
                    .matrices
                    .iter()
                    .map(|v| {
                        let view =
                            MatRef::new(source, v.offset, rows, cols, v.row_stride, v.col_stride)?;
                        Ok(if panels {
                            PackedWeight::Panels(PanelMatrix::pack(view))
                        } else {
                            PackedWeight::Rows(PackedMatrix::pack(view))
                        })
                    })
                    .collect::<Result<Vec<_>, KernelError>>()
                    .map_err(kernel_err)?;
                GemmOperand::Packed {
                    matrices: packed,
                    of_batch: of_batch.clone(),
                }
            }
            GemmOperand::Buffer {
                slot,
                offsets,
                row_stride,
                col_stride,
            } => GemmOperand::Buffer {
                slot: *slot,
                offsets: offsets.clone(),
                row_stride: *row_stride,
                col_stride: *col_stride,
            },
        })
    };
    let kernel: StepKernel<Resolved> = match &step.kernel {
        StepKernel::Loops { entry, grid } => StepKernel::Loops {
            entry: loop_fn(*entry)?,
            grid: *grid,
        },
        StepKernel::Conv {
            conv,
            input,
            product: p,
        } => StepKernel::Conv {
            conv: Conv2d::new(conv.shape, data(conv.weight)?, threads).map_err(kernel_err)?,
            input: *input,
            product: product(p)?,
        },
        StepKernel::ConvTranspose {
            shape,
            input,
            weight,
            product: p,
        } => StepKernel::ConvTranspose {
            shape: *shape,
            input: *input,
            weight: *weight,
            product: product(p)?,
        },
        StepKernel::Gemm(g) => StepKernel::Gemm(Gemm {
            m: g.m,
            n: g.n,
            k: g.k,
            batches: g.batches,
            a: operand(&g.a, [g.m, g.k], false)?,
            b: operand(&g.b, [g.k, g.n], dense_product(g))?,
            out_offsets: g.out_offsets.clone(),
            out_row_stride: g.out_row_stride,
            out_col_stride: g.out_col_stride,
            product: product(&g.product)?,
        }),
        StepKernel::Depthwise {
            conv,
            input,
            rest,
            activation,
            norm,
        } => {
            let mut kernel =
                DepthwiseConv2d::new(conv.shape, data(conv.weight)?).map_err(kernel_err)?;
            if let Some(bias) = conv.bias {
                kernel = kernel.with_bias(data(bias)?).map_err(kernel_err)?;
            }
            if rest.is_some() || norm.is_some() {
                kernel = kernel.with_pixel_bands();
            }
            StepKernel::Depthwise {
                conv: kernel,
                input: *input,
                rest: rest
                    .map(|r| {
                        Ok::<_, ExecError>(BandLoop {
                            entry: loop_fn(r.entry)?,
                            per_row: r.per_row,
                        })
                    })
                    .transpose()?,
                activation: *activation,
                norm: *norm,
            }
        }
        StepKernel::Norm { input, shape, norm } => StepKernel::Norm {
            input: *input,
            shape: *shape,
            norm: *norm,
        },
        StepKernel::Softmax { input, rows, len } => StepKernel::Softmax {
            input: *input,
            rows: *rows,
            len: *len,
        },
        StepKernel::MaxPool { pool, input } => StepKernel::MaxPool {
            pool: *pool,
            input: *input,
        },
        StepKernel::Resize { resize, input } => StepKernel::Resize {
            resize: resize.clone(),
            input: *input,
        },
        StepKernel::Host(i) => StepKernel::Host(host(*i).ok_or_else(|| {
            fail("it runs a reference implementation, which only the JIT supplies".into())
        })?),
    };
    Ok(Step {
        name: step.name.clone(),
        slots: step.slots.clone(),
        kernel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::tests::{add_one, data};

    /// `tile += 1` on a `[rows, 6]` output.
    unsafe extern "C" fn plus_one_tile(
        bufs: *const *mut f32,
        _batch: usize,
        r0: usize,
        r1: usize,
        c0: usize,
        c1: usize,
    ) {
        let out = *bufs.add(2);
        for i in r0..r1 {
            for j in c0..c1 {
                *out.add(i * 6 + j) += 1.0;
            }
        }
    }

    /// x `[1, 2, 3, 3]` -> 1x1 conv to 4 channels (constant 0) -> `+ 1` loop -> y, and the
    /// GEMM `y' = Wᵀ·x` from a strided view of constant 1 with an epilogue.
    fn plan() -> PlanDesc {
        let mut desc = PlanDesc::new("tiny");
        desc.values = vec![18, 36, 36, 24];
        desc.constants = vec![
            ConstantDesc {
                name: "w".into(),
                len: 8,
            },
            ConstantDesc {
                name: "w2".into(),
                len: 12,
            },
        ];
        desc.functions = vec![FunctionKind::Loop, FunctionKind::Tile];
        let io = |name: &str, shape: Vec<usize>, v: usize| IoDesc {
            name: name.into(),
            shape,
            slot: Slot::Value(v),
        };
        desc.inputs = vec![io("x", vec![1, 2, 3, 3], 0)];
        desc.outputs = vec![io("y", vec![1, 4, 3, 3], 2), io("z", vec![4, 6], 3)];
        let shape = Conv2dShape::pointwise(1, 2, 4, [3, 3]);
        desc.steps = vec![
            Step {
                name: "conv".into(),
                slots: vec![Slot::Value(0), Slot::Unused, Slot::Value(1)],
                kernel: StepKernel::Conv {
                    conv: ConvDesc { shape, weight: 0 },
                    input: 0,
                    product: ProductMap {
                        rows_per_batch: 4,
                        ..ProductMap::default()
                    },
                },
            },
            Step {
                name: "add".into(),
                slots: vec![Slot::Value(1), Slot::Value(2)],
                kernel: StepKernel::Loops { entry: 0, grid: 36 },
            },
            // z[4, 6] = w2ᵀ[4, 3] · x[3, 6] (the first 18 inputs as a 3x6 matrix), + 1.
            Step {
                name: "gemm".into(),
                slots: vec![Slot::Value(0), Slot::Unused, Slot::Value(3)],
                kernel: StepKernel::Gemm(Gemm {
                    m: 4,
                    n: 6,
                    k: 3,
                    batches: 1,
                    a: GemmOperand::Packed {
                        matrices: PackedDesc {
                            constant: 1,
                            matrices: vec![MatrixView {
                                offset: 0,
                                row_stride: 1,
                                col_stride: 4,
                            }],
                        },
                        of_batch: vec![0],
                    },
                    b: GemmOperand::Buffer {
                        slot: 0,
                        offsets: vec![0],
                        row_stride: 6,
                        col_stride: 1,
                    },
                    out_offsets: vec![0],
                    out_row_stride: 6,
                    out_col_stride: 1,
                    product: ProductMap {
                        rows_per_batch: 4,
                        epilogue: Some(TileEpilogue::Generated(1)),
                        ..ProductMap::default()
                    },
                }),
            },
        ];
        desc
    }

    /// A description survives JSON, resolves, and computes what its steps say; constants
    /// only packed are dropped from the plan.
    #[test]
    fn described_plans_round_trip_and_run() {
        let bytes = plan().to_bytes();
        let desc = PlanDesc::from_bytes(&bytes).unwrap();
        assert_eq!(desc.to_bytes(), bytes);
        desc.validate().unwrap();
        let (w, w2, x) = (data(8, 1), data(12, 2), data(18, 3));
        let constants = vec![
            AlignedBuffer::from_slice(&w),
            AlignedBuffer::from_slice(&w2),
        ];
        let code = [Code::Loop(add_one), Code::Tile(plus_one_tile)];
        for threads in [1, 2] {
            let pool = ThreadPool::new(threads).unwrap();
            let mut exec = desc.instantiate(constants.clone(), &code, pool).unwrap();
            assert_eq!(exec.constant_bytes(), 0, "both constants are packed");
            // Both weights, each in its kernel's layout: at least their own floats.
            assert!(exec.packed_weight_bytes() >= (w.len() + w2.len()) * 4);
            let (mut y, mut z) = (vec![f32::NAN; 36], vec![f32::NAN; 24]);
            exec.run(&[&x], &mut [&mut y, &mut z]).unwrap();
            for (e, &got) in y.iter().enumerate() {
                let (co, p) = (e / 9, e % 9);
                let want: f32 = (0..2).map(|ci| w[co * 2 + ci] * x[ci * 9 + p]).sum::<f32>();
                assert!(
                    (got - (want + 1.0)).abs() < 1e-6,
                    "y[{e}]: {got} vs {want} + 1"
                );
            }
            for (e, &got) in z.iter().enumerate() {
                let (i, j) = (e / 6, e % 6);
                let want: f32 = (0..3).map(|p| w2[p * 4 + i] * x[p * 6 + j]).sum::<f32>();
                assert!(
                    (got - (want + 1.0)).abs() < 1e-6,
                    "z[{e}]: {got} vs {want} + 1"
                );
            }
        }
    }

    /// Wrong functions, constants, formats and indices are errors, not crashes.
    #[test]
    fn mismatched_descriptions_are_refused() {
        let constants = || {
            vec![
                AlignedBuffer::from_slice(&data(8, 1)),
                AlignedBuffer::from_slice(&data(12, 2)),
            ]
        };
        let pool = || ThreadPool::new(1).unwrap();
        let good = [Code::Loop(add_one), Code::Tile(plus_one_tile)];
        let swapped = [Code::Tile(plus_one_tile), Code::Loop(add_one)];
        let desc = plan();
        let err = |r: Result<Executor, ExecError>| r.err().expect("refused").to_string();
        assert!(err(desc.instantiate(constants(), &swapped, pool())).contains("kinds differ"));
        assert!(err(desc.instantiate(constants()[..1].to_vec(), &good, pool())).contains("sizes"));
        let mut other = plan();
        other.format += 1;
        assert!(err(other.instantiate(constants(), &good, pool())).contains("format"));
        let mut other = plan();
        other.steps[1].kernel = StepKernel::Loops { entry: 1, grid: 36 };
        assert!(err(other.instantiate(constants(), &good, pool())).contains("wrong kind"));
        let mut other = plan();
        other.steps[0].slots[0] = Slot::Constant(7);
        assert!(err(other.instantiate(constants(), &good, pool())).contains("out of range"));
        let mut other = plan();
        other.steps[1].kernel = StepKernel::Host(0);
        assert!(err(other.instantiate(constants(), &good, pool())).contains("only the JIT"));
        let mut other = plan();
        other.constants[0].len = 7;
        let mut wrong = constants();
        wrong[0] = AlignedBuffer::from_slice(&data(7, 1));
        assert!(err(other.instantiate(wrong, &good, pool())).contains("conv weight"));
    }
}
