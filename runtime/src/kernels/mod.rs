//! CPU kernels: GEMM, convolutions, depthwise convolution, and the native epilogues and
//! normalisations that run on their tiles.
//!
//! - [`gemm`](mod@gemm): `C = A·B` on strided f32 matrices through the `gemm` crate,
//!   split into output tiles over a [`ThreadPool`],
//!   with weights pre-packed once ([`PackedMatrix`]).
//! - [`dense`]: `C = A·W` for a weight `W` packed in column panels ([`PanelMatrix`]) on an
//!   AVX2 register kernel: linear layers over tokens or channels-last pixels.
//! - [`conv`]: conv2d / conv1d (NCHW and NHWC, stride, padding, dilation,
//!   groups) as GEMMs over bounded im2col tiles; 1x1 stride-1 convolutions read
//!   the input in place.
//! - [`conv_transpose`]: transposed convolutions, a product and a col2im scatter per block of
//!   output channels.
//! - [`depthwise`]: direct depthwise convolution, vectorised over a row, or on small maps
//!   over eight channels (`depthwise_lanes`).
//! - `pointwise`: NCHW 1x1 convolutions with few input channels on an AVX2 (or AVX-512)
//!   register kernel that applies a bias and an activation ([`Epilogue::activation`]) before
//!   storing.
//! - [`isa`]: which vector instructions the register kernels use (AVX-512 where it
//!   measured faster, `BBC_CPU_ISA=avx2` to cap), and the 16-float row they are written over.
//! - [`pool`]: max pooling over NCHW planes.
//! - [`resize`]: nearest and bilinear resizing of NCHW planes (`upsample`) by given tables.
//! - `winograd`: 3x3 stride-1 convolutions as GEMMs over F(2x2, 3x3) or F(4x4, 3x3)
//!   transformed tiles.
//! - [`activation`]: bias + activation over finished rows in place (SiLU, GELU, ReLU, ...),
//!   the native form of the most common epilogues.
//! - [`norm`]: layer normalisation over the channels of NCHW pixels, on a depthwise
//!   convolution's finished bands ([`Epilogue::channel_norm`], in place or into a
//!   channels-last output) or over whole tensors.
//!
//! Every kernel calls an [`Epilogue`] exactly once per output element, on
//! tiles that are still in cache; the epilogue is how a fused group's bias,
//! activation, scale and residual add run without another pass over memory.
//!
//! # Output tiles and the epilogue ABI
//!
//! Each kernel presents its output as a row-major 2-D matrix with leading
//! dimension `ld` (elements between consecutive rows):
//!
//! | kernel | rows | cols | `ld` |
//! |---|---|---|---|
//! | GEMM `C[M, N]` | `M` | `N` | C's row stride |
//! | GEMM, `C` column-major (presented as `Cᵀ`) | `N` | `M` | C's column stride |
//! | conv / depthwise, NCHW `[B, C, H, W]` | `B * C` (row = `b * C + c`) | `H * W` | `H * W` |
//! | conv / depthwise, NHWC `[B, H, W, C]` | `B * H * W` | `C` | `C` |
//!
//! When a rectangular tile `[row0, row0 + rows) x [col0, col0 + cols)` of that
//! matrix is final, the kernel calls
//!
//! ```text
//! unsafe extern "C" fn(ctx: *const c_void, tile: *mut f32,
//!                      row0: usize, rows: usize, col0: usize, cols: usize, ld: usize)
//! ```
//!
//! ([`EpilogueFn`], the platform C calling convention) with `tile` pointing at
//! element `(row0, col0)`: element `(row0 + i, col0 + j)` is `tile[i * ld + j]`.
//! `row0`/`col0` are absolute, so the callee finds per-channel parameters
//! (NCHW: channel `(row0 + i) % C`; NHWC: channel `col0 + j`) and the matching
//! element of a same-shaped residual tensor at `residual + row0 * ld + col0`.
//! Tiles partition the output (each element is in exactly one tile), tiles may
//! be processed concurrently on different threads, and the callee may rewrite
//! the tile in place but must not touch anything outside it. It must not
//! unwind. A safe Rust closure can be used instead through
//! [`Epilogue::from_closure`] (it receives a [`Tile`]; a panic there becomes a
//! [`KernelError::Pool`] error).

pub mod activation;
pub mod conv;
pub mod conv_transpose;
pub mod dense;
pub mod depthwise;
#[cfg(target_arch = "x86_64")]
mod depthwise_lanes;
#[cfg(target_arch = "x86_64")]
mod direct;
pub mod gemm;
pub mod isa;
#[cfg(target_arch = "x86_64")]
pub mod norm;
mod pointwise;
#[cfg(target_arch = "x86_64")]
mod pointwise_lanes;
pub mod pool;
pub mod resize;
pub mod softmax;
mod transpose;
mod winograd;

use std::ffi::c_void;
use std::marker::PhantomData;

use crate::pool::{Chunking, PoolError, ThreadPool};
use activation::{Activation, RowBias};

pub use conv::{Conv1dShape, Conv2d, Conv2dShape, ConvStrategy, Layout};
pub use conv_transpose::{conv_transpose2d, ConvTranspose2dShape};
pub use dense::PanelMatrix;
pub use depthwise::DepthwiseConv2d;
pub use gemm::{gemm, gemm_serial, MatMut, MatRef, PackedMatrix};
pub use pool::MaxPool2d;
pub use resize::{AxisMap, Resize2d};

/// An error from a kernel call: a shape or buffer that does not match, or a
/// panicking epilogue closure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// A buffer is too small for the shape and strides it is used with.
    #[error("{what}: needs {needed} elements, got {got}")]
    BufferTooSmall {
        /// Which buffer.
        what: &'static str,
        /// Elements the shape and strides reach.
        needed: usize,
        /// Elements supplied.
        got: usize,
    },
    /// Shapes that do not fit together, or a parameter out of range.
    #[error("{0}")]
    Shape(String),
    /// An output matrix whose elements alias each other.
    #[error("output strides ({rs}, {cs}) make elements of a {rows}x{cols} matrix alias")]
    AliasingOutput {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Row stride.
        rs: isize,
        /// Column stride.
        cs: isize,
    },
    /// A task (normally an epilogue closure) panicked.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// Whether a kernel overwrites its output or adds to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `C = A·B` (C's previous contents are never read).
    Overwrite,
    /// `C += A·B`.
    Accumulate,
}

/// The epilogue ABI; see the module documentation.
pub type EpilogueFn = unsafe extern "C" fn(
    ctx: *const c_void,
    tile: *mut f32,
    row0: usize,
    rows: usize,
    col0: usize,
    cols: usize,
    ld: usize,
);

/// A finished output tile handed to an epilogue closure.
pub struct Tile<'a> {
    ptr: *mut f32,
    row0: usize,
    rows: usize,
    col0: usize,
    cols: usize,
    ld: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

impl Tile<'_> {
    /// First row of the tile in the kernel's output matrix.
    pub fn row0(&self) -> usize {
        self.row0
    }
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// First column of the tile in the kernel's output matrix.
    pub fn col0(&self) -> usize {
        self.col0
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Row `i` of the tile (`i < rows`): `cols` contiguous elements.
    ///
    /// # Panics
    /// If `i >= rows`.
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.rows, "tile row {i} out of {}", self.rows);
        // SAFETY: the kernel guarantees rows x cols elements at stride ld are
        // in bounds and exclusively ours for the tile's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.ld), self.cols) }
    }
}

#[derive(Clone, Copy)]
enum EpilogueKind<'a> {
    None,
    Raw {
        func: EpilogueFn,
        ctx: *const c_void,
    },
    Closure(&'a (dyn Fn(Tile<'_>) + Sync)),
    Activation {
        act: Activation,
        bias: Option<&'a [f32]>,
        /// Laid out like the output: element `e` of the output adds element `e` of it.
        residual: Option<Residual<'a>>,
    },
    ColumnActivation {
        act: Activation,
        bias: Option<&'a [f32]>,
    },
    ChannelNorm {
        weight: Option<&'a [f32]>,
        bias: Option<&'a [f32]>,
        eps: f32,
        /// The buffer the normalised tiles go to channels-last and the pixels per image;
        /// `None`: in place.
        channels_last: Option<(SendPtr, usize)>,
    },
}

/// An [`Epilogue::activation`]'s activation and its bias per row, if any.
pub(crate) type RowActivation<'a> = (Activation, Option<&'a [f32]>);

/// A [`RowActivation`] and the residual laid out like the output, if any
/// ([`Epilogue::channel_epilogue`]).
pub(crate) type ChannelEpilogue<'a> = (RowActivation<'a>, Option<Residual<'a>>);

/// Where the shortcut of an epilogue with a residual is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Residual<'a> {
    /// A buffer of its own, laid out like the output.
    Buffer(&'a [f32]),
    /// The output buffer itself: the memory planner gave the shortcut's bytes to the output,
    /// so each element holds its shortcut until the kernel stores the result over it. Only
    /// kernels that read every element's shortcut into registers before that store accept
    /// it ([`Conv2d::writes_over_residual`](conv::Conv2d::writes_over_residual)).
    InOutput,
}

impl Residual<'_> {
    /// The shortcut's first element, given the output's.
    pub(crate) fn base(self, output: SendPtr) -> SendPtr {
        match self {
            Residual::Buffer(r) => SendPtr(r.as_ptr().cast_mut()),
            Residual::InOutput => output,
        }
    }
}

/// What to run on each finished output tile: nothing, an [`EpilogueFn`] with
/// its context, or a Rust closure.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    kind: EpilogueKind<'a>,
}

// SAFETY: closures are `Sync`; for raw functions `from_raw`'s contract
// requires concurrent calls on disjoint tiles to be sound.
unsafe impl Send for Epilogue<'_> {}
// SAFETY: as above.
unsafe impl Sync for Epilogue<'_> {}

impl<'a> Epilogue<'a> {
    /// No epilogue.
    pub const NONE: Epilogue<'static> = Epilogue {
        kind: EpilogueKind::None,
    };

    /// An epilogue implemented by generated code.
    ///
    /// # Safety
    /// `func` must follow the ABI in the module documentation, `ctx` must stay
    /// valid for `'a`, and concurrent calls with `ctx` on disjoint tiles must
    /// be sound.
    pub unsafe fn from_raw(func: EpilogueFn, ctx: *const c_void) -> Epilogue<'a> {
        Epilogue {
            kind: EpilogueKind::Raw { func, ctx },
        }
    }

    /// An epilogue implemented by a Rust closure.
    pub fn from_closure<F: Fn(Tile<'_>) + Sync>(f: &'a F) -> Epilogue<'a> {
        Epilogue {
            kind: EpilogueKind::Closure(f),
        }
    }

    /// `x = act(x + bias[row % bias.len()])` on every output element, `row` the output
    /// matrix's (an NCHW convolution's bias per channel has `C` values). Kernels that can
    /// apply it to their accumulators before storing do; the others run it on each
    /// finished tile.
    pub fn activation(act: Activation, bias: Option<&'a [f32]>) -> Epilogue<'a> {
        Epilogue {
            kind: EpilogueKind::Activation {
                act,
                bias: bias.filter(|b| !b.is_empty()),
                residual: None,
            },
        }
    }

    /// `x = act((x + bias[row % bias.len()]) + residual[e])` on every output element `e` (an
    /// index into the output buffer the kernel writes): [`Epilogue::activation`] followed by
    /// a residual connection whose shortcut is laid out like the output. The direct 1x1
    /// kernel applies it to its registers; the others run it on each finished tile. The
    /// caller guarantees `residual` covers the output buffer.
    pub fn activation_with_residual(
        act: Activation,
        bias: Option<&'a [f32]>,
        residual: &'a [f32],
    ) -> Epilogue<'a> {
        Epilogue {
            kind: EpilogueKind::Activation {
                act,
                bias: bias.filter(|b| !b.is_empty()),
                residual: Some(Residual::Buffer(residual)),
            },
        }
    }

    /// [`Epilogue::activation_with_residual`] whose shortcut is the output buffer's own
    /// contents ([`Residual::InOutput`]). Only [`Conv2d::run`](conv::Conv2d::run) takes it,
    /// and refuses it for kernels that do not add the shortcut in registers.
    pub(crate) fn activation_with_residual_in_output(
        act: Activation,
        bias: Option<&'a [f32]>,
    ) -> Epilogue<'a> {
        Epilogue {
            kind: EpilogueKind::Activation {
                act,
                bias: bias.filter(|b| !b.is_empty()),
                residual: Some(Residual::InOutput),
            },
        }
    }

    /// Whether this epilogue's shortcut is the output buffer's own contents.
    pub(crate) fn residual_in_output(&self) -> bool {
        matches!(
            self.kind,
            EpilogueKind::Activation {
                residual: Some(Residual::InOutput),
                ..
            }
        )
    }

    /// `act(x + bias[column])` on every element, in place (`bias` one value per column of
    /// the output matrix, or none): the epilogue of a linear layer over rows of features,
    /// which the dense kernel applies to its registers before the one store. The caller
    /// guarantees a bias covers the output's columns (the executor's plan checks do).
    pub(crate) fn column_activation(act: Activation, bias: Option<&'a [f32]>) -> Epilogue<'a> {
        Epilogue {
            kind: EpilogueKind::ColumnActivation { act, bias },
        }
    }

    /// Layer normalisation of every column of each tile over the tile's rows, scaled by
    /// `weight[row]` and shifted by `bias[row]` where given (`row` the tile's own): for tiles
    /// that hold every channel of their pixels, a depthwise convolution's pixel bands
    /// ([`depthwise::DepthwiseConv2d::with_pixel_bands`]). The caller guarantees a weight and
    /// a bias cover the tiles' rows (the executor's plan checks do).
    pub fn channel_norm(
        weight: Option<&'a [f32]>,
        bias: Option<&'a [f32]>,
        eps: f32,
    ) -> Epilogue<'a> {
        Epilogue {
            kind: EpilogueKind::ChannelNorm {
                weight,
                bias,
                eps,
                channels_last: None,
            },
        }
    }

    /// [`Epilogue::channel_norm`] that writes each normalised tile channels-last into `out`
    /// (`[batch, pixels, C]`, `pixels` per image) instead of in place: the norm of a
    /// depthwise convolution's output permuted to channels-last. Each tile's rows must be
    /// one image's `C` channels, as a depthwise convolution's pixel bands are.
    ///
    /// # Safety
    /// `out` holds `batch · pixels · C` floats for every image the kernel computes, does not
    /// overlap the kernel's output, and is written only through this epilogue while the
    /// kernel runs.
    pub unsafe fn channel_norm_channels_last(
        out: *mut f32,
        pixels: usize,
        weight: Option<&'a [f32]>,
        bias: Option<&'a [f32]>,
        eps: f32,
    ) -> Epilogue<'a> {
        let mut norm = Epilogue::channel_norm(weight, bias, eps);
        if let EpilogueKind::ChannelNorm { channels_last, .. } = &mut norm.kind {
            *channels_last = Some((SendPtr(out), pixels));
        }
        norm
    }

    /// The activation and bias of an [`Epilogue::column_activation`].
    pub(crate) fn as_column_activation(&self) -> Option<RowActivation<'a>> {
        match self.kind {
            EpilogueKind::ColumnActivation { act, bias } => Some((act, bias)),
            _ => None,
        }
    }

    /// The activation and bias of an [`Epilogue::activation`] (not one with a residual).
    pub(crate) fn as_activation(&self) -> Option<RowActivation<'a>> {
        match self.kind {
            EpilogueKind::Activation {
                act,
                bias,
                residual: None,
            } => Some((act, bias)),
            _ => None,
        }
    }

    /// The activation and bias of an [`Epilogue::activation`] or
    /// [`Epilogue::activation_with_residual`], and the residual if any, for an output of
    /// `out_len` elements with `channels` rows per image: a bias that is not one value per
    /// channel, or a residual shorter than the output, is refused (kernels that apply them
    /// in registers index the bias by channel and the residual like the output).
    pub(crate) fn channel_epilogue(
        &self,
        channels: usize,
        out_len: usize,
    ) -> Result<Option<ChannelEpilogue<'a>>, KernelError> {
        let EpilogueKind::Activation {
            act,
            bias,
            residual,
        } = self.kind
        else {
            return Ok(None);
        };
        if bias.is_some_and(|b| b.len() != channels) {
            return Err(KernelError::Shape(format!(
                "a bias of {} values for {channels} channels",
                bias.map_or(0, <[f32]>::len)
            )));
        }
        if let Some(Residual::Buffer(r)) = residual {
            if r.len() < out_len {
                return Err(KernelError::Shape(format!(
                    "a residual of {} values for {out_len} outputs",
                    r.len()
                )));
            }
        }
        Ok(Some(((act, bias), residual)))
    }

    /// [`Epilogue::channel_epilogue`] for kernels that take no residual: `None` for one
    /// with a residual, which then runs on finished tiles.
    pub(crate) fn channel_activation(
        &self,
        channels: usize,
    ) -> Result<Option<RowActivation<'a>>, KernelError> {
        Ok(self
            .channel_epilogue(channels, 0)?
            .and_then(|(fused, residual)| residual.is_none().then_some(fused)))
    }

    /// Whether this is [`Epilogue::NONE`].
    pub fn is_none(&self) -> bool {
        matches!(self.kind, EpilogueKind::None)
    }

    /// Runs the epilogue on a tile of the output matrix starting at `base`.
    ///
    /// # Safety
    /// `base + row0 * ld + col0` must start `rows` rows of `cols` elements at
    /// stride `ld`, all in bounds and not accessed by anyone else meanwhile.
    pub(crate) unsafe fn apply(
        &self,
        base: *mut f32,
        row0: usize,
        rows: usize,
        col0: usize,
        cols: usize,
        ld: usize,
    ) {
        if rows == 0 || cols == 0 {
            return;
        }
        let tile = |base: *mut f32| base.add(row0 * ld + col0);
        match self.kind {
            EpilogueKind::None => {}
            EpilogueKind::Raw { func, ctx } => func(ctx, tile(base), row0, rows, col0, cols, ld),
            EpilogueKind::Closure(f) => f(Tile {
                ptr: tile(base),
                row0,
                rows,
                col0,
                cols,
                ld,
                _borrow: PhantomData,
            }),
            EpilogueKind::Activation {
                act,
                bias,
                residual,
            } => {
                let tile = tile(base);
                let rows = (0..rows).map(|i| {
                    // SAFETY: (the caller's) row `i` of the tile is in bounds and ours.
                    let row = std::slice::from_raw_parts_mut(tile.add(i * ld), cols);
                    let b =
                        bias.map_or(RowBias::None, |b| RowBias::Scalar(b[(row0 + i) % b.len()]));
                    (row, b)
                });
                match residual {
                    None => activation::activate_rows(act, rows),
                    // The tile's shortcut was overwritten by its product: `Conv2d::run`
                    // refuses this epilogue for kernels that call `apply` with it.
                    Some(Residual::InOutput) => {
                        unreachable!("a shortcut in the output applied after the product")
                    }
                    Some(Residual::Buffer(residual)) => {
                        let at = |i: usize| (row0 + i) * ld + col0;
                        let rows = rows
                            .enumerate()
                            .map(|(i, (row, b))| (row, b, &residual[at(i)..at(i) + cols]));
                        activation::activate_rows_with_residual(act, rows);
                    }
                }
            }
            EpilogueKind::ChannelNorm {
                weight,
                bias,
                eps,
                channels_last,
            } => {
                let (dst, layout) = match channels_last {
                    None => (tile(base), norm::Layout::Tile),
                    Some((out, pixels)) => {
                        debug_assert!(row0.is_multiple_of(rows), "a tile of whole images");
                        let first = (row0 / rows * pixels + col0) * rows;
                        (out.get().add(first), norm::Layout::ChannelsLast)
                    }
                };
                norm::normalize_columns(tile(base), dst, layout, rows, cols, ld, weight, bias, eps);
            }
            EpilogueKind::ColumnActivation { act, bias } => {
                let tile = tile(base);
                let rows = (0..rows).map(|i| {
                    // SAFETY: (the caller's) row `i` of the tile is in bounds and ours.
                    let row = std::slice::from_raw_parts_mut(tile.add(i * ld), cols);
                    let b = bias.map_or(RowBias::None, |b| RowBias::PerColumn(&b[col0..]));
                    (row, b)
                });
                activation::activate_rows(act, rows);
            }
        }
    }
}

/// A raw pointer that may cross threads; kernels hand disjoint parts of one
/// output buffer to different tasks through it.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);

impl SendPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: every use writes disjoint elements from different threads.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// Products below this many FLOPs run on the calling thread: splitting them costs more
/// than it saves. Measured with two threads on an idle machine, a squeeze-excitation 1x1
/// convolution 1152 -> 48 (0.11 MFLOP, memory-bound on its weight) took 3.0 µs split and
/// 4.1 µs on the caller alone, so the dispatch costs about 1 µs there; EfficientNet's
/// smaller ones (96 -> 4 is 768 FLOPs) are pure dispatch. On a loaded machine a split waits
/// for a worker to be scheduled: 66 µs against 4 µs measured.
pub(crate) const SERIAL_FLOPS: usize = 1 << 16;

/// Weights of fewer floats than this are packed on the calling thread alone; larger ones on
/// up to the pool's thread count ([`blocks_per_packing_thread`]), each thread scoped to the
/// packing. Starting a thread costs tens of microseconds, packing 2^18 floats about a
/// millisecond.
const PARALLEL_PACK_FLOATS: usize = 1 << 18;

/// How many of a weight's `blocks` blocks (`floats` floats in all) each thread packing it
/// takes, for a pool of `threads` threads: all of them below [`PARALLEL_PACK_FLOATS`].
pub(crate) fn blocks_per_packing_thread(floats: usize, blocks: usize, threads: usize) -> usize {
    let parts = if floats < PARALLEL_PACK_FLOATS {
        1
    } else {
        threads.max(1)
    };
    blocks.div_ceil(parts).max(1)
}

/// Runs `f` over tasks `0..tasks`, one task per chunk spread over `pool`, or all of them on
/// the calling thread when `serial` (or when there is only one).
pub(crate) fn for_each_task<F>(
    pool: &ThreadPool,
    tasks: usize,
    serial: bool,
    f: F,
) -> Result<(), PoolError>
where
    F: Fn(std::ops::Range<usize>, usize) + Sync,
{
    if serial || tasks <= 1 {
        pool.run_on_caller(0..tasks, f)
    } else {
        pool.parallel_for(0..tasks, Chunking::Grain(1), f)
    }
}

/// Runs `f(plane, rows, dst, buffer)` over tasks of (plane, band of output rows) of a
/// `[planes, out_h, out_w]` `output`, about four tasks per thread where there are rows (on
/// the calling thread alone when `serial`): `dst` is the band's rows of that plane, and
/// `buffer` the running thread's `per_thread` floats of `scratch`. For kernels that compute
/// NCHW planes row by row (pooling, resizing). The caller checked that `output` holds the
/// shape and `scratch` `per_thread` floats for every thread of `pool`.
pub(crate) fn for_each_plane_band<F>(
    pool: &ThreadPool,
    [planes, out_h, out_w]: [usize; 3],
    serial: bool,
    output: &mut [f32],
    scratch: &mut [f32],
    per_thread: usize,
    f: F,
) -> Result<(), PoolError>
where
    F: Fn(usize, std::ops::Range<usize>, &mut [f32], &mut [f32]) + Sync,
{
    assert!(
        output.len() >= planes * out_h * out_w,
        "an output smaller than its shape"
    );
    assert!(
        scratch.len() >= pool.threads() * per_thread,
        "scratch smaller than asked"
    );
    let wanted = if serial { 1 } else { 4 * pool.threads() };
    let bands = wanted.div_ceil(planes.max(1)).clamp(1, out_h.max(1));
    let band = out_h.div_ceil(bands).max(1);
    let bands = out_h.div_ceil(band);
    let (out, buffers) = (SendPtr(output.as_mut_ptr()), SendPtr(scratch.as_mut_ptr()));
    for_each_task(pool, planes * bands, serial, |range, thread| {
        for task in range {
            let (plane, b) = (task / bands, task % bands);
            let rows = b * band..((b + 1) * band).min(out_h);
            // SAFETY: the asserts above; each task writes its own rows of its plane, and
            // each thread its own part of the scratch.
            let (dst, buffer) = unsafe {
                (
                    std::slice::from_raw_parts_mut(
                        out.get().add((plane * out_h + rows.start) * out_w),
                        rows.len() * out_w,
                    ),
                    std::slice::from_raw_parts_mut(
                        buffers.get().add(thread * per_thread),
                        per_thread,
                    ),
                )
            };
            f(plane, rows, dst, buffer);
        }
    })
}

/// Checks that `data` holds `needed` elements.
pub(crate) fn check_len(what: &'static str, needed: usize, got: usize) -> Result<(), KernelError> {
    if got < needed {
        return Err(KernelError::BufferTooSmall { what, needed, got });
    }
    Ok(())
}
