//! The executor: runs a compiled model's [`Plan`] (an ordered list of kernel launches over
//! the slots of one activation arena) on a [`ThreadPool`].
//!
//! A plan is generic: it holds function pointers and closures, never compiler types. Its
//! step types are written over a [`Form`], so the serialisable description in
//! [`crate::desc`] (indices instead of pointers, shapes instead of packed weights) shares
//! their structure and resolves into them. Each [`Step`] names its buffers as [`Slot`]s, in
//! the order its code expects them, the written buffer last (the kernel ABI of generated
//! code). A step runs one of:
//!
//! - [`StepKernel::Loops`]: generated code over a grid whose iterations are independent,
//!   `entry(bufs, start, end)`; the grid is split over the pool.
//! - [`StepKernel::Conv`]: a planned [`Conv2d`] (weights packed at load time).
//! - [`StepKernel::Gemm`]: one [`gemm()`] call per batch entry, constant operands pre-packed;
//!   one that is a 1x1 convolution of one image with a weight computed per inference runs on
//!   the 1x1 convolution kernel instead, planned here and given each weight repacked
//!   (`computed_weight_conv`).
//! - [`StepKernel::ConvTranspose`]: a transposed convolution ([`conv_transpose2d`]), its
//!   weight read in place.
//! - [`StepKernel::Depthwise`]: a direct [`DepthwiseConv2d`], optionally with the rest of its
//!   fusion group as generated loop code run on each finished band of pixels while it is in
//!   cache ([`BandLoop`]); the convolution's product then lives in scratch
//!   ([`Slot::Product`]), never in the arena. A rest that is one activation runs natively
//!   on each finished tile instead, and one that is a `layer_norm2d` of the convolution
//!   natively and in place on each finished band of the output ([`ChannelNorm`]).
//! - [`StepKernel::Norm`]: a layer normalisation over the channels of NCHW pixels.
//! - [`StepKernel::Softmax`]: a softmax over the last axis.
//! - [`StepKernel::MaxPool`]: a [`MaxPool2d`] over NCHW planes.
//! - [`StepKernel::Resize`]: a [`Resize2d`] (`upsample`) of NCHW planes.
//! - [`StepKernel::Host`]: a Rust closure over whole buffers (a reference implementation for
//!   what has no kernel); it runs on the calling thread.
//!
//! A contraction's [`ProductMap`] says how the kernel's output tiles relate to the step's
//! output and to its epilogue, generated code `epilogue(bufs, batch, r0, r1, c0, c1)` or a
//! [`NativeEpilogue`] (bias + activation on the runtime's own kernel): when the
//! product cannot be written in place (a permuted output), the kernel writes it to scratch
//! and each finished tile is scattered into the output before the epilogue runs on it, so the
//! epilogue still sees its tile while it is in cache.
//!
//! [`Executor::new`] derives every value's lifetime from the steps (defined by the step that
//! writes it, live until the last step that reads it; inputs are written before the first
//! step and outputs read after the last), gives a dying shortcut's bytes to the output of a
//! convolution that adds it in registers (`shared_storage`), places them with
//! [`plan_arena`], allocates the arena
//! and the largest scratch any step needs once, and resolves every step's buffer pointers.
//! [`Executor::run`] then copies the inputs in, runs the steps and copies the outputs out;
//! loop steps and the pool allocate nothing per inference (the GEMM library allocates its
//! packing buffers per call, and host steps allocate).

use crate::arena::{plan_arena, AlignedBuffer, ArenaError, Lifetime};
use crate::desc::SerialForm;
use crate::kernels::activation::{activate_rows, activate_rows_with_residual, Activation, RowBias};
use crate::kernels::{
    conv_transpose2d, gemm, Conv2d, Conv2dShape, ConvTranspose2dShape, DepthwiseConv2d, Epilogue,
    KernelError, Layout, MatMut, MatRef, MaxPool2d, Output, PackedMatrix, PanelMatrix, Residual,
    Resize2d, Tile, SERIAL_FLOPS,
};
use crate::pool::{Chunking, PoolError, ThreadPool};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Generated loop code: computes grid iterations `start..end` over `bufs`.
pub type LoopFn = unsafe extern "C" fn(bufs: *const *mut f32, start: usize, end: usize);

/// A generated contraction epilogue: rewrites rows `r0..r1`, columns `c0..c1` of batch entry
/// `batch` of the step's output in place, once the product is there.
pub type TileFn = unsafe extern "C" fn(
    bufs: *const *mut f32,
    batch: usize,
    r0: usize,
    r1: usize,
    c0: usize,
    c1: usize,
);

/// Host code: reads the step's buffers but the last, writes the last.
pub type HostFn = Box<dyn FnMut(&[&[f32]], &mut [f32]) -> Result<(), String> + Send>;

/// What the leaves of a [`Step`] are. The step structure (kinds, slots, shapes, offsets,
/// product maps) is written once, over this trait: an [`Executor`] runs steps in the
/// [`Resolved`] form (function pointers, packed weights, closures), and
/// [`crate::desc::PlanDesc`] holds them in the [`Described`](crate::desc::Described) form
/// (function and constant indices, plain shapes), which serialises and resolves into the
/// first. That is how the JIT and an ahead-of-time object share one lowering.
pub trait Form {
    /// Generated loop code.
    type Loop: Copy + std::fmt::Debug;
    /// A generated contraction epilogue.
    type Tile: Copy + std::fmt::Debug;
    /// A convolution and its weight.
    type Conv;
    /// A depthwise convolution, its weight and bias.
    type Depthwise;
    /// The constant matrices of a GEMM operand.
    type Packed;
    /// Host code.
    type Host;
}

/// The form an [`Executor`] runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resolved;

impl Form for Resolved {
    type Loop = LoopFn;
    type Tile = TileFn;
    type Conv = Conv2d;
    type Depthwise = DepthwiseConv2d;
    type Packed = Vec<PackedWeight>;
    type Host = HostFn;
}

/// Where a step's buffer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    /// An activation in the arena: an index into [`Plan::values`].
    Value(usize),
    /// Data prepared at load time: an index into [`Plan::constants`].
    Constant(usize),
    /// A buffer the step's code never reads (a weight its kernel holds pre-packed); its
    /// pointer is null.
    Unused,
    /// The product of the step's depthwise convolution, which only its [`BandLoop`] reads:
    /// the start of the executor's scratch, valid while the step runs.
    Product,
}

/// Everything an [`Executor`] runs.
pub struct Plan {
    /// Element count of every activation (graph inputs included).
    pub values: Vec<usize>,
    pub constants: Vec<AlignedBuffer>,
    /// The values the caller fills, in [`Executor::run`]'s input order.
    pub inputs: Vec<usize>,
    /// What the caller reads back, in [`Executor::run`]'s output order.
    pub outputs: Vec<Slot>,
    pub steps: Vec<Step>,
    /// Values stored inside others: the parts of a concatenation written in place by the
    /// steps that compute them, and the concatenation itself, which no step writes.
    pub views: Vec<View>,
}

/// A value stored inside another: element `i` of `value` is element `offset + i` of `base`
/// (which may itself be a view). Neither is a graph input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub value: usize,
    pub base: usize,
    pub offset: usize,
}

/// One kernel launch.
#[derive(Serialize, Deserialize)]
#[serde(bound = "F: SerialForm")]
pub struct Step<F: Form = Resolved> {
    /// For errors and profiles (the graph value it computes).
    pub name: String,
    /// The buffers in the order the kernel expects; the last is the one it writes.
    pub slots: Vec<Slot>,
    pub kernel: StepKernel<F>,
}

/// What a step runs.
// One per step, built once and never moved in a hot loop: boxing the planned kernels would
// only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize)]
#[serde(bound = "F: SerialForm")]
pub enum StepKernel<F: Form = Resolved> {
    Loops {
        entry: F::Loop,
        grid: usize,
    },
    /// A convolution of buffer `input` (a position in the step's slots) into the output.
    Conv {
        conv: F::Conv,
        input: usize,
        product: ProductMap<F>,
    },
    Gemm(Gemm<F>),
    /// A transposed convolution of buffer `input` by the weight at position `weight`, read
    /// where it is ([`conv_transpose2d`]), into the output, NCHW and contiguous; the product
    /// is presented as a convolution's (row `b·C_out + c`), with no scatter.
    ConvTranspose {
        shape: ConvTranspose2dShape,
        input: usize,
        weight: usize,
        product: ProductMap<F>,
    },
    /// A depthwise convolution of buffer `input` (its weight and bias held by the kernel).
    /// Without `rest` it writes the step's output, `activation` applied to each finished
    /// tile (on the runtime's 8-lane kernel); with `rest` (and no activation), it writes its
    /// product to the step's [`Slot::Product`] buffer and `rest` computes the output from
    /// it band by band.
    Depthwise {
        conv: F::Depthwise,
        input: usize,
        rest: Option<BandLoop<F>>,
        #[serde(default)]
        activation: Option<Activation>,
        /// With neither `rest` nor an activation: the group is a layer normalisation of the
        /// convolution over its channels, run natively on each finished band of the output.
        #[serde(default)]
        norm: Option<ChannelNorm>,
    },
    /// A layer normalisation over the channels of buffer `input`, a `[batch, channels,
    /// pixels]` NCHW tensor, into the output ([`crate::kernels::norm::layer_norm_channels`]); `norm`'s weight
    /// and bias are positions in the step's slots.
    Norm {
        input: usize,
        shape: [usize; 3],
        norm: ChannelNorm,
    },
    /// Softmax over the last axis of buffer `input`, `rows` rows of `len`, into the output
    /// ([`crate::kernels::softmax::softmax_rows`]).
    Softmax {
        input: usize,
        rows: usize,
        len: usize,
    },
    /// Max pooling of buffer `input` (a position in the step's slots) into the output.
    MaxPool {
        pool: MaxPool2d,
        input: usize,
    },
    /// Resizing of buffer `input` (a position in the step's slots) into the output.
    Resize {
        resize: Resize2d,
        input: usize,
    },
    Host(F::Host),
}

/// A layer normalisation over the channels of a depthwise convolution's output (its
/// group's `layer_norm2d`, or `layer_norm` over its channels-last permute), run on each
/// finished band of pixels ([`Epilogue::channel_norm`]): `weight` and `bias`, where the norm
/// has them, are positions in the step's slots, one value per channel.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelNorm {
    pub weight: Option<usize>,
    pub bias: Option<usize>,
    pub eps: f32,
    /// The step's output is the normalised pixels channels-last (`[B, H, W, C]`): the
    /// convolution writes into scratch and each band is normalised from there into the
    /// output ([`Epilogue::channel_norm_channels_last`]). Otherwise the output is NCHW,
    /// normalised in place.
    #[serde(default)]
    pub channels_last: bool,
}

/// Generated loop code run on each finished band of a depthwise convolution with
/// [`DepthwiseConv2d::with_pixel_bands`]: grid iterations
/// `(b · out_h + oy) · per_row .. (b · out_h + oy + 1) · per_row` compute output row `oy` of
/// image `b` from that row's pixels of the product alone.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(bound = "F: SerialForm")]
pub struct BandLoop<F: Form = Resolved> {
    pub entry: F::Loop,
    pub per_row: usize,
}

/// How a contraction's product tiles reach the step's output and epilogue.
///
/// The kernel presents its product as a matrix (see [`crate::kernels`]); product row `r` is
/// row `r % rows_per_batch` of epilogue batch entry `base + r / rows_per_batch`, where `base`
/// is the batch entry of the kernel call (a GEMM call per entry; 0 for a convolution, whose
/// rows run over images and groups). Product element `(r, c)` is epilogue element `(row r,
/// column c)`, or `(row c, column r)` when `transposed`: generated epilogues are called
/// with epilogue rows and columns, a [`NativeEpilogue`] with the product's own.
///
/// A GEMM presents `C` (`m x n`), or `Cᵀ` when its output is column-major (a column stride
/// other than 1, no scatter): a product stored transposed, such as a linear layer over
/// channels-last pixels written back channels-first.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound = "F: SerialForm")]
pub struct ProductMap<F: Form = Resolved> {
    pub rows_per_batch: usize,
    pub transposed: bool,
    /// The step's buffer at this position holds `rows_per_batch` values; product row `r`
    /// gets `bias[r % rows_per_batch]` added first (a convolution's per-channel bias when
    /// there is no generated epilogue to add it).
    pub bias: Option<usize>,
    /// The product goes to scratch and each tile is scattered into the output first.
    pub scatter: Option<Scatter>,
    pub epilogue: Option<TileEpilogue<F>>,
}

/// What rewrites each finished tile of a contraction's output.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(bound = "F: SerialForm")]
pub enum TileEpilogue<F: Form = Resolved> {
    /// Generated code.
    Generated(F::Tile),
    /// A runtime kernel: bias and activation, 8 lanes at a time, on the tile as the kernel
    /// presents it.
    Native(NativeEpilogue),
}

/// `out(b, i, j) = act((out(b, i, j) + bias) + residual(b, i, j))` in place, epilogue
/// element `(b, i, j)` at `out[offset + b·batch_stride + i·row_stride + j]` (rows
/// contiguous), and its residual, if any, at the same place of another buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeEpilogue {
    pub activation: Activation,
    pub bias: Option<TileBias>,
    /// The step's buffer at this position, laid out like the output (a residual
    /// connection's shortcut).
    #[serde(default)]
    pub residual: Option<usize>,
    pub offset: usize,
    pub batch_stride: usize,
    pub row_stride: usize,
}

/// The bias of a [`NativeEpilogue`]: the step's buffer at position `slot`, element `i`
/// (per row) or `j` (per column) for epilogue element `(b, i, j)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TileBias {
    pub slot: usize,
    pub per_column: bool,
}

impl NativeEpilogue {
    /// Whether it stays inside an output of `out_len` elements, a bias of `bias_len` and a
    /// residual of `residual_len` over `batches × rows × cols` epilogue elements, each at its
    /// own output element (tiles run concurrently).
    pub fn fits(
        &self,
        [batches, rows, cols]: [usize; 3],
        out_len: usize,
        bias_len: usize,
        residual_len: usize,
    ) -> bool {
        if batches == 0 || rows == 0 || cols == 0 {
            return true;
        }
        let bias_needed = self
            .bias
            .map_or(0, |b| if b.per_column { cols } else { rows });
        // Offsets reach `[0, span)`; each axis, by increasing stride, must step past what the
        // smaller ones cover for no two elements to share one.
        let mut axes = [
            (1, cols),
            (self.row_stride, rows),
            (self.batch_stride, batches),
        ];
        axes.sort_unstable();
        let mut span = 1usize;
        for (stride, extent) in axes {
            if extent > 1 {
                let next = stride
                    .checked_mul(extent - 1)
                    .and_then(|s| s.checked_add(span));
                match next {
                    Some(next) if stride >= span => span = next,
                    _ => return false,
                }
            }
        }
        let end = self.offset.checked_add(span);
        let residual_needed = if self.residual.is_some() {
            end
        } else {
            Some(0)
        };
        end.is_some_and(|end| end <= out_len)
            && bias_len >= bias_needed
            && residual_needed.is_some_and(|needed| needed <= residual_len)
    }

    /// Runs on rows `rows`, columns `cols` of batch entry `batch` of the output at `out`,
    /// with the bias at `bias` and the residual at `residual` (each null without one).
    ///
    /// # Safety
    /// `check_step` accepted this epilogue for the buffers `out` and `bias` point at, the
    /// ranges lie inside the epilogue extents it was checked with, and no one else accesses
    /// these output elements meanwhile.
    unsafe fn run(
        &self,
        out: *mut f32,
        bias: *const f32,
        residual: *const f32,
        batch: usize,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) {
        let base = self.offset + batch * self.batch_stride;
        let (c0, width) = (cols.start, cols.len());
        let per_column = self.bias.is_some_and(|b| b.per_column);
        let row_bias = |i: usize| match (bias.is_null(), per_column) {
            (true, _) => RowBias::None,
            // SAFETY: (the caller's) the bias covers the tile's rows or columns.
            (false, true) => {
                RowBias::PerColumn(unsafe { std::slice::from_raw_parts(bias.add(c0), width) })
            }
            (false, false) => RowBias::Scalar(unsafe { *bias.add(i) }),
        };
        // SAFETY: (the caller's) each row segment is inside the output (and the residual)
        // and holds exactly this tile's elements of the row, which no other tile has.
        let row = |i: usize| unsafe {
            std::slice::from_raw_parts_mut(out.add(base + i * self.row_stride + c0), width)
        };
        if residual.is_null() {
            activate_rows(self.activation, rows.map(|i| (row(i), row_bias(i))));
        } else {
            let shortcut = |i: usize| unsafe {
                std::slice::from_raw_parts(residual.add(base + i * self.row_stride + c0), width)
            };
            let tile = rows.map(|i| (row(i), row_bias(i), shortcut(i)));
            activate_rows_with_residual(self.activation, tile);
        }
    }
}

// Not derived: the derive would require a default function pointer.
impl<F: Form> Default for ProductMap<F> {
    fn default() -> ProductMap<F> {
        ProductMap {
            rows_per_batch: 0,
            transposed: false,
            bias: None,
            scatter: None,
            epilogue: None,
        }
    }
}

/// Epilogue element `(b, i, j)` lives at `out[batch_offsets[b] + i·row_stride + j·col_stride]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scatter {
    pub batch_offsets: Vec<usize>,
    pub row_stride: usize,
    pub col_stride: usize,
}

/// `C[b] = A[b]·B[b]` (`m×k` by `k×n`) for every batch entry `b`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "F: SerialForm")]
pub struct Gemm<F: Form = Resolved> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batches: usize,
    pub a: GemmOperand<F>,
    pub b: GemmOperand<F>,
    /// Without a scatter, `C[b](i, j)` is written at
    /// `out[out_offsets[b] + i·out_row_stride + j·out_col_stride]` (the column stride must be
    /// 1 when there is an epilogue).
    pub out_offsets: Vec<usize>,
    pub out_row_stride: usize,
    pub out_col_stride: usize,
    pub product: ProductMap<F>,
}

/// A constant GEMM operand as packed at load time: row-major for the `gemm` driver, or in
/// column panels for the dense kernel when it is the right operand of an activation with
/// contiguous rows ([`PanelMatrix`]).
#[derive(Debug, Clone)]
pub enum PackedWeight {
    Rows(PackedMatrix),
    Panels(PanelMatrix),
}

impl PackedWeight {
    /// Bytes it holds, padding included.
    pub fn bytes(&self) -> usize {
        match self {
            PackedWeight::Rows(m) => m.bytes(),
            PackedWeight::Panels(p) => p.bytes(),
        }
    }
}

/// A GEMM operand.
#[derive(Serialize, Deserialize)]
#[serde(bound = "F: SerialForm")]
pub enum GemmOperand<F: Form = Resolved> {
    /// Constant matrices packed at load time; batch entry `b` uses `matrices[of_batch[b]]`.
    Packed {
        matrices: F::Packed,
        of_batch: Vec<usize>,
    },
    /// A view of the step's buffer at position `slot`: element `(i, j)` of batch entry `b`
    /// at `offsets[b] + i·row_stride + j·col_stride`.
    Buffer {
        slot: usize,
        offsets: Vec<usize>,
        row_stride: isize,
        col_stride: isize,
    },
}

/// Why a plan could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("invalid plan: {0}")]
    Plan(String),
    #[error(transparent)]
    Arena(#[from] ArenaError),
    #[error("{0}")]
    Io(String),
    #[error("`{step}`: {source}")]
    Kernel { step: String, source: KernelError },
    #[error("`{step}`: {source}")]
    Pool { step: String, source: PoolError },
    #[error("`{step}`: {message}")]
    Host { step: String, message: String },
}

/// A pointer table or base pointer shared with pool tasks.
#[derive(Clone, Copy)]
struct Shared<T>(T);
// SAFETY: tasks only touch disjoint output elements through these pointers (the kernel
// contracts in `crate::kernels` and of generated code).
unsafe impl<T> Sync for Shared<T> {}
// SAFETY: as above.
unsafe impl<T> Send for Shared<T> {}

impl<T: Copy> Shared<T> {
    /// The pointer (a method, so closures capture the wrapper rather than its field).
    fn get(self) -> T {
        self.0
    }
}

/// Wall time of one step over the profiled runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepTimes {
    /// Summed over the runs.
    pub total: Duration,
    /// The fastest run's (`None` before the first): on a shared host, where other work
    /// delays some runs by far more than a kernel takes, the better measure of the kernel.
    pub fastest: Option<Duration>,
}

impl StepTimes {
    fn record(&mut self, t: Duration) {
        self.total += t;
        self.fastest = Some(self.fastest.map_or(t, |f| f.min(t)));
    }
}

/// A plan set up over its arena, ready to run many times.
pub struct Executor {
    plan: Plan,
    pool: ThreadPool,
    /// Base pointers of every step's slots, in slot order (null for unused slots).
    tables: Vec<Box<[*mut f32]>>,
    /// Element counts matching `tables`.
    lens: Vec<Box<[usize]>>,
    value_ptrs: Vec<*mut f32>,
    scratch: AlignedBuffer,
    /// Per step: a GEMM that is a 1x1 convolution with a weight computed per inference, as
    /// the 1x1 kernel that runs it instead ([`computed_weight_conv`]).
    computed_convs: Vec<Option<Conv2d>>,
    arena_bytes: usize,
    arena_lower_bound: usize,
    profile: Option<Vec<StepTimes>>,
    /// Owns the memory `value_ptrs` point into; never touched after setup.
    _arena: AlignedBuffer,
}

// SAFETY: the raw pointers point into buffers the executor owns (arena, constants) and move
// with it; running needs `&mut self`, so no two threads use them at once.
unsafe impl Send for Executor {}

fn invalid(message: String) -> ExecError {
    ExecError::Plan(message)
}

impl Executor {
    /// Checks `plan`, places its values and resolves every pointer.
    pub fn new(plan: Plan, pool: ThreadPool) -> Result<Executor, ExecError> {
        let views = resolve_views(&plan)?;
        let lifetimes = lifetimes(&plan, &views)?;
        let storage = shared_storage(&plan, &lifetimes, &views);
        let arena_plan = plan_arena(&storage.lifetimes)?;
        let mut arena = AlignedBuffer::zeroed(arena_plan.size / 4);
        let base = arena.as_mut_slice().as_mut_ptr();
        let value_ptrs: Vec<*mut f32> = storage
            .of_value
            .iter()
            .zip(&views)
            // SAFETY: every offset plus its storage's size lies inside the planned arena, and
            // a value lies inside its storage (`resolve_views` checked a view's extent).
            .map(|(&g, &(_, at))| unsafe { base.add(arena_plan.offsets[g] / 4 + at) })
            .collect();
        let computed_convs: Vec<Option<Conv2d>> = plan
            .steps
            .iter()
            .map(|step| match &step.kernel {
                StepKernel::Gemm(g) => computed_weight_conv(g, pool.threads()),
                _ => None,
            })
            .collect();
        let scratch_floats = plan
            .steps
            .iter()
            .zip(&computed_convs)
            .map(|(step, conv)| match conv {
                Some(conv) => conv.scratch_len(pool.threads()),
                None => scratch_len(&step.kernel, pool.threads()),
            })
            .max()
            .unwrap_or(0);
        let mut scratch = AlignedBuffer::zeroed(scratch_floats);
        let scratch_ptr = scratch.as_mut_slice().as_mut_ptr();
        let resolve = |slot: Slot, step: &Step| -> (*mut f32, usize) {
            match slot {
                Slot::Value(v) => (value_ptrs[v], plan.values[v]),
                Slot::Constant(c) => {
                    let data = plan.constants[c].as_slice();
                    // Constants are only read; the ABI's pointers are `*mut` for uniformity.
                    (data.as_ptr().cast_mut(), data.len())
                }
                Slot::Unused => (std::ptr::null_mut(), 0),
                Slot::Product => match &step.kernel {
                    StepKernel::Depthwise { conv, .. } => (scratch_ptr, conv.output_len()),
                    // Refused by `check_step`.
                    _ => (std::ptr::null_mut(), 0),
                },
            }
        };
        let mut tables = Vec::with_capacity(plan.steps.len());
        let mut lens = Vec::with_capacity(plan.steps.len());
        for step in &plan.steps {
            let (ptrs, ls): (Vec<*mut f32>, Vec<usize>) =
                step.slots.iter().map(|&s| resolve(s, step)).unzip();
            check_step(step, &ls)?;
            tables.push(ptrs.into_boxed_slice());
            lens.push(ls.into_boxed_slice());
        }
        Ok(Executor {
            tables,
            lens,
            value_ptrs,
            scratch,
            computed_convs,
            arena_bytes: arena_plan.size,
            arena_lower_bound: arena_plan.lower_bound,
            profile: None,
            _arena: arena,
            plan,
            pool,
        })
    }

    /// Bytes of the activation arena.
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }

    /// The most bytes live at any one step: no placement could use a smaller arena.
    pub fn arena_lower_bound(&self) -> usize {
        self.arena_lower_bound
    }

    /// Bytes of the scratch shared by the steps (im2col tiles, permuted products).
    pub fn scratch_bytes(&self) -> usize {
        self.scratch.bytes()
    }

    /// Bytes of the constants prepared at load time (packed weights are held by their steps).
    pub fn constant_bytes(&self) -> usize {
        self.plan.constants.iter().map(AlignedBuffer::bytes).sum()
    }

    /// Bytes of the weights the steps' kernels hold, packed (and transformed) at load time.
    pub fn packed_weight_bytes(&self) -> usize {
        let packed = |operand: &GemmOperand| match operand {
            GemmOperand::Packed { matrices, .. } => matrices.iter().map(PackedWeight::bytes).sum(),
            GemmOperand::Buffer { .. } => 0,
        };
        let step_bytes = |step: &Step| match &step.kernel {
            StepKernel::Conv { conv, .. } => conv.weight_bytes(),
            StepKernel::Depthwise { conv, .. } => conv.weight_bytes(),
            StepKernel::Gemm(g) => packed(&g.a) + packed(&g.b),
            _ => 0,
        };
        self.plan.steps.iter().map(step_bytes).sum()
    }

    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    pub fn steps(&self) -> &[Step] {
        &self.plan.steps
    }

    /// Element count of input `i` / output `i`.
    pub fn input_len(&self, i: usize) -> usize {
        self.plan.values[self.plan.inputs[i]]
    }

    pub fn output_len(&self, i: usize) -> usize {
        match self.plan.outputs[i] {
            Slot::Value(v) => self.plan.values[v],
            Slot::Constant(c) => self.plan.constants[c].len(),
            Slot::Unused | Slot::Product => 0,
        }
    }

    /// Records the wall time of every step from now on ([`Executor::step_times`]).
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(|| vec![StepTimes::default(); self.plan.steps.len()]);
    }

    /// Wall time per step over the runs since profiling was turned on.
    pub fn step_times(&self) -> Option<&[StepTimes]> {
        self.profile.as_deref()
    }

    /// Runs the plan: copies `inputs` (in [`Plan::inputs`] order) into the arena, runs every
    /// step, and copies the outputs into `outputs`.
    pub fn run(&mut self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<(), ExecError> {
        if inputs.len() != self.plan.inputs.len() || outputs.len() != self.plan.outputs.len() {
            return Err(ExecError::Io(format!(
                "{} inputs and {} outputs given, the plan has {} and {}",
                inputs.len(),
                outputs.len(),
                self.plan.inputs.len(),
                self.plan.outputs.len()
            )));
        }
        for (i, data) in inputs.iter().enumerate() {
            let v = self.plan.inputs[i];
            if data.len() != self.plan.values[v] {
                return Err(ExecError::Io(format!(
                    "input {i} has {} elements, the plan expects {}",
                    data.len(),
                    self.plan.values[v]
                )));
            }
            // SAFETY: the value's arena slot holds exactly this many elements.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.value_ptrs[v], data.len()) };
        }
        for s in 0..self.plan.steps.len() {
            let started = self.profile.is_some().then(Instant::now);
            self.run_step(s)?;
            if let (Some(times), Some(t)) = (&mut self.profile, started) {
                times[s].record(t.elapsed());
            }
        }
        for (i, out) in outputs.iter_mut().enumerate() {
            let (ptr, len) = match self.plan.outputs[i] {
                Slot::Value(v) => (self.value_ptrs[v].cast_const(), self.plan.values[v]),
                Slot::Constant(c) => {
                    let d = self.plan.constants[c].as_slice();
                    (d.as_ptr(), d.len())
                }
                Slot::Unused | Slot::Product => (std::ptr::null(), 0),
            };
            if out.len() != len {
                return Err(ExecError::Io(format!(
                    "output {i} has room for {} elements, the plan produces {len}",
                    out.len()
                )));
            }
            // SAFETY: `ptr` holds `len` initialised elements owned by the executor.
            unsafe { std::ptr::copy_nonoverlapping(ptr, out.as_mut_ptr(), len) };
        }
        Ok(())
    }

    fn run_step(&mut self, s: usize) -> Result<(), ExecError> {
        let Executor {
            plan,
            pool,
            tables,
            lens,
            scratch,
            computed_convs,
            ..
        } = self;
        let step = &mut plan.steps[s];
        let (table, lens) = (&tables[s], &lens[s]);
        let out_pos = table.len() - 1;
        let pool_err = |source| ExecError::Pool {
            step: step.name.clone(),
            source,
        };
        let kernel_err = |source| ExecError::Kernel {
            step: step.name.clone(),
            source,
        };
        let bufs = StepBuffers { table, lens };
        let input = |i: usize| bufs.input(i);
        match &mut step.kernel {
            StepKernel::Loops { entry, grid } => {
                let (entry, bufs) = (*entry, Shared(table.as_ptr()));
                if *grid <= 1 || pool.threads() == 1 {
                    // SAFETY: the generated code reads and writes only the step's buffers.
                    unsafe { entry(bufs.get(), 0, *grid) };
                } else {
                    pool.parallel_for(0..*grid, Chunking::Auto, |r, _| {
                        // SAFETY: grid iterations write disjoint elements (the loop ABI).
                        unsafe { entry(bufs.get(), r.start, r.end) }
                    })
                    .map_err(pool_err)?;
                }
            }
            StepKernel::Conv {
                conv,
                input: x,
                product,
            } => {
                let conv_step = ConvStep { bufs, product };
                conv_step
                    .run(pool, conv, input(*x), scratch.as_mut_slice())
                    .map_err(kernel_err)?;
            }
            StepKernel::ConvTranspose {
                shape,
                input: x,
                weight,
                product,
            } => {
                // SAFETY: the output slot, written only by this step.
                let out = unsafe { std::slice::from_raw_parts_mut(table[out_pos], lens[out_pos]) };
                let sink = Sink::new(product, table, 0);
                let f = |tile: Tile<'_>| sink.finish(tile);
                let pixels = shape.out_hw[0] * shape.out_hw[1];
                let fused = nchw_activation(product, shape.batch, shape.out_channels, pixels)
                    .and_then(|fusion| {
                        bufs.fused_epilogue(fusion, shape.out_channels, |slot| {
                            let residual = input(slot).get(..shape.output_len())?;
                            Some(Residual::Buffer(residual))
                        })
                    });
                let epilogue = fused.unwrap_or_else(|| sink.epilogue(&f));
                conv_transpose2d(
                    pool,
                    shape,
                    input(*x),
                    input(*weight),
                    out,
                    scratch.as_mut_slice(),
                    epilogue,
                )
                .map_err(kernel_err)?;
            }
            StepKernel::Gemm(g) if computed_convs[s].is_some() => {
                let conv = computed_convs[s].as_mut().expect("checked by the guard");
                let (
                    GemmOperand::Buffer {
                        slot: a,
                        offsets: ao,
                        ..
                    },
                    GemmOperand::Buffer {
                        slot: b,
                        offsets: bo,
                        ..
                    },
                ) = (&g.a, &g.b)
                else {
                    unreachable!("`computed_weight_conv` takes only buffer operands")
                };
                let weight = input(*a).get(ao[0]..).and_then(|w| w.get(..g.m * g.k));
                let x = input(*b).get(bo[0]..).and_then(|x| x.get(..g.k * g.n));
                let (Some(weight), Some(x)) = (weight, x) else {
                    return Err(kernel_err(KernelError::Shape(
                        "a computed 1x1 weight or its input is shorter than the product".into(),
                    )));
                };
                conv.repack(weight).map_err(kernel_err)?;
                let conv_step = ConvStep {
                    bufs,
                    product: &g.product,
                };
                conv_step
                    .run(pool, conv, x, scratch.as_mut_slice())
                    .map_err(kernel_err)?;
            }
            StepKernel::Gemm(g) => {
                let small = 2 * g.m * g.n * g.k < SERIAL_FLOPS;
                if g.batches > 1 && small && pool.threads() > 1 && g.product.scatter.is_none() {
                    // Products too small to split run on the caller alone: spread the batch
                    // entries over the threads instead (TNT's inner attention, 784 products
                    // of 16x6 by 6x16 per layer). They write disjoint output blocks.
                    let (shared, failed) = (Shared(bufs), std::sync::Mutex::new(None));
                    pool.parallel_for(0..g.batches, Chunking::Auto, |range, _| {
                        for b in range {
                            if let Err(e) = gemm_batch(pool, g, b, shared.get(), &mut []) {
                                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            }
                        }
                    })
                    .map_err(pool_err)?;
                    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
                        return Err(kernel_err(e));
                    }
                } else {
                    for b in 0..g.batches {
                        gemm_batch(pool, g, b, bufs, scratch.as_mut_slice()).map_err(kernel_err)?;
                    }
                }
            }
            StepKernel::Depthwise {
                conv,
                input: x,
                rest,
                activation,
                norm,
            } => {
                let scratch = scratch.as_mut_slice();
                match rest {
                    None => {
                        // SAFETY: the output slot, written only by this step.
                        let out = unsafe {
                            std::slice::from_raw_parts_mut(table[out_pos], lens[out_pos])
                        };
                        match (*activation, *norm) {
                            (None, Some(n)) if n.channels_last => {
                                // The product goes to the start of scratch and each band
                                // from there into the output.
                                let (product, conv_scratch) =
                                    scratch.split_at_mut(conv.output_len());
                                let pixels = conv.out_size().iter().product();
                                // SAFETY: `check_step` sized the output for the product;
                                // the epilogue writes each band's own pixels of it, and
                                // nothing else touches it meanwhile.
                                let norm = unsafe {
                                    Epilogue::channel_norm_channels_last(
                                        out.as_mut_ptr(),
                                        pixels,
                                        n.weight.map(input),
                                        n.bias.map(input),
                                        n.eps,
                                    )
                                };
                                conv.run(pool, input(*x), product, conv_scratch, norm)
                            }
                            _ => {
                                let epilogue = match (*activation, *norm) {
                                    (Some(act), _) => Epilogue::activation(act, None),
                                    (None, Some(n)) => Epilogue::channel_norm(
                                        n.weight.map(input),
                                        n.bias.map(input),
                                        n.eps,
                                    ),
                                    (None, None) => Epilogue::NONE,
                                };
                                conv.run(pool, input(*x), out, scratch, epilogue)
                            }
                        }
                    }
                    Some(BandLoop { entry, per_row }) => {
                        // The product goes to the start of scratch, where the step's
                        // `Slot::Product` points; the kernel's own scratch follows it.
                        let (product, conv_scratch) = scratch.split_at_mut(conv.output_len());
                        let (entry, per_row, bufs) = (*entry, *per_row, Shared(table.as_ptr()));
                        let channels = conv.shape().out_channels.max(1);
                        let [out_h, out_w] = conv.out_size();
                        // A band tile is rows `b·C..(b + 1)·C` by whole output rows.
                        let band = |tile: Tile<'_>| {
                            let first_row = tile.row0() / channels * out_h;
                            let oy0 = tile.col0() / out_w.max(1);
                            let oy1 = (tile.col0() + tile.cols()) / out_w.max(1);
                            let grid = (first_row + oy0) * per_row..(first_row + oy1) * per_row;
                            // SAFETY: these grid iterations read the finished band of the
                            // product and write their own output elements (the loop ABI).
                            unsafe { entry(bufs.get(), grid.start, grid.end) };
                        };
                        conv.run(
                            pool,
                            input(*x),
                            product,
                            conv_scratch,
                            Epilogue::from_closure(&band),
                        )
                    }
                }
                .map_err(kernel_err)?;
            }
            StepKernel::Norm {
                input: x,
                shape,
                norm,
            } => {
                // SAFETY: the output slot, written only by this step.
                let out = unsafe { std::slice::from_raw_parts_mut(table[out_pos], lens[out_pos]) };
                let (weight, bias) = (norm.weight.map(input), norm.bias.map(input));
                crate::kernels::norm::layer_norm_channels(
                    pool,
                    input(*x),
                    out,
                    *shape,
                    weight,
                    bias,
                    norm.eps,
                )
                .map_err(kernel_err)?;
            }
            StepKernel::Softmax {
                input: x,
                rows,
                len,
            } => {
                // SAFETY: the output slot, written only by this step.
                let out = unsafe { std::slice::from_raw_parts_mut(table[out_pos], lens[out_pos]) };
                crate::kernels::softmax::softmax_rows(pool, input(*x), out, *rows, *len)
                    .map_err(kernel_err)?;
            }
            StepKernel::MaxPool {
                pool: max_pool,
                input: x,
            } => {
                // SAFETY: the output slot, written only by this step.
                let out = unsafe { std::slice::from_raw_parts_mut(table[out_pos], lens[out_pos]) };
                max_pool
                    .run(pool, input(*x), out, scratch.as_mut_slice())
                    .map_err(kernel_err)?;
            }
            StepKernel::Resize { resize, input: x } => {
                // SAFETY: the output slot, written only by this step.
                let out = unsafe { std::slice::from_raw_parts_mut(table[out_pos], lens[out_pos]) };
                resize
                    .run(pool, input(*x), out, scratch.as_mut_slice())
                    .map_err(kernel_err)?;
            }
            StepKernel::Host(f) => {
                let ins: Vec<&[f32]> = (0..out_pos).map(input).collect();
                // SAFETY: the output slot, written only by this step.
                let out = unsafe { std::slice::from_raw_parts_mut(table[out_pos], lens[out_pos]) };
                f(&ins, out).map_err(|message| ExecError::Host {
                    step: step.name.clone(),
                    message,
                })?;
            }
        }
        Ok(())
    }
}

/// The view of GEMM operand `op` for batch entry `b`.
fn operand_view<'a>(
    op: &'a GemmOperand,
    b: usize,
    rows: usize,
    cols: usize,
    input: &impl Fn(usize) -> &'a [f32],
) -> Result<MatRef<'a>, KernelError> {
    match op {
        GemmOperand::Packed { matrices, of_batch } => match &matrices[of_batch[b]] {
            PackedWeight::Rows(m) => Ok(m.view()),
            PackedWeight::Panels(_) => Err(KernelError::Shape(
                "a weight packed in panels is only a dense product's right operand".into(),
            )),
        },
        GemmOperand::Buffer {
            slot,
            offsets,
            row_stride,
            col_stride,
        } => MatRef::new(
            input(*slot),
            offsets[b],
            rows,
            cols,
            *row_stride,
            *col_stride,
        ),
    }
}

/// Applies a [`ProductMap`] to the finished tiles of one kernel call.
struct Sink<'a> {
    map: &'a ProductMap,
    bufs: Shared<*const *mut f32>,
    out: Shared<*mut f32>,
    base: usize,
}

impl<'a> Sink<'a> {
    fn new(map: &'a ProductMap, table: &[*mut f32], base: usize) -> Sink<'a> {
        Sink {
            map,
            bufs: Shared(table.as_ptr()),
            out: Shared(table[table.len() - 1]),
            base,
        }
    }

    /// The kernel epilogue running [`Sink::finish`] through `f`, or none when there is
    /// nothing to do per tile.
    fn epilogue<'f, F: Fn(Tile<'_>) + Sync>(&self, f: &'f F) -> Epilogue<'f> {
        let m = self.map;
        if m.scatter.is_none() && m.epilogue.is_none() && m.bias.is_none() {
            Epilogue::NONE
        } else {
            Epilogue::from_closure(f)
        }
    }

    /// Adds the bias to a finished tile and scatters it into the output if the product is
    /// elsewhere, then runs the generated epilogue on it, one batch entry at a time.
    fn finish(&self, mut tile: Tile<'_>) {
        let m = self.map;
        let rpb = m.rows_per_batch.max(1);
        let (row0, rows, col0, cols) = (tile.row0(), tile.rows(), tile.col0(), tile.cols());
        let mut r = row0;
        while r < row0 + rows {
            let (batch, first) = (self.base + r / rpb, r % rpb);
            let seg = (rpb - first).min(row0 + rows - r);
            if let Some(pos) = m.bias {
                for dr in 0..seg {
                    // SAFETY: `check_step` checked the bias holds `rows_per_batch` values.
                    let b = unsafe { *(*self.bufs.get().add(pos)).add(first + dr) };
                    tile.row_mut(r - row0 + dr).iter_mut().for_each(|v| *v += b);
                }
            }
            if let Some(s) = &m.scatter {
                let at = s.batch_offsets[batch];
                for dr in 0..seg {
                    let row = tile.row_mut(r - row0 + dr);
                    for (dc, &v) in row.iter().enumerate() {
                        let (i, j) = if m.transposed {
                            (col0 + dc, first + dr)
                        } else {
                            (first + dr, col0 + dc)
                        };
                        // SAFETY: `check_step` bounded every scattered index by the output.
                        unsafe {
                            *self.out.get().add(at + i * s.row_stride + j * s.col_stride) = v
                        };
                    }
                }
            }
            let (rr, cc) = ((first, first + seg), (col0, col0 + cols));
            let ((r0, r1), (c0, c1)) = if m.transposed { (cc, rr) } else { (rr, cc) };
            match m.epilogue {
                None => {}
                // SAFETY: the epilogue rewrites exactly these finished output elements, which
                // no other task touches.
                Some(TileEpilogue::Generated(f)) => unsafe {
                    f(self.bufs.get(), batch, r0, r1, c0, c1)
                },
                Some(TileEpilogue::Native(e)) => {
                    // SAFETY: `check_step` checked the positions.
                    let buffer = |slot: usize| unsafe { (*self.bufs.get().add(slot)).cast_const() };
                    let bias = e.bias.map_or(std::ptr::null(), |b| buffer(b.slot));
                    let residual = e.residual.map_or(std::ptr::null(), buffer);
                    // Native epilogues are described in the product's own (presented)
                    // coordinates. SAFETY: as above; `check_step` bounded the output, bias and
                    // residual extents.
                    let (rows, cols) = (rr.0..rr.1, cc.0..cc.1);
                    unsafe { e.run(self.out.get(), bias, residual, batch, rows, cols) };
                }
            }
            r += seg;
        }
    }
}

/// A step's resolved buffers: base pointers and lengths, in slot order.
#[derive(Clone, Copy)]
struct StepBuffers<'a> {
    table: &'a [*mut f32],
    lens: &'a [usize],
}

impl<'a> StepBuffers<'a> {
    /// The buffer at position `i`. An unused slot reads as empty, so a kernel pointed at one
    /// reports a short buffer.
    fn input(self, i: usize) -> &'a [f32] {
        if self.table[i].is_null() {
            return &[];
        }
        // SAFETY: the pointer holds `lens[i]` elements; the arena plan keeps the buffers of
        // one step disjoint, and only the last one is written.
        unsafe { std::slice::from_raw_parts(self.table[i].cast_const(), self.lens[i]) }
    }

    /// The epilogue a kernel applies in registers for a [`row_activation`]: the activation,
    /// the first `bias_len` values of the bias slot, and the shortcut where `shortcut` says
    /// the kernel reads the residual slot (`None`: it cannot). `None` also when the bias
    /// slot is shorter.
    fn fused_epilogue(
        self,
        (act, bias, residual): (Activation, Option<usize>, Option<usize>),
        bias_len: usize,
        shortcut: impl FnOnce(usize) -> Option<Residual<'a>>,
    ) -> Option<Epilogue<'a>> {
        let bias = match bias {
            None => None,
            Some(slot) => Some(self.input(slot).get(..bias_len)?),
        };
        Some(match residual.map(shortcut) {
            None => Epilogue::activation(act, bias),
            Some(None) => return None,
            Some(Some(Residual::Buffer(r))) => Epilogue::activation_with_residual(act, bias, r),
            Some(Some(Residual::InOutput)) => {
                Epilogue::activation_with_residual_in_output(act, bias)
            }
        })
    }
}

/// Batch entry `b` of GEMM step `g` into the step's output (or, with a scatter, into
/// `scratch`, then scattered), with its epilogue.
fn gemm_batch(
    pool: &ThreadPool,
    g: &Gemm,
    b: usize,
    bufs: StepBuffers<'_>,
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    let input = |i: usize| bufs.input(i);
    let out_pos = bufs.table.len() - 1;
    let a = operand_view(&g.a, b, g.m, g.k, &input)?;
    let c = if g.product.scatter.is_some() {
        MatMut::row_major(&mut scratch[..g.m * g.n], g.m, g.n)
    } else {
        // SAFETY: the output slot, written only by this step, and of it only batch entry
        // `b`'s block here.
        let out =
            unsafe { std::slice::from_raw_parts_mut(bufs.table[out_pos], bufs.lens[out_pos]) };
        MatMut::new(
            out,
            g.out_offsets[b],
            g.m,
            g.n,
            g.out_row_stride as isize,
            g.out_col_stride as isize,
        )
    }?;
    let sink = Sink::new(&g.product, bufs.table, b);
    let f = |tile: Tile<'_>| sink.finish(tile);
    let fused = column_activation(g, b).and_then(|(act, bias)| match bias {
        None => Some(Epilogue::column_activation(act, None)),
        Some(slot) => input(slot)
            .get(..g.n)
            .map(|b| Epilogue::column_activation(act, Some(b))),
    });
    let fused = fused.or_else(|| {
        bufs.fused_epilogue(transposed_activation(g, b)?, g.n, |slot| {
            // A shortcut sharing the output's bytes is left to the tile epilogue's checks.
            if bufs.table[slot] == bufs.table[out_pos] {
                return None;
            }
            Some(Residual::Buffer(input(slot).get(g.out_offsets[b]..)?))
        })
    });
    let epilogue = fused.unwrap_or_else(|| sink.epilogue(&f));
    match &g.b {
        GemmOperand::Packed { matrices, of_batch } => match &matrices[of_batch[b]] {
            PackedWeight::Panels(w) => w.gemm(pool, a, c, epilogue),
            PackedWeight::Rows(w) => gemm(pool, a, w.view(), c, Output::Overwrite, epilogue),
        },
        GemmOperand::Buffer { .. } => {
            let bm = operand_view(&g.b, b, g.k, g.n, &input)?;
            gemm(pool, a, bm, c, Output::Overwrite, epilogue)
        }
    }
}

/// A planned convolution run into a step's output: by convolution steps, and by GEMMs that
/// are 1x1 convolutions with a computed weight.
struct ConvStep<'a> {
    bufs: StepBuffers<'a>,
    product: &'a ProductMap,
}

impl<'a> ConvStep<'a> {
    /// `conv` of `x` into the output (or into scratch, then scattered), with the product
    /// map's epilogue: in the kernel's registers where it is a plain bias and activation.
    fn run(
        &self,
        pool: &ThreadPool,
        conv: &Conv2d,
        x: &[f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let (table, product) = (self.bufs.table, self.product);
        let out_pos = table.len() - 1;
        let (product_buf, conv_scratch) = if product.scatter.is_some() {
            scratch.split_at_mut(conv.output_len())
        } else {
            // SAFETY: the output slot, written only by this step.
            let out =
                unsafe { std::slice::from_raw_parts_mut(table[out_pos], self.bufs.lens[out_pos]) };
            (out, scratch)
        };
        let sink = Sink::new(product, table, 0);
        let f = |tile: Tile<'_>| sink.finish(tile);
        let channels = conv.shape().out_channels;
        let fused = plain_activation(product, conv).and_then(|fusion| {
            self.bufs.fused_epilogue(fusion, channels, |slot| {
                // The planner gave the dying shortcut's bytes to the output
                // (`shared_storage`): the kernel reads it there. (Empty values may share an
                // address without that.)
                if table[slot] == table[out_pos] && conv.writes_over_residual() {
                    return Some(Residual::InOutput);
                }
                let residual = self.bufs.input(slot).get(..conv.output_len())?;
                Some(Residual::Buffer(residual))
            })
        });
        let epilogue = fused.unwrap_or_else(|| sink.epilogue(&f));
        conv.run(pool, x, product_buf, conv_scratch, epilogue)
    }
}

/// A GEMM that is a 1x1 convolution of one image with a weight computed per inference
/// (EfficientNet's projections after a squeeze-excitation gate folded into their weight):
/// `A` the weight, `[m, k]` row-major in a buffer, `B` the image's `k` channels of `n`
/// pixels, rows contiguous, and `C` written row-major in place. Planned once on the
/// pixel-lane 1x1 kernel ([`Conv2d::for_computed_weight`]), which takes each weight
/// repacked, in place of the `gemm` crate, which packs both operands per call (B0's
/// projections, 2 threads, fastest of four runs each: blocks.0.0 at 112x112 0.122 -> 0.097
/// ms, blocks.1.0 and 1.1 at 56x56 0.086 -> 0.068 and 0.126 -> 0.100).
fn computed_weight_conv(g: &Gemm, threads: usize) -> Option<Conv2d> {
    let contiguous = |op: &GemmOperand, rows: usize| match op {
        GemmOperand::Buffer {
            offsets,
            row_stride,
            col_stride,
            ..
        } => offsets.len() == 1 && *row_stride == rows as isize && *col_stride == 1,
        GemmOperand::Packed { .. } => false,
    };
    let in_place = g.product.scatter.is_none()
        && !g.product.transposed
        && g.product.rows_per_batch == g.m
        && g.out_offsets == [0]
        && g.out_row_stride == g.n
        && g.out_col_stride == 1;
    if g.batches != 1 || !in_place || !contiguous(&g.a, g.k) || !contiguous(&g.b, g.n) {
        return None;
    }
    Conv2d::for_computed_weight(Conv2dShape::pointwise(1, g.k, g.m, [1, g.n]), threads)
}

/// When all a convolution's [`ProductMap`] does is `act((x + bias[channel]) + residual)` on
/// the NCHW output in place, the residual laid out like the output: the activation and the
/// slots of the bias and the residual, each optional, for [`Epilogue::activation`] or
/// [`Epilogue::activation_with_residual`], which kernels may apply in registers.
/// `check_step` checked that a bias slot holds a value per channel.
fn plain_activation(
    map: &ProductMap,
    conv: &Conv2d,
) -> Option<(Activation, Option<usize>, Option<usize>)> {
    let s = conv.shape();
    let pixels = conv.out_size()[0] * conv.out_size()[1];
    if s.layout != Layout::Nchw {
        return None;
    }
    nchw_activation(map, s.batch, s.out_channels, pixels)
}

/// [`plain_activation`] for a kernel whose output is `batch` NCHW images of `channels`
/// planes of `pixels`, presented a row per plane.
fn nchw_activation(
    map: &ProductMap,
    batch: usize,
    channels: usize,
    pixels: usize,
) -> Option<(Activation, Option<usize>, Option<usize>)> {
    if map.scatter.is_some() || map.transposed || map.rows_per_batch != channels {
        return None;
    }
    row_activation(map, |e| {
        e.offset == 0
            && e.row_stride == pixels
            && (batch == 1 || e.batch_stride == channels * pixels)
    })
}

/// A [`ProductMap`]'s bias per row (its own or its native epilogue's, not both), activation
/// and residual slot, when its epilogue is native and `in_place` accepts it, or it has a bias
/// alone.
fn row_activation(
    map: &ProductMap,
    in_place: impl Fn(&NativeEpilogue) -> bool,
) -> Option<(Activation, Option<usize>, Option<usize>)> {
    match (map.bias, &map.epilogue) {
        (Some(slot), None) => Some((Activation::Identity, Some(slot), None)),
        (bias, Some(TileEpilogue::Native(e))) if in_place(e) => match (bias, e.bias) {
            (None, None) => Some((e.activation, None, e.residual)),
            (Some(slot), None)
            | (
                None,
                Some(TileBias {
                    slot,
                    per_column: false,
                }),
            ) => Some((e.activation, Some(slot), e.residual)),
            _ => None,
        },
        _ => None,
    }
}

/// When all batch entry `b` of a GEMM's [`ProductMap`] does is `act((x + bias[row]) +
/// residual)` on its presented `Cᵀ` in place, `C` column-major (a linear layer over
/// channels-last pixels written back channels-first, then added to its shortcut): the
/// activation and the slots of the bias and the residual, for [`Epilogue::activation`] or
/// [`Epilogue::activation_with_residual`], which the dense kernel applies in registers.
fn transposed_activation(g: &Gemm, b: usize) -> Option<(Activation, Option<usize>, Option<usize>)> {
    let map = &g.product;
    let column_major = map.scatter.is_none()
        && map.transposed
        && map.rows_per_batch == g.n
        && g.out_row_stride == 1;
    if !column_major {
        return None;
    }
    row_activation(map, |e| {
        e.row_stride == g.out_col_stride
            && e.batch_stride
                .checked_mul(b)
                .and_then(|o| o.checked_add(e.offset))
                == g.out_offsets.get(b).copied()
    })
}

/// When all batch entry `b` of a GEMM's [`ProductMap`] does is `act(x + bias[column])` on
/// its row-major output in place: the activation and the bias's slot, for
/// [`Epilogue::column_activation`], which the dense kernel applies in registers.
/// `check_step` checked that a bias slot holds a value per column.
fn column_activation(g: &Gemm, b: usize) -> Option<(Activation, Option<usize>)> {
    let map = &g.product;
    let Some(TileEpilogue::Native(e)) = &map.epilogue else {
        return None;
    };
    let in_place = map.scatter.is_none()
        && map.bias.is_none()
        && !map.transposed
        && map.rows_per_batch == g.m
        && g.out_col_stride == 1
        && e.row_stride == g.out_row_stride
        && e.batch_stride
            .checked_mul(b)
            .and_then(|o| o.checked_add(e.offset))
            == g.out_offsets.get(b).copied();
    match e.bias {
        _ if !in_place || e.residual.is_some() => None,
        None => Some((e.activation, None)),
        Some(TileBias {
            slot,
            per_column: true,
        }) => Some((e.activation, Some(slot))),
        Some(_) => None,
    }
}

/// Scratch floats a step needs on `threads` threads.
fn scratch_len(kernel: &StepKernel, threads: usize) -> usize {
    match kernel {
        StepKernel::Conv { conv, product, .. } => {
            conv.scratch_len(threads)
                + if product.scatter.is_some() {
                    conv.output_len()
                } else {
                    0
                }
        }
        StepKernel::Gemm(g) if g.product.scatter.is_some() => g.m * g.n,
        StepKernel::ConvTranspose { shape, .. } => shape.scratch_len(threads),
        StepKernel::Depthwise {
            conv, rest, norm, ..
        } => {
            let product = rest.is_some() || norm.is_some_and(|n| n.channels_last);
            conv.scratch_len(threads) + if product { conv.output_len() } else { 0 }
        }
        StepKernel::MaxPool { pool, .. } => pool.scratch_len(threads),
        StepKernel::Resize { resize, .. } => resize.scratch_len(threads),
        _ => 0,
    }
}

/// The checks that keep the unchecked parts of `run` in bounds: slot positions and the
/// extent of scattered products.
fn check_step(step: &Step, lens: &[usize]) -> Result<(), ExecError> {
    let fail = |what: String| Err(invalid(format!("step `{}`: {what}", step.name)));
    let Some(&out_len) = lens.last() else {
        return fail("no buffers".into());
    };
    if !matches!(step.slots.last(), Some(Slot::Value(_))) {
        return fail("it writes a constant".into());
    }
    let products = step.slots.iter().filter(|&&s| s == Slot::Product).count();
    let (product, rows, cols, batches) = match &step.kernel {
        _ if products > 0
            && !matches!(step.kernel, StepKernel::Depthwise { rest: Some(_), .. }) =>
        {
            return fail("a product slot without a depthwise band loop".into());
        }
        StepKernel::Loops { .. } | StepKernel::Host(_) => return Ok(()),
        StepKernel::Norm { input, shape, norm } => {
            let len = shape.iter().product::<usize>();
            if *input + 1 >= lens.len() || lens[*input] < len || out_len < len {
                return fail("buffers smaller than the norm".into());
            }
            for at in [norm.weight, norm.bias].into_iter().flatten() {
                if at + 1 >= lens.len() || lens[at] < shape[1] {
                    return fail(format!("a norm parameter at position {at}"));
                }
            }
            return Ok(());
        }
        StepKernel::Softmax { input, rows, len } => {
            let total = rows.checked_mul(*len);
            if *input + 1 >= lens.len() || total.is_none_or(|t| lens[*input] < t || out_len < t) {
                return fail("buffers smaller than the softmax".into());
            }
            return Ok(());
        }
        StepKernel::MaxPool { pool, input } => {
            if *input + 1 >= lens.len() {
                return fail(format!("input position {input}"));
            }
            if let Err(e) = pool.check() {
                return fail(e.to_string());
            }
            if lens[*input] < pool.input_len() || out_len < pool.output_len() {
                return fail("buffers smaller than the pooling".into());
            }
            return Ok(());
        }
        StepKernel::Resize { resize, input } => {
            if *input + 1 >= lens.len() {
                return fail(format!("input position {input}"));
            }
            if let Err(e) = resize.check() {
                return fail(e.to_string());
            }
            if lens[*input] < resize.input_len() || out_len < resize.output_len() {
                return fail("buffers smaller than the resize".into());
            }
            return Ok(());
        }
        StepKernel::Depthwise {
            conv,
            input,
            rest,
            activation,
            norm,
        } => {
            if *input + 1 >= lens.len() {
                return fail(format!("input position {input}"));
            }
            if rest.is_some() && activation.is_some() {
                return fail("an activation beside a band loop".into());
            }
            if let Some(n) = norm {
                if rest.is_some() || activation.is_some() || !conv.pixel_bands() {
                    return fail("a channel norm needs pixel-band tiles and nothing else".into());
                }
                let channels = conv.shape().out_channels;
                for at in [n.weight, n.bias].into_iter().flatten() {
                    if at + 1 >= lens.len() || lens[at] < channels {
                        return fail(format!("a norm parameter at position {at}"));
                    }
                }
                if n.channels_last && out_len < conv.output_len() {
                    return fail("an output smaller than the normalised product".into());
                }
            }
            if rest.is_some() && (products != 1 || !conv.pixel_bands()) {
                return fail("a band loop needs one product slot and pixel-band tiles".into());
            }
            return Ok(());
        }
        StepKernel::Conv {
            conv,
            input,
            product,
        } => {
            if *input + 1 >= lens.len() {
                return fail(format!("input position {input}"));
            }
            let rpb = product.rows_per_batch.max(1);
            let rows = conv.shape().batch * conv.shape().out_channels;
            let batches = rows.div_ceil(rpb);
            let [oh, ow] = conv.out_size();
            (product, rpb, oh * ow, batches)
        }
        StepKernel::ConvTranspose {
            shape,
            input,
            weight,
            product,
        } => {
            for (what, at, len) in [
                ("input", *input, shape.input_len()),
                ("weight", *weight, shape.weight_len()),
            ] {
                if at + 1 >= lens.len() || lens[at] < len {
                    return fail(format!("a {what} smaller than the transposed convolution"));
                }
            }
            if let Err(e) = shape.check() {
                return fail(e.to_string());
            }
            if out_len < shape.output_len() || product.scatter.is_some() {
                return fail("an output other than the transposed convolution's".into());
            }
            let rpb = product.rows_per_batch.max(1);
            let rows = shape.batch * shape.out_channels;
            (
                product,
                rpb,
                shape.out_hw[0] * shape.out_hw[1],
                rows.div_ceil(rpb),
            )
        }
        StepKernel::Gemm(g) => {
            for op in [&g.a, &g.b] {
                match op {
                    GemmOperand::Packed { matrices, of_batch } => {
                        if of_batch.len() < g.batches
                            || of_batch.iter().any(|&i| i >= matrices.len())
                        {
                            return fail("packed operand per batch entry".into());
                        }
                    }
                    GemmOperand::Buffer { slot, offsets, .. } => {
                        if *slot + 1 >= lens.len() || offsets.len() < g.batches {
                            return fail("buffer operand".into());
                        }
                    }
                }
            }
            if g.product.scatter.is_none() && g.out_offsets.len() < g.batches {
                return fail("output offsets per batch entry".into());
            }
            // The kernels present a column-major output transposed.
            if g.product.scatter.is_none() && g.out_col_stride != 1 {
                (&g.product, g.n, g.m, g.batches)
            } else {
                (&g.product, g.m, g.n, g.batches)
            }
        }
    };
    if let Some(pos) = product.bias {
        if pos + 1 >= lens.len() || lens[pos] < product.rows_per_batch || product.transposed {
            return fail("a bias that does not cover the rows".into());
        }
    }
    if let Some(TileEpilogue::Native(e)) = &product.epilogue {
        let input_len = |slot: Option<usize>| match slot {
            Some(slot) if slot + 1 < lens.len() => lens[slot],
            Some(_) => 0,
            None => usize::MAX,
        };
        let (bias_len, residual_len) = (input_len(e.bias.map(|b| b.slot)), input_len(e.residual));
        if !e.fits([batches, rows, cols], out_len, bias_len, residual_len) {
            return fail("a native epilogue reaching past its buffers or aliasing".into());
        }
    }
    if let Some(s) = &product.scatter {
        // Scattered elements are placed in the epilogue's coordinates.
        let (rows, cols) = if product.transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        let span = (rows.max(1) - 1) * s.row_stride + (cols.max(1) - 1) * s.col_stride;
        let fits = s.batch_offsets.len() >= batches
            && s.batch_offsets[..batches]
                .iter()
                .all(|&o| o + span < out_len);
        if !fits {
            return fail("a scattered product reaches past the output".into());
        }
    }
    Ok(())
}

/// Where each value is stored, from the plan's views: `(root, offset)`, the value that is
/// no view whose storage holds it and its first element's offset there (`(v, 0)` for a
/// value that is no view). Refuses views out of range, past their base's end, of graph
/// inputs, given twice for one value, or in a cycle.
fn resolve_views(plan: &Plan) -> Result<Vec<(usize, usize)>, ExecError> {
    let n = plan.values.len();
    let mut parent: Vec<Option<(usize, usize)>> = vec![None; n];
    for view in &plan.views {
        let View {
            value,
            base,
            offset,
        } = *view;
        let inside = value < n
            && base < n
            && value != base
            && offset
                .checked_add(plan.values[value])
                .is_some_and(|end| end <= plan.values[base]);
        if !inside || plan.inputs.contains(&value) || plan.inputs.contains(&base) {
            return Err(invalid(format!("a view out of range: {view:?}")));
        }
        if parent[value].replace((base, offset)).is_some() {
            return Err(invalid(format!("value {value} is a view twice")));
        }
    }
    (0..n)
        .map(|v| {
            let (mut root, mut at) = (v, 0);
            for _ in 0..=n {
                match parent[root] {
                    None => return Ok((root, at)),
                    Some((base, offset)) => (root, at) = (base, at + offset),
                }
            }
            Err(invalid(format!("views in a cycle through value {v}")))
        })
        .collect()
}

/// Which values share a storage through views (`views` from [`resolve_views`]): the views
/// and their roots.
fn stored_with_others(views: &[(usize, usize)]) -> Vec<bool> {
    let mut shared = vec![false; views.len()];
    for (v, &(root, _)) in views.iter().enumerate() {
        if root != v {
            shared[v] = true;
            shared[root] = true;
        }
    }
    shared
}

/// Every value's lifetime in steps: inputs are written at step 0, step `s` of the plan is
/// step `s + 1`, and outputs are read at the step after the last. A value stored with others
/// (`views`: a concatenation and its parts) is written by its parts' steps: one that no
/// step writes (the concatenation) is live from its first read.
fn lifetimes(plan: &Plan, views: &[(usize, usize)]) -> Result<Vec<Lifetime>, ExecError> {
    const UNDEFINED: usize = usize::MAX;
    let shared = stored_with_others(views);
    let mut def = vec![UNDEFINED; plan.values.len()];
    let mut first_read = vec![UNDEFINED; plan.values.len()];
    let mut last = vec![0; plan.values.len()];
    let check = |v: usize| {
        if v < plan.values.len() {
            Ok(v)
        } else {
            Err(invalid(format!("value {v} out of range")))
        }
    };
    for &v in &plan.inputs {
        def[check(v)?] = 0;
    }
    for (s, step) in plan.steps.iter().enumerate() {
        let at = s + 1;
        for (i, &slot) in step.slots.iter().enumerate() {
            match slot {
                Slot::Value(v) if i + 1 == step.slots.len() => {
                    if def[check(v)?] != UNDEFINED {
                        return Err(invalid(format!(
                            "value {v} is written twice (by `{}`)",
                            step.name
                        )));
                    }
                    def[v] = at;
                    last[v] = at;
                }
                Slot::Value(v) => {
                    // An empty value has nothing to write: no step computes it.
                    if def[check(v)?] == UNDEFINED && plan.values[v] > 0 && !shared[v] {
                        return Err(invalid(format!(
                            "`{}` reads value {v} before it is written",
                            step.name
                        )));
                    }
                    first_read[v] = first_read[v].min(at);
                    last[v] = at;
                }
                Slot::Constant(c) if c >= plan.constants.len() => {
                    return Err(invalid(format!("constant {c} out of range")))
                }
                Slot::Constant(_) | Slot::Unused | Slot::Product => {}
            }
        }
    }
    let end = plan.steps.len() + 1;
    for &o in &plan.outputs {
        match o {
            Slot::Value(v) => {
                if def[check(v)?] == UNDEFINED && plan.values[v] > 0 && !shared[v] {
                    return Err(invalid(format!("output value {v} is never written")));
                }
                first_read[v] = first_read[v].min(end);
                last[v] = end;
            }
            Slot::Constant(c) if c >= plan.constants.len() => {
                return Err(invalid(format!("constant {c} out of range")))
            }
            Slot::Constant(_) => {}
            Slot::Unused | Slot::Product => {
                return Err(invalid("an output without a buffer".into()))
            }
        }
    }
    Ok(plan
        .values
        .iter()
        .enumerate()
        .map(|(v, &len)| {
            let first_def = match (def[v], first_read[v]) {
                (UNDEFINED, read) if shared[v] && read != UNDEFINED => read,
                (UNDEFINED, _) => 0,
                (d, _) => d,
            };
            Lifetime {
                bytes: len * 4,
                first_def,
                last_use: last[v].max(first_def),
                pinned: false,
            }
        })
        .collect())
}

/// Which arena storage each value lives in ([`shared_storage`]).
struct Storage {
    /// Every storage's size and lifetime: the union of its values'.
    lifetimes: Vec<Lifetime>,
    /// The storage of each value.
    of_value: Vec<usize>,
}

/// Gives the bytes of a convolution's shortcut to the convolution's output where the
/// shortcut dies at that step, no other buffer of the step (the convolution's input among
/// them) is the shortcut, both have the same length, and the kernel adds the shortcut in registers before storing over it
/// ([`Conv2d::writes_over_residual`]): the closing 1x1 of a ResNet bottleneck then needs no
/// third block-sized buffer beside its input and shortcut. A view lives in its root's
/// storage (`views`, from [`resolve_views`]). Every other value has a storage of its own.
fn shared_storage(plan: &Plan, lifetimes: &[Lifetime], views: &[(usize, usize)]) -> Storage {
    // A view lives in its root's storage; values stored with others take no shortcut's
    // bytes, nor give theirs.
    let mut owner: Vec<usize> = views.iter().map(|&(root, _)| root).collect();
    let in_tree = stored_with_others(views);
    for (s, step) in plan.steps.iter().enumerate() {
        let StepKernel::Conv {
            conv,
            product,
            input,
        } = &step.kernel
        else {
            continue;
        };
        let Some((_, _, Some(at))) = plain_activation(product, conv) else {
            continue;
        };
        let (Some(&Slot::Value(shortcut)), Some(&Slot::Value(out))) =
            (step.slots.get(at), step.slots.last())
        else {
            continue;
        };
        // Once in the slots, and not the convolution's input too (`x + conv1x1(x)`, one
        // slot read both ways): the kernel stores each block of channels over the shortcut
        // while later blocks still read it as their input.
        let read_once = at != *input
            && step
                .slots
                .iter()
                .filter(|&&slot| slot == Slot::Value(shortcut))
                .count()
                == 1;
        if read_once
            && !in_tree[shortcut]
            && !in_tree[out]
            && lifetimes[shortcut].last_use == s + 1
            && plan.values[shortcut] == plan.values[out]
            && conv.writes_over_residual()
        {
            owner[out] = owner[shortcut];
        }
    }
    let mut storage_of_owner = vec![usize::MAX; lifetimes.len()];
    let mut storage = Storage {
        lifetimes: Vec::with_capacity(lifetimes.len()),
        of_value: Vec::with_capacity(lifetimes.len()),
    };
    for (v, life) in lifetimes.iter().enumerate() {
        let g = &mut storage_of_owner[owner[v]];
        if *g == usize::MAX {
            *g = storage.lifetimes.len();
            storage.lifetimes.push(*life);
        } else {
            let merged = &mut storage.lifetimes[*g];
            merged.bytes = merged.bytes.max(life.bytes);
            merged.first_def = merged.first_def.min(life.first_def);
            merged.last_use = merged.last_use.max(life.last_use);
            merged.pinned |= life.pinned;
        }
        storage.of_value.push(*g);
    }
    storage
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernels::{Conv2dShape, ConvStrategy};

    /// A convolution's product map that only adds a bias per channel (and a residual laid out
    /// like the output) and applies a native activation to its NCHW output in place goes to
    /// the kernel as `Epilogue::activation` (or `activation_with_residual`), applied in
    /// registers where the kernel can; anything else stays a tile epilogue.
    #[test]
    fn plain_bias_and_activation_maps_are_recognised() {
        let shape = Conv2dShape::pointwise(2, 8, 6, [4, 4]);
        let conv = Conv2d::new(shape, &[0.0; 48], 1).unwrap();
        let per_row = |slot| TileBias {
            slot,
            per_column: false,
        };
        let native = |bias, offset, batch_stride, row_stride| ProductMap {
            rows_per_batch: 6,
            epilogue: Some(TileEpilogue::Native(NativeEpilogue {
                activation: Activation::Silu,
                bias,
                residual: None,
                offset,
                batch_stride,
                row_stride,
            })),
            ..ProductMap::default()
        };
        let silu = Activation::Silu;
        let plain = |m: &ProductMap| plain_activation(m, &conv);
        assert_eq!(
            plain(&native(Some(per_row(1)), 0, 96, 16)),
            Some((silu, Some(1), None))
        );
        assert_eq!(plain(&native(None, 0, 96, 16)), Some((silu, None, None)));
        let bias_only = ProductMap {
            rows_per_batch: 6,
            bias: Some(2),
            ..ProductMap::default()
        };
        assert_eq!(
            plain(&bias_only),
            Some((Activation::Identity, Some(2), None))
        );
        let both = ProductMap {
            bias: Some(2),
            ..native(None, 0, 96, 16)
        };
        assert_eq!(plain(&both), Some((silu, Some(2), None)));
        // Elsewhere than the output in place, two biases, a bias per column.
        for m in [
            native(None, 1, 96, 16),
            native(None, 0, 100, 16),
            native(None, 0, 96, 17),
            ProductMap {
                bias: Some(2),
                ..native(Some(per_row(1)), 0, 96, 16)
            },
            native(
                Some(TileBias {
                    slot: 1,
                    per_column: true,
                }),
                0,
                96,
                16,
            ),
            ProductMap {
                transposed: true,
                ..native(None, 0, 96, 16)
            },
            ProductMap {
                rows_per_batch: 12,
                ..native(None, 0, 96, 16)
            },
        ] {
            assert_eq!(plain(&m), None, "{m:?}");
        }
        // A residual laid out like the output goes along (the direct 1x1 kernel adds it in
        // registers); elsewhere it keeps the whole epilogue on finished tiles.
        let with_residual = |offset, batch_stride| {
            let mut m = native(Some(per_row(1)), offset, batch_stride, 16);
            if let Some(TileEpilogue::Native(e)) = &mut m.epilogue {
                e.residual = Some(3);
            }
            m
        };
        assert_eq!(plain(&with_residual(0, 96)), Some((silu, Some(1), Some(3))));
        assert_eq!(plain(&with_residual(1, 96)), None);
        assert_eq!(plain(&with_residual(0, 100)), None);
    }

    /// A native epilogue fits only where every element has its own place inside the output,
    /// the bias covers its rows or columns and a residual the output's extent.
    #[test]
    fn native_epilogues_are_checked_for_bounds_and_aliasing() {
        let e = |batch_stride, row_stride, bias| NativeEpilogue {
            activation: Activation::Silu,
            bias,
            residual: None,
            offset: 0,
            batch_stride,
            row_stride,
        };
        let per = |per_column| {
            Some(TileBias {
                slot: 0,
                per_column,
            })
        };
        // 2 x 3 x 4 elements, dense: exactly 24.
        assert!(e(12, 4, None).fits([2, 3, 4], 24, 0, 0));
        assert!(!e(12, 4, None).fits([2, 3, 4], 23, 0, 0));
        // Batch entries interleaved with rows (a permuted product) still never collide.
        assert!(e(4, 8, None).fits([2, 3, 4], 24, 0, 0));
        // Rows overlapping columns, or batch entries overlapping rows.
        assert!(!e(12, 3, None).fits([2, 3, 4], 24, 0, 0));
        assert!(!e(8, 4, None).fits([2, 3, 4], 24, 0, 0));
        // The bias covers the rows or the columns.
        assert!(e(12, 4, per(false)).fits([2, 3, 4], 24, 3, 0));
        assert!(!e(12, 4, per(true)).fits([2, 3, 4], 24, 3, 0));
        assert!(e(12, 4, per(true)).fits([2, 3, 4], 24, 4, 0));
        // A residual covers every element the output's way, from the same offset.
        let residual = NativeEpilogue {
            residual: Some(1),
            offset: 2,
            ..e(12, 4, None)
        };
        assert!(residual.fits([2, 3, 4], 26, 0, 26));
        assert!(!residual.fits([2, 3, 4], 26, 0, 25));
    }

    /// Rows of one epilogue batch entry and columns of the outputs the test epilogue sees.
    const ROWS: usize = 4;
    const COLS: usize = 15;

    /// `out[i] = in0[i] + 1` for grid iterations `start..end` (one element each).
    pub(crate) unsafe extern "C" fn add_one(bufs: *const *mut f32, start: usize, end: usize) {
        let (x, y) = (*bufs, *bufs.add(1));
        for i in start..end {
            *y.add(i) = *x.add(i) + 1.0;
        }
    }

    /// The generated-epilogue stand-in: `out(b, i, j) = 2·out(b, i, j) + bias[i]` for an
    /// output `[batch, ROWS, COLS]` in buffer 2, bias in buffer 1.
    unsafe extern "C" fn double_plus_bias(
        bufs: *const *mut f32,
        batch: usize,
        r0: usize,
        r1: usize,
        c0: usize,
        c1: usize,
    ) {
        let (bias, out) = (*bufs.add(1), *bufs.add(2));
        for i in r0..r1 {
            for j in c0..c1 {
                let at = (batch * ROWS + i) * COLS + j;
                *out.add(at) = 2.0 * *out.add(at) + *bias.add(i);
            }
        }
    }

    fn pool(threads: usize) -> ThreadPool {
        ThreadPool::new(threads).unwrap()
    }

    /// `n` deterministic values in `[-0.5, 0.5)`.
    pub(crate) fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 97)
            .map(|v| v as f32 / 97.0 - 0.5)
            .collect()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max)
    }

    /// x -> v1 -> v2 -> v3 -> y, each `+1`.
    fn chain(n: usize) -> Plan {
        let step = |s: usize| Step {
            name: format!("v{}", s + 1),
            slots: vec![Slot::Value(s), Slot::Value(s + 1)],
            kernel: StepKernel::Loops {
                entry: add_one as LoopFn,
                grid: n,
            },
        };
        Plan {
            values: vec![n; 5],
            constants: Vec::new(),
            inputs: vec![0],
            outputs: vec![Slot::Value(4)],
            steps: (0..4).map(step).collect(),
            views: Vec::new(),
        }
    }

    #[test]
    fn chained_loop_steps_reuse_arena_bytes() {
        let n = 1000;
        for threads in [1, 3] {
            let mut exec = Executor::new(chain(n), pool(threads)).unwrap();
            // A step's input and output live together, values two steps apart never do:
            // two slots suffice for five values.
            assert_eq!(exec.arena_bytes(), 2 * (n * 4).next_multiple_of(64));
            assert_eq!(exec.arena_bytes(), exec.arena_lower_bound());
            let x = data(n, 1);
            let mut y = vec![0.0; n];
            for _ in 0..2 {
                exec.run(&[&x], &mut [&mut y]).unwrap();
                assert!(x
                    .iter()
                    .zip(&y)
                    .all(|(a, b)| *b == *a + 1.0 + 1.0 + 1.0 + 1.0));
            }
        }
    }

    /// Two steps write the halves of value 3 through views (values 1 and 2), and a third
    /// reads all of it: a concatenation with no step. The three share one storage. Views
    /// out of range, of an input, given twice or in a cycle are refused.
    #[test]
    fn views_put_values_inside_others() {
        let n = 20;
        let step = |name: &str, slots: Vec<Slot>, grid: usize| Step {
            name: name.into(),
            slots,
            kernel: StepKernel::Loops {
                entry: add_one as LoopFn,
                grid,
            },
        };
        let plan = || Plan {
            values: vec![n, n, n, 2 * n, 2 * n],
            constants: Vec::new(),
            inputs: vec![0],
            outputs: vec![Slot::Value(4)],
            steps: vec![
                step("a", vec![Slot::Value(0), Slot::Value(1)], n),
                step("b", vec![Slot::Value(1), Slot::Value(2)], n),
                step("y", vec![Slot::Value(3), Slot::Value(4)], 2 * n),
            ],
            views: vec![
                View {
                    value: 1,
                    base: 3,
                    offset: 0,
                },
                View {
                    value: 2,
                    base: 3,
                    offset: n,
                },
            ],
        };
        let mut exec = Executor::new(plan(), pool(2)).unwrap();
        // At most the concatenation (holding its parts) and the output are live at once.
        let bytes = |floats: usize| (floats * 4).next_multiple_of(64);
        assert_eq!(exec.arena_lower_bound(), 2 * bytes(2 * n));
        let x = data(n, 3);
        let mut y = vec![0.0; 2 * n];
        exec.run(&[&x], &mut [&mut y]).unwrap();
        for i in 0..n {
            assert_eq!(y[i], x[i] + 1.0 + 1.0);
            assert_eq!(y[n + i], x[i] + 1.0 + 1.0 + 1.0);
        }
        let refused = |views: Vec<View>| {
            let mut p = plan();
            p.views = views;
            matches!(Executor::new(p, pool(1)), Err(ExecError::Plan(_)))
        };
        let view = |value, base, offset| View {
            value,
            base,
            offset,
        };
        assert!(refused(vec![view(2, 3, n + 1)]), "past the end");
        assert!(refused(vec![view(0, 3, 0)]), "an input");
        assert!(refused(vec![view(1, 3, 0), view(1, 3, n)]), "twice");
        assert!(refused(vec![view(1, 2, 0), view(2, 1, 0)]), "a cycle");
        assert!(refused(vec![view(1, 9, 0)]), "no such value");
    }

    #[test]
    fn invalid_plans_and_inputs_are_errors() {
        let mut read_before_write = chain(4);
        read_before_write.inputs.clear();
        assert!(matches!(
            Executor::new(read_before_write, pool(1)),
            Err(ExecError::Plan(_))
        ));
        let mut writes_constant = chain(4);
        writes_constant.constants.push(AlignedBuffer::zeroed(4));
        writes_constant.steps[3].slots[1] = Slot::Constant(0);
        assert!(matches!(
            Executor::new(writes_constant, pool(1)),
            Err(ExecError::Plan(_))
        ));
        let mut exec = Executor::new(chain(4), pool(1)).unwrap();
        let mut y = vec![0.0; 4];
        assert!(matches!(
            exec.run(&[&[0.0; 3]], &mut [&mut y]),
            Err(ExecError::Io(_))
        ));
    }

    fn gemm_plan(g: Gemm, a_len: usize, bias: &[f32]) -> Plan {
        let out = g.batches * ROWS * COLS;
        Plan {
            values: vec![a_len, out],
            constants: vec![AlignedBuffer::from_slice(bias)],
            inputs: vec![0],
            outputs: vec![Slot::Value(1)],
            steps: vec![Step {
                name: "gemm".into(),
                slots: vec![Slot::Value(0), Slot::Constant(0), Slot::Value(1)],
                kernel: StepKernel::Gemm(g),
            }],
            views: Vec::new(),
        }
    }

    /// `C[b] = A[b]·W` with A from the input and W a packed constant, then the epilogue;
    /// computed directly, and as `Cᵀ = Wᵀ·Aᵀ` scattered back, on one and two threads.
    #[test]
    fn gemm_steps_apply_the_epilogue_direct_and_scattered() {
        let (batch, m, k, n) = (2, ROWS, 7, COLS);
        let a = data(batch * m * k, 3);
        let w = data(k * n, 5);
        let bias = data(m, 7);
        let want: Vec<f32> = (0..batch * m * n)
            .map(|e| {
                let (b, i, j) = (e / (m * n), (e / n) % m, e % n);
                let dot: f32 = (0..k).map(|p| a[(b * m + i) * k + p] * w[p * n + j]).sum();
                2.0 * dot + bias[i]
            })
            .collect();
        let a_offsets: Vec<usize> = (0..batch).map(|b| b * m * k).collect();
        let c_offsets: Vec<usize> = (0..batch).map(|b| b * m * n).collect();
        let direct = || Gemm {
            m,
            n,
            k,
            batches: batch,
            a: GemmOperand::Buffer {
                slot: 0,
                offsets: a_offsets.clone(),
                row_stride: k as isize,
                col_stride: 1,
            },
            b: GemmOperand::Packed {
                matrices: vec![PackedWeight::Rows(
                    PackedMatrix::from_row_major(&w, k, n).unwrap(),
                )],
                of_batch: vec![0; batch],
            },
            out_offsets: c_offsets.clone(),
            out_row_stride: n,
            out_col_stride: 1,
            product: ProductMap {
                rows_per_batch: m,
                transposed: false,
                bias: None,
                scatter: None,
                epilogue: Some(TileEpilogue::Generated(double_plus_bias as TileFn)),
            },
        };
        let transposed = || Gemm {
            m: n,
            n: m,
            k,
            batches: batch,
            a: GemmOperand::Packed {
                matrices: vec![PackedWeight::Rows(PackedMatrix::pack(
                    MatRef::row_major(&w, k, n).unwrap().t(),
                ))],
                of_batch: vec![0; batch],
            },
            b: GemmOperand::Buffer {
                slot: 0,
                offsets: a_offsets.clone(),
                row_stride: 1,
                col_stride: k as isize,
            },
            out_offsets: Vec::new(),
            out_row_stride: 0,
            out_col_stride: 0,
            product: ProductMap {
                rows_per_batch: n,
                transposed: true,
                bias: None,
                scatter: Some(Scatter {
                    batch_offsets: c_offsets.clone(),
                    row_stride: n,
                    col_stride: 1,
                }),
                epilogue: Some(TileEpilogue::Generated(double_plus_bias as TileFn)),
            },
        };
        for threads in [1, 2] {
            for (label, g) in [("direct", direct()), ("transposed", transposed())] {
                let mut exec = Executor::new(gemm_plan(g, a.len(), &bias), pool(threads)).unwrap();
                let mut y = vec![f32::NAN; want.len()];
                exec.run(&[&a], &mut [&mut y]).unwrap();
                let err = max_diff(&y, &want);
                assert!(err < 1e-5, "{label}, {threads} threads: {err}");
            }
        }
    }

    /// A GEMM whose left operand is a weight computed per inference (here a graph input) and
    /// whose right operand is an image's channels runs on the 1x1 kernel, its weight
    /// repacked every call: with the bias, SiLU and shortcut in the kernel's registers (bias
    /// per row), and with the product map run on finished strips (bias per column, which no
    /// convolution has). 16 output channels leave a partial block of 4.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn computed_weight_gemms_run_on_the_1x1_kernel() {
        use crate::kernels::activation::simd_available;
        if !simd_available() {
            return;
        }
        let (m, k, n) = (16, 32, 200);
        let x = data(k * n, 1);
        let residual = data(m * n, 2);
        let silu = |v: f32| v / (1.0 + (-v).exp());
        for per_column in [false, true] {
            let bias = data(if per_column { n } else { m }, 3);
            let buffer = |slot: usize, row_stride: usize| GemmOperand::Buffer {
                slot,
                offsets: vec![0],
                row_stride: row_stride as isize,
                col_stride: 1,
            };
            let plan = || Plan {
                values: vec![k * n, m * k, m * n, m * n],
                constants: vec![AlignedBuffer::from_slice(&bias)],
                inputs: vec![0, 1, 2],
                outputs: vec![Slot::Value(3)],
                steps: vec![Step {
                    name: "projection".into(),
                    slots: vec![
                        Slot::Value(0),
                        Slot::Value(1),
                        Slot::Constant(0),
                        Slot::Value(2),
                        Slot::Value(3),
                    ],
                    kernel: StepKernel::Gemm(Gemm {
                        m,
                        n,
                        k,
                        batches: 1,
                        a: buffer(1, k),
                        b: buffer(0, n),
                        out_offsets: vec![0],
                        out_row_stride: n,
                        out_col_stride: 1,
                        product: ProductMap {
                            rows_per_batch: m,
                            transposed: false,
                            bias: None,
                            scatter: None,
                            epilogue: Some(TileEpilogue::Native(NativeEpilogue {
                                activation: Activation::Silu,
                                bias: Some(TileBias {
                                    slot: 2,
                                    per_column,
                                }),
                                residual: Some(3),
                                offset: 0,
                                batch_stride: m * n,
                                row_stride: n,
                            })),
                        },
                    }),
                }],
                views: Vec::new(),
            };
            for threads in [1, 2] {
                let mut exec = Executor::new(plan(), pool(threads)).unwrap();
                assert!(exec.computed_convs[0].is_some(), "not on the 1x1 kernel");
                // Two calls with different weights: the second must not see the first's.
                for seed in [4, 5] {
                    let w = data(m * k, seed);
                    let want: Vec<f32> = (0..m * n)
                        .map(|e| {
                            let (i, j) = (e / n, e % n);
                            let dot: f32 = (0..k).map(|p| w[i * k + p] * x[p * n + j]).sum();
                            let b = if per_column { bias[j] } else { bias[i] };
                            silu(dot + b + residual[e])
                        })
                        .collect();
                    let mut y = vec![f32::NAN; m * n];
                    exec.run(&[&x, &w, &residual], &mut [&mut y]).unwrap();
                    let err = max_diff(&y, &want);
                    assert!(
                        err < 1e-5,
                        "per column {per_column}, {threads} threads: {err}"
                    );
                }
            }
        }
    }

    /// A grouped 3x3 convolution (epilogue batch entries are (image, group) pairs of ROWS
    /// output channels each), then a host step reading its output.
    #[test]
    fn conv_and_host_steps_run_in_order() {
        let shape = Conv2dShape {
            batch: 2,
            in_channels: 4,
            out_channels: 2 * ROWS,
            in_size: [3, 5],
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 2,
            layout: Layout::Nchw,
        };
        let w = data(2 * ROWS * 2 * 9, 11);
        let conv = Conv2d::new(shape, &w, 2).unwrap();
        assert_eq!(conv.out_size(), [3, 5], "COLS output positions");
        let x = data(conv.input_len(), 13);
        let bias = data(ROWS, 17);
        let mut plain = vec![0.0; conv.output_len()];
        let mut scratch = vec![0.0; conv.scratch_len(1)];
        conv.run(&pool(1), &x, &mut plain, &mut scratch, Epilogue::NONE)
            .unwrap();
        let want: Vec<f32> = plain
            .iter()
            .enumerate()
            .map(|(e, v)| (2.0 * v + bias[(e / COLS) % ROWS]) * 3.0)
            .collect();
        let triple: HostFn = Box::new(|ins: &[&[f32]], out: &mut [f32]| {
            for (o, i) in out.iter_mut().zip(ins[0]) {
                *o = 3.0 * i;
            }
            Ok(())
        });
        let plan = Plan {
            values: vec![x.len(), plain.len(), plain.len()],
            constants: vec![AlignedBuffer::from_slice(&bias)],
            inputs: vec![0],
            outputs: vec![Slot::Value(2)],
            steps: vec![
                Step {
                    name: "conv".into(),
                    slots: vec![Slot::Value(0), Slot::Constant(0), Slot::Value(1)],
                    kernel: StepKernel::Conv {
                        conv,
                        input: 0,
                        product: ProductMap {
                            rows_per_batch: ROWS,
                            transposed: false,
                            bias: None,
                            scatter: None,
                            epilogue: Some(TileEpilogue::Generated(double_plus_bias as TileFn)),
                        },
                    },
                },
                Step {
                    name: "triple".into(),
                    slots: vec![Slot::Value(1), Slot::Value(2)],
                    kernel: StepKernel::Host(triple),
                },
            ],
            views: Vec::new(),
        };
        let mut exec = Executor::new(plan, pool(2)).unwrap();
        exec.set_profiling(true);
        let mut y = vec![f32::NAN; want.len()];
        exec.run(&[&x], &mut [&mut y]).unwrap();
        assert!(max_diff(&y, &want) < 1e-5);
        exec.run(&[&x], &mut [&mut y]).unwrap();
        let times = exec.step_times().unwrap();
        assert_eq!(times.len(), 2);
        for t in times {
            let fastest = t.fastest.unwrap();
            assert!(fastest > Duration::ZERO && 2 * fastest <= t.total, "{t:?}");
        }
    }

    /// Channels and output plane of the depthwise band-loop test.
    const DW_C: usize = 5;
    const DW_H: usize = 6;
    const DW_W: usize = 7;

    /// A stand-in for a channel normalisation run on finished bands, one grid iteration per
    /// pixel: `out[b, c, p] = product[b, c, p] - mean_c product[b, .., p]`; buffers x,
    /// product, out.
    unsafe extern "C" fn center_channels(bufs: *const *mut f32, start: usize, end: usize) {
        let (product, out) = (*bufs.add(1), *bufs.add(2));
        let plane = DW_H * DW_W;
        for g in start..end {
            let at = |c: usize| (g / plane * DW_C + c) * plane + g % plane;
            let mean = (0..DW_C).map(|c| *product.add(at(c))).sum::<f32>() / DW_C as f32;
            for c in 0..DW_C {
                *out.add(at(c)) = *product.add(at(c)) - mean;
            }
        }
    }

    /// A depthwise step whose band loop reads the product from scratch computes what the
    /// convolution followed by the loop over the whole output does, on any thread count;
    /// plans that misuse the product slot are refused.
    #[test]
    fn depthwise_band_loop_reads_each_finished_band() {
        let shape = Conv2dShape {
            batch: 2,
            in_channels: DW_C,
            out_channels: DW_C,
            in_size: [DW_H, DW_W],
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups: DW_C,
            layout: Layout::Nchw,
        };
        let conv = DepthwiseConv2d::new(shape, &data(DW_C * 9, 31))
            .and_then(|c| c.with_bias(&data(DW_C, 37)))
            .unwrap();
        let x = data(2 * DW_C * DW_H * DW_W, 41);
        let mut product = vec![0.0; conv.output_len()];
        let mut scratch = vec![0.0; conv.scratch_len(1)];
        conv.run(&pool(1), &x, &mut product, &mut scratch, Epilogue::NONE)
            .unwrap();
        let mut want = vec![0.0; product.len()];
        let bufs = [
            x.as_ptr().cast_mut(),
            product.as_mut_ptr(),
            want.as_mut_ptr(),
        ];
        // SAFETY: the buffers hold the whole [2, C, H, W] tensors the loop indexes.
        unsafe { center_channels(bufs.as_ptr(), 0, 2 * DW_H * DW_W) };
        let plan = |conv: DepthwiseConv2d, product_slot: Slot| Plan {
            values: vec![x.len(), want.len()],
            constants: Vec::new(),
            inputs: vec![0],
            outputs: vec![Slot::Value(1)],
            steps: vec![Step {
                name: "dwconv_norm".into(),
                slots: vec![Slot::Value(0), product_slot, Slot::Value(1)],
                kernel: StepKernel::Depthwise {
                    conv,
                    input: 0,
                    rest: Some(BandLoop {
                        entry: center_channels,
                        per_row: DW_W,
                    }),
                    activation: None,
                    norm: None,
                },
            }],
            views: Vec::new(),
        };
        for threads in [1, 2, 3] {
            let mut exec = Executor::new(
                plan(conv.clone().with_pixel_bands(), Slot::Product),
                pool(threads),
            )
            .unwrap();
            let mut y = vec![f32::NAN; want.len()];
            exec.run(&[&x], &mut [&mut y]).unwrap();
            assert!(max_diff(&y, &want) < 1e-5, "{threads} threads");
        }
        for (conv, slot) in [
            (conv.clone(), Slot::Product),
            (conv.clone().with_pixel_bands(), Slot::Unused),
        ] {
            assert!(matches!(
                Executor::new(plan(conv, slot), pool(1)),
                Err(ExecError::Plan(_))
            ));
        }
    }

    /// A depthwise step with a channel norm computes the convolution followed by
    /// `layer_norm2d` (f64 here), with and without the affine parameters, in place or into
    /// a channels-last output, on any thread count; a norm without pixel bands, or with a
    /// parameter shorter than the channels, is refused.
    #[test]
    fn depthwise_channel_norm_normalises_each_pixel() {
        // Wider than a vector group, with a partial one, so the 4-vector, 1-vector and
        // scalar columns all run; 11 channels.
        let (c, h, w) = (11, 5, 43);
        let shape = Conv2dShape {
            batch: 2,
            in_channels: c,
            out_channels: c,
            in_size: [h, w],
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups: c,
            layout: Layout::Nchw,
        };
        let conv = DepthwiseConv2d::new(shape, &data(c * 9, 31))
            .and_then(|k| k.with_bias(&data(c, 37)))
            .unwrap();
        let x = data(2 * c * h * w, 41);
        let (gamma, beta, eps) = (data(c, 43), data(c, 47), 1e-6f32);
        let mut product = vec![0.0; conv.output_len()];
        let mut scratch = vec![0.0; conv.scratch_len(1)];
        conv.run(&pool(1), &x, &mut product, &mut scratch, Epilogue::NONE)
            .unwrap();
        let plane = h * w;
        let want = |affine: bool| -> Vec<f32> {
            let mut y = product.clone();
            for b in 0..2 {
                for p in 0..plane {
                    let at = |ch: usize| (b * c + ch) * plane + p;
                    let v: Vec<f64> = (0..c).map(|ch| f64::from(product[at(ch)])).collect();
                    let mean = v.iter().sum::<f64>() / c as f64;
                    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / c as f64;
                    for (ch, x) in v.iter().enumerate() {
                        let n = (x - mean) / (var + f64::from(eps)).sqrt();
                        let n = match affine {
                            true => n * f64::from(gamma[ch]) + f64::from(beta[ch]),
                            false => n,
                        };
                        y[at(ch)] = n as f32;
                    }
                }
            }
            y
        };
        let plan = |conv: DepthwiseConv2d, norm: ChannelNorm, constants: Vec<&[f32]>| Plan {
            values: vec![x.len(), product.len()],
            constants: constants
                .into_iter()
                .map(AlignedBuffer::from_slice)
                .collect(),
            inputs: vec![0],
            outputs: vec![Slot::Value(1)],
            steps: vec![Step {
                name: "dwconv_norm".into(),
                slots: vec![
                    Slot::Value(0),
                    Slot::Constant(0),
                    Slot::Constant(1),
                    Slot::Value(1),
                ],
                kernel: StepKernel::Depthwise {
                    conv,
                    input: 0,
                    rest: None,
                    activation: None,
                    norm: Some(norm),
                },
            }],
            views: Vec::new(),
        };
        // The same values with each pixel's channels consecutive.
        let channels_last = |nchw: &[f32]| -> Vec<f32> {
            let mut y = vec![0.0; nchw.len()];
            for b in 0..2 {
                for ch in 0..c {
                    for p in 0..plane {
                        y[(b * plane + p) * c + ch] = nchw[(b * c + ch) * plane + p];
                    }
                }
            }
            y
        };
        let banded = conv.clone().with_pixel_bands();
        for (affine, last) in [(true, false), (false, false), (true, true), (false, true)] {
            let norm = ChannelNorm {
                weight: affine.then_some(1),
                bias: affine.then_some(2),
                eps,
                channels_last: last,
            };
            let want = if last {
                channels_last(&want(affine))
            } else {
                want(affine)
            };
            for threads in [1, 2, 3] {
                let params = vec![&gamma[..], &beta[..]];
                let mut exec =
                    Executor::new(plan(banded.clone(), norm, params), pool(threads)).unwrap();
                let mut y = vec![f32::NAN; want.len()];
                exec.run(&[&x], &mut [&mut y]).unwrap();
                assert!(
                    max_diff(&y, &want) < 1e-4,
                    "affine {affine}, channels-last {last}, {threads} threads"
                );
            }
        }
        let norm = ChannelNorm {
            weight: Some(1),
            bias: Some(2),
            eps,
            channels_last: false,
        };
        for (conv, params) in [
            (conv.clone(), vec![&gamma[..], &beta[..]]),
            (banded.clone(), vec![&gamma[..], &beta[..c - 1]]),
        ] {
            assert!(matches!(
                Executor::new(plan(conv, norm, params), pool(1)),
                Err(ExecError::Plan(_))
            ));
        }
    }

    /// A depthwise convolution whose per-channel bias the step adds to each finished tile.
    #[test]
    fn conv_bias_is_added_per_output_channel() {
        let shape = Conv2dShape {
            batch: 2,
            in_channels: 3,
            out_channels: 6,
            in_size: [4, 5],
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 3,
            layout: Layout::Nchw,
        };
        let conv = Conv2d::new(shape, &data(6 * 9, 19), 2).unwrap();
        let x = data(conv.input_len(), 23);
        let bias = data(6, 29);
        let mut plain = vec![0.0; conv.output_len()];
        let mut scratch = vec![0.0; conv.scratch_len(1)];
        conv.run(&pool(1), &x, &mut plain, &mut scratch, Epilogue::NONE)
            .unwrap();
        let want: Vec<f32> = plain
            .iter()
            .enumerate()
            .map(|(e, v)| v + bias[(e / 20) % 6])
            .collect();
        let plan = Plan {
            values: vec![x.len(), plain.len()],
            constants: vec![AlignedBuffer::from_slice(&bias)],
            inputs: vec![0],
            outputs: vec![Slot::Value(1)],
            steps: vec![Step {
                name: "depthwise".into(),
                slots: vec![
                    Slot::Value(0),
                    Slot::Unused,
                    Slot::Constant(0),
                    Slot::Value(1),
                ],
                kernel: StepKernel::Conv {
                    conv,
                    input: 0,
                    product: ProductMap {
                        rows_per_batch: 6,
                        bias: Some(2),
                        ..ProductMap::default()
                    },
                },
            }],
            views: Vec::new(),
        };
        let mut exec = Executor::new(plan, pool(2)).unwrap();
        let mut y = vec![f32::NAN; want.len()];
        exec.run(&[&x], &mut [&mut y]).unwrap();
        assert!(max_diff(&y, &want) < 1e-6);
    }

    /// A 1x1 convolution `relu((conv(x) + bias) + shortcut)`, the shortcut a graph input
    /// read by nothing after the step (and, with `shortcut_is_input`, also the convolution's
    /// input): where the kernel adds the shortcut in registers the output takes over its
    /// bytes, so the arena holds two values instead of three; the result is the same.
    #[test]
    fn dying_shortcuts_give_their_bytes_to_the_output() {
        let shape = |in_channels, side, kernel: usize| Conv2dShape {
            batch: 2,
            in_channels,
            out_channels: in_channels,
            in_size: [side, side],
            kernel: [kernel, kernel],
            stride: [1, 1],
            padding: [kernel / 2, kernel / 2],
            dilation: [1, 1],
            groups: 1,
            layout: Layout::Nchw,
        };
        let mut shared = 0;
        for (shape, strategy) in [
            (shape(64, 16, 1), ConvStrategy::Direct1x1),
            (shape(40, 14, 1), ConvStrategy::Lanes1x1),
            (shape(64, 16, 1), ConvStrategy::Pointwise),
            (shape(16, 9, 3), ConvStrategy::Im2col),
            // Two blocks of the reduction: partial sums are stored before the shortcut
            // is read, so the bytes stay separate.
            (shape(300, 12, 1), ConvStrategy::Direct1x1),
        ] {
            let weights = data(shape.in_channels * shape.out_channels * 9, 41);
            let weights = &weights
                [..shape.in_channels * shape.out_channels * shape.kernel[0] * shape.kernel[1]];
            // A strategy this CPU lacks is skipped.
            let Ok(conv) = Conv2d::with_strategy(shape, weights, 2, strategy) else {
                continue;
            };
            let pixels = conv.out_size()[0] * conv.out_size()[1];
            let (x, bias) = (data(conv.input_len(), 43), data(shape.out_channels, 47));
            let mut product = vec![0.0; conv.output_len()];
            let mut scratch = vec![0.0; conv.scratch_len(1)];
            conv.run(&pool(1), &x, &mut product, &mut scratch, Epilogue::NONE)
                .unwrap();
            for shortcut_is_input in [false, true] {
                let shortcut = if shortcut_is_input {
                    x.clone()
                } else {
                    data(conv.output_len(), 53)
                };
                let want: Vec<f32> = (0..product.len())
                    .map(|e| {
                        (product[e] + bias[e / pixels % shape.out_channels] + shortcut[e]).max(0.0)
                    })
                    .collect();
                // Values: the input, the shortcut unless it is the input, the output.
                let (values, inputs, out) = if shortcut_is_input {
                    (vec![x.len(), want.len()], vec![0], 1)
                } else {
                    (vec![x.len(), shortcut.len(), want.len()], vec![0, 1], 2)
                };
                let plan = Plan {
                    values,
                    constants: vec![AlignedBuffer::from_slice(&bias)],
                    inputs,
                    outputs: vec![Slot::Value(out)],
                    steps: vec![Step {
                        name: "conv".into(),
                        slots: vec![
                            Slot::Value(0),
                            Slot::Constant(0),
                            Slot::Value(out - 1),
                            Slot::Value(out),
                        ],
                        kernel: StepKernel::Conv {
                            conv: conv.clone(),
                            input: 0,
                            product: ProductMap {
                                rows_per_batch: shape.out_channels,
                                epilogue: Some(TileEpilogue::Native(NativeEpilogue {
                                    activation: Activation::Relu,
                                    bias: Some(TileBias {
                                        slot: 1,
                                        per_column: false,
                                    }),
                                    residual: Some(2),
                                    offset: 0,
                                    batch_stride: shape.out_channels * pixels,
                                    row_stride: pixels,
                                })),
                                ..ProductMap::default()
                            },
                        },
                    }],
                    views: Vec::new(),
                };
                let mut exec = Executor::new(plan, pool(2)).unwrap();
                // Every value's bytes, less the output's where it takes the shortcut's.
                let bytes = |n: usize| (n * 4).next_multiple_of(64);
                let all = bytes(x.len()) + bytes(want.len());
                if shortcut_is_input {
                    assert_eq!(exec.arena_bytes(), all, "{strategy:?}");
                } else if conv.writes_over_residual() {
                    shared += 1;
                    assert_eq!(exec.arena_bytes(), all, "{strategy:?}");
                } else {
                    assert_eq!(exec.arena_bytes(), all + bytes(want.len()), "{strategy:?}");
                }
                let inputs: Vec<&[f32]> = if shortcut_is_input {
                    vec![&x]
                } else {
                    vec![&x, &shortcut]
                };
                let mut y = vec![f32::NAN; want.len()];
                for _ in 0..2 {
                    exec.run(&inputs, &mut [&mut y]).unwrap();
                    assert!(
                        max_diff(&y, &want) < 1e-4,
                        "{strategy:?} {shortcut_is_input}"
                    );
                }
            }
        }
        assert!(shared > 0, "no kernel on this CPU writes over its shortcut");
    }
}
