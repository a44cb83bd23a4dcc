//! Contractions on the GPU.
//!
//! A dense product is a tiled matrix product: each workgroup computes a `bm × bn` tile of
//! one batch entry (the third grid dimension), staging `bk`-deep slices of both operands in
//! workgroup memory, each invocation accumulating `tm × tn` outputs spaced a thread-row
//! (column) apart, so that reads of the staged tiles and writes of the result are
//! contiguous across invocations. Operand elements are read through the Kernel IR view
//! (strided, or the im2col window of a convolution input, zero in the padding) under a
//! bounds guard, so edge tiles need no padding of the buffers. The epilogue runs in the
//! invocation that computed an element, right after storing it: the epilogue rewrites
//! exactly that element, so nothing else reads it in between.
//!
//! A transposed convolution's col2im product is a gather instead: one invocation per output
//! element sums the (input position, tap) pairs that land on it, so no two invocations write
//! the same element and no float atomics are needed.
//!
//! On CUDA, a dense product whose sizes are multiples of the tensor-core fragment and whose
//! operands are plain strided matrices may run on tensor cores (`tensor_core.rs`).

use super::source::{
    below, fresh_var_id, linear_grid, linear_invocation, var_name, FreshVars, Printer, Ty,
    LINEAR_WORKGROUP, MAX_GRID_DIM,
};
use super::{Emitted, GpuError};
use crate::kernel::index::{self, Index};
use crate::kernel::lower::unflatten;
use crate::kernel::{
    BufId, CmpOp, Cond, Contraction, Epilogue, Expr, Operand, ProductLayout, ReduceOp, Var,
};
use bbc_runtime::gpu::BindingAccess;

/// The tile shape of a tiled product: a `bm × bn` output tile per workgroup, `tm × tn`
/// outputs per invocation, operand slices `bk` deep, and `splits` groups of invocations
/// that each take every `splits`-th slice of the depth and add their sums at the end (so a
/// product with few output tiles, such as a deep convolution over a 7x7 map, still has
/// enough invocations at work).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub bm: usize,
    pub bn: usize,
    pub bk: usize,
    pub tm: usize,
    pub tn: usize,
    pub splits: usize,
}

/// What a workgroup may use on a target: invocations, and floats of workgroup memory.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub threads: usize,
    pub shared_floats: usize,
}

/// The fewest workgroups a product should have: below this, a GPU's multiprocessors (132
/// on an H100) sit idle and a smaller tile shape is chosen where one exists.
pub(super) const FEW_WORKGROUPS: usize = 128;

impl Tile {
    /// Invocations of one split group, along columns and rows.
    fn threads(&self) -> [usize; 2] {
        [self.bn / self.tn, self.bm / self.tm]
    }

    /// Workgroup memory, in floats: both operand slices with their rows padded by one
    /// (the most [`tiled`] pads them), and the split groups' partial sums.
    fn shared_floats(&self) -> usize {
        let partial_sums = if self.splits > 1 {
            self.bm * self.bn
        } else {
            0
        };
        self.bk * self.splits * (self.bm + self.bn + 2) + partial_sums
    }

    /// Workgroups for product `c`.
    fn workgroups(&self, c: &Contraction) -> usize {
        c.n.div_ceil(self.bn) * c.m.div_ceil(self.bm) * c.batch_len()
    }

    /// The tile for a dense product `c`: `large` (if any) when both sizes fill it and
    /// there are enough of them, else 64 × 64; products with too few of those tiles take
    /// smaller ones whose invocations split the depth in as many groups as `limits` allow
    /// (more groups: more loads in flight and fewer steps each), and a product of at most 8
    /// rows (a classifier's matrix-vector product) takes tiles of that many rows.
    pub fn choose(c: &Contraction, large: Option<Tile>, limits: Limits) -> Tile {
        // `bm × bn` outputs, `tm × tn` per invocation, `bk` deep per group, as many groups
        // (a power of two) as the limits allow.
        let split = |bm: usize, bn: usize, bk, tm: usize, tn: usize| {
            let group = (bm / tm) * (bn / tn);
            let mut tile = Tile {
                bm,
                bn,
                bk,
                tm,
                tn,
                splits: (limits.threads / group).max(1).next_power_of_two(),
            };
            while tile.splits > 1
                && (tile.splits * group > limits.threads
                    || tile.shared_floats() > limits.shared_floats)
            {
                tile.splits /= 2;
            }
            tile
        };
        let fills = |t: &Tile| c.m >= t.bm && c.n >= t.bn && t.workgroups(c) >= FEW_WORKGROUPS;
        if let Some(large) = large.filter(fills) {
            return large;
        }
        if c.m <= 8 {
            // Up to 4 × 16 outputs per 4 × 4 invocations.
            let bm = c.m.next_power_of_two();
            return split(bm, 16, 4, bm.min(4), 4);
        }
        let plain = Tile {
            bm: 64,
            bn: 64,
            bk: 16,
            tm: 4,
            tn: 4,
            splits: 1,
        };
        let candidates = [plain, split(32, 32, 8, 4, 4), split(16, 32, 8, 2, 4)];
        candidates
            .into_iter()
            .find(|t| t.workgroups(c) >= FEW_WORKGROUPS)
            .unwrap_or(candidates[candidates.len() - 1])
    }
}

/// The flat batch index's coordinates dotted with `strides`.
fn batch_base(c: &Contraction, bz: &Index, strides: &[usize]) -> Index {
    let extents: Vec<usize> = c.batch.iter().map(|d| d.extent).collect();
    unflatten(bz, &extents)
        .into_iter()
        .zip(strides)
        .fold(Index::Const(0), |acc, (x, &s)| {
            index::add(acc, index::mul(x, s as i64))
        })
}

/// Element `(bz, r, col)` of an operand: its buffer, its index, and the condition under
/// which it is not padding (0 where it fails).
pub fn operand_element(
    op: &Operand,
    c: &Contraction,
    bz: &Index,
    r: &Index,
    col: &Index,
) -> (BufId, Index, Cond) {
    match op {
        Operand::Strided {
            buf,
            offset,
            row_stride,
            col_stride,
            batch_strides,
        } => {
            let at = index::add(
                index::add(*offset as i64, batch_base(c, bz, batch_strides)),
                index::add(
                    index::mul(r.clone(), *row_stride as i64),
                    index::mul(col.clone(), *col_stride as i64),
                ),
            );
            (*buf, at, Cond::always())
        }
        Operand::Im2col {
            buf,
            batch_strides,
            geometry: g,
        } => {
            let taps = (g.k[0] * g.k[1]) as i64;
            let channel = index::div(r.clone(), taps);
            let tap = index::rem(r.clone(), taps);
            let (ki, kj) = (
                index::div(tap.clone(), g.k[1] as i64),
                index::rem(tap, g.k[1] as i64),
            );
            let ow = g.out_hw[1] as i64;
            let (y, x) = (index::div(col.clone(), ow), index::rem(col.clone(), ow));
            let at_axis = |pos: Index, k: Index, a: usize| {
                index::sub(
                    index::add(
                        index::mul(pos, g.stride[a] as i64),
                        index::mul(k, g.dilation[a] as i64),
                    ),
                    g.pad[a] as i64,
                )
            };
            let (yy, xx) = (at_axis(y, ki, 0), at_axis(x, kj, 1));
            let [h, w] = g.in_hw;
            let inside = Cond::in_range(&yy, 0, h as i64).and(Cond::in_range(&xx, 0, w as i64));
            let plane = index::add(
                index::mul(index::add(index::mul(channel, h as i64), yy), w as i64),
                xx,
            );
            (
                *buf,
                index::add(batch_base(c, bz, batch_strides), plane),
                inside,
            )
        }
    }
}

/// Binds the epilogue's element variables and emits its statements.
fn epilogue(p: &mut Printer, depth: usize, e: &Epilogue, [b, r, c]: [String; 3]) {
    p.bind_var(depth, e.batch, &b);
    p.bind_var(depth, e.row, &r);
    p.bind_var(depth, e.col, &c);
    p.stmts(depth, &e.body);
}

/// `name = (guard) ? buf[index] : 0` without reading outside the buffer.
fn guarded_load(p: &mut Printer, depth: usize, name: &str, element: (BufId, Index, Cond)) {
    let (buf, at, cond) = element;
    let zero = p.float(0.0);
    let decl = p.syntax.variable(Ty::F32, name, &zero);
    p.line(depth, &decl);
    let guard = p.cond(&cond);
    let at = p.index(&at);
    p.line(depth, &format!("if ({guard}) {{ {name} = b{buf}[{at}]; }}"));
}

/// Copies one operand slice into workgroup memory: each of `threads` invocations loads
/// `per_thread` elements; element `e` is operand element (`row`, `col`) (variables bound to
/// the given expressions, guarded by the given bounds), stored at `target`, through
/// `convert` when set (a function name).
pub(super) struct Stage<'o> {
    pub operand: &'o Operand,
    pub threads: usize,
    pub per_thread: usize,
    pub row: (Var, String, usize),
    pub col: (Var, String, usize),
    pub target: String,
    pub convert: Option<&'static str>,
}

impl Stage<'_> {
    /// Loads the invocation's share straight into workgroup memory.
    pub fn emit(&self, p: &mut Printer, c: &Contraction, bz: Var) {
        self.load(p, 2, c, bz, None);
    }

    /// Opens the loop over the invocation's share at `depth`, with `e` declared.
    fn each_element(&self, p: &mut Printer, depth: usize) {
        p.open_unrolled(depth, "l", self.per_thread);
        let e = format!("tid + l * {}", self.threads);
        let decl = p.syntax.constant(Ty::I32, "e", &e);
        p.line(depth + 1, &decl);
    }

    /// Loads the invocation's share into workgroup memory, or into the local array
    /// `registers` (one element per `l`) when given.
    pub fn load(
        &self,
        p: &mut Printer,
        depth: usize,
        c: &Contraction,
        bz: Var,
        registers: Option<&str>,
    ) {
        self.each_element(p, depth);
        let ((rv, rx, rows), (cv, cx, cols)) = (&self.row, &self.col);
        p.bind_var(depth + 1, *rv, rx);
        p.bind_var(depth + 1, *cv, cx);
        let (r, col) = (Index::Var(*rv), Index::Var(*cv));
        let (buf, at, inside) = operand_element(self.operand, c, &Index::Var(bz), &r, &col);
        let guard = below(&r, *rows).and(below(&col, *cols)).and(inside);
        guarded_load(p, depth + 1, "v", (buf, at, guard));
        let value = match self.convert {
            Some(f) => format!("{f}(v)"),
            None => "v".into(),
        };
        let target = match registers {
            Some(array) => format!("{array}[l]"),
            None => self.target.clone(),
        };
        p.line(depth + 1, &format!("{target} = {value};"));
        p.close_loop(depth);
    }

    /// Stores the share held in `registers` (see [`Stage::load`]) into workgroup memory.
    pub fn store(&self, p: &mut Printer, depth: usize, registers: &str) {
        self.each_element(p, depth);
        p.line(depth + 1, &format!("{} = {registers}[l];", self.target));
        p.close_loop(depth);
    }
}

/// Stores product element `(bz, r, col)` (variables already bound; rows and columns past
/// the product are skipped) of a dense product and runs the epilogue on it.
pub(super) fn store_element(
    p: &mut Printer,
    depth: usize,
    c: &Contraction,
    [bz, r, col]: [Var; 3],
    value: &str,
) {
    let ProductLayout::Dense {
        row_stride,
        col_stride,
    } = c.layout
    else {
        unreachable!("col2im products are gathers")
    };
    let inside = below(&Index::Var(r), c.m).and(below(&Index::Var(col), c.n));
    p.line(depth, &format!("if ({}) {{", p.cond(&inside)));
    let out_strides: Vec<usize> = c.batch.iter().map(|d| d.out_stride).collect();
    let at = index::add(
        batch_base(c, &Index::Var(bz), &out_strides),
        index::add(
            index::mul(Index::Var(r), row_stride as i64),
            index::mul(Index::Var(col), col_stride as i64),
        ),
    );
    p.line(
        depth + 1,
        &format!("b{}[{}] = {value};", c.out, p.index(&at)),
    );
    if let Some(e) = &c.epilogue {
        epilogue(p, depth + 1, e, [var_name(bz), var_name(r), var_name(col)]);
    }
    p.line(depth, "}");
}

/// Whether an operand is contiguous along the product's depth: a strided matrix whose
/// depth stride (columns of A, rows of B) is 1 and whose other stride is not. Without a
/// unit stride (an im2col view, whose columns are the contiguous output positions), A is
/// staged along the depth and B along its columns.
fn depth_is_contiguous(op: &Operand, depth_is_rows: bool) -> bool {
    match op {
        Operand::Strided {
            row_stride,
            col_stride,
            ..
        } => {
            let (depth, other) = if depth_is_rows {
                (*row_stride, *col_stride)
            } else {
                (*col_stride, *row_stride)
            };
            if depth == 1 && other != 1 {
                true
            } else if other == 1 && depth != 1 {
                false
            } else {
                !depth_is_rows
            }
        }
        Operand::Im2col { .. } => !depth_is_rows,
    }
}

/// A tiled dense product with its epilogue.
pub fn tiled(
    mut p: Printer,
    c: &Contraction,
    tile: Tile,
    entry: &str,
    bindings: &[BindingAccess],
) -> Result<Emitted, GpuError> {
    let Tile {
        bm,
        bn,
        bk,
        tm,
        tn,
        splits,
    } = tile;
    let [tx, ty] = tile.threads();
    let group = tx * ty;
    let threads = group * splits;
    // Depth staged per step: one `bk` slice per split group.
    let depth = bk * splits;
    debug_assert!(bm * depth % threads == 0 && bn * depth % threads == 0);
    let grid = [c.n.div_ceil(bn), c.m.div_ceil(bm), c.batch_len()];
    if grid.iter().any(|&g| g as u64 > MAX_GRID_DIM) {
        return Err(GpuError::TooLarge(format!(
            "a product of {}x{}x{} over {} batch entries needs a grid of {grid:?} workgroups",
            c.m,
            c.n,
            c.k,
            c.batch_len()
        )));
    }
    let mut fresh = FreshVars(fresh_var_id(p.kernel));
    let bz = fresh.var(c.batch_len());
    let syntax = p.syntax;
    // Each operand slice is staged with consecutive invocations reading consecutive
    // addresses: along the depth where it is contiguous in memory (then the slice's rows
    // are padded by one element, so that those invocations' stores into workgroup memory
    // fall in different banks), else along its other axis.
    let a_along_depth = depth_is_contiguous(&c.a, false);
    let b_along_depth = depth_is_contiguous(&c.b, true);
    let (pitch_a, pitch_b) = (bm + a_along_depth as usize, bn + b_along_depth as usize);
    let mut shared = vec![("tile_a", depth * pitch_a), ("tile_b", depth * pitch_b)];
    if splits > 1 {
        shared.push(("partial_sums", bm * bn));
    }
    for (name, len) in shared {
        let (module, decl) = syntax.shared_array(name, len);
        if module {
            p.module_line(&decl);
        } else {
            p.line(1, &decl);
        }
    }
    // The workgroup is `tx × (ty · splits)`: `split` is the invocation's group, `ly` its
    // row within the group.
    let (split, ly) = if splits > 1 {
        (format!("lid_y / {ty}"), format!("lid_y % {ty}"))
    } else {
        ("0".to_string(), "lid_y".to_string())
    };
    for (name, value) in [
        ("row0", format!("wg_y * {bm}")),
        ("col0", format!("wg_x * {bn}")),
        ("tid", format!("lid_y * {tx} + lid_x")),
        ("split", split),
        ("ly", ly),
    ] {
        let decl = syntax.constant(Ty::I32, name, &value);
        p.line(1, &decl);
    }
    p.bind_var(1, bz, "wg_z");
    for (name, len) in [("acc", tm * tn), ("frag_a", tm), ("frag_b", tn)] {
        let decl = syntax.local_array(name, len);
        p.line(1, &decl);
    }
    p.open_unrolled(1, "q", tm * tn);
    let zero = p.float(0.0);
    p.line(2, &format!("acc[q] = {zero};"));
    p.close_loop(1);
    for (name, len) in [
        ("next_a", bm * depth / threads),
        ("next_b", bn * depth / threads),
    ] {
        let decl = syntax.local_array(name, len);
        p.line(1, &decl);
    }
    // Stage the operand slices as [depth][pitch] (so a thread's rows and columns are
    // contiguous). Loader and store variables range over whole tiles, so their guards are
    // kept.
    let (m_tiles, n_tiles, k_tiles) = (grid[1] * bm, grid[0] * bn, c.k.div_ceil(depth) * depth);
    let (ra, ka) = (fresh.var(m_tiles), fresh.var(k_tiles));
    let (kb, cb) = (fresh.var(k_tiles), fresh.var(n_tiles));
    // Element `e` of an invocation's share: (its position along the tile's other axis, its
    // depth, its place in workgroup memory).
    let staged = |width: usize, pitch: usize, along_depth: bool| {
        let (other, k) = if along_depth {
            (format!("e / {depth}"), format!("e % {depth}"))
        } else {
            (format!("e % {width}"), format!("e / {width}"))
        };
        let target = format!("({k}) * {pitch} + {other}");
        (other, k, target)
    };
    let (m_at, k_at, target) = staged(bm, pitch_a, a_along_depth);
    let stage_a = Stage {
        operand: &c.a,
        threads,
        per_thread: bm * depth / threads,
        row: (ra, format!("(row0 + {m_at})"), c.m),
        col: (ka, format!("(k0 + {k_at})"), c.k),
        target: format!("tile_a[{target}]"),
        convert: None,
    };
    let (n_at, k_at, target) = staged(bn, pitch_b, b_along_depth);
    let stage_b = Stage {
        operand: &c.b,
        threads,
        per_thread: bn * depth / threads,
        row: (kb, format!("(k0 + {k_at})"), c.k),
        col: (cb, format!("(col0 + {n_at})"), c.n),
        target: format!("tile_b[{target}]"),
        convert: None,
    };
    // Software pipelining: the next slices are loaded into registers while this one is
    // multiplied, so global memory latency overlaps the arithmetic.
    let load_next = |p: &mut Printer, depth_at: usize, k0: &str| {
        p.line(depth_at, &syntax.constant(Ty::I32, "k0", k0));
        stage_a.load(p, depth_at, c, bz, Some("next_a"));
        stage_b.load(p, depth_at, c, bz, Some("next_b"));
    };
    p.line(1, "{");
    load_next(&mut p, 2, "0");
    p.line(1, "}");
    p.line(1, &syntax.for_open("kt", "0", &c.k.to_string(), depth));
    stage_a.store(&mut p, 2, "next_a");
    stage_b.store(&mut p, 2, "next_b");
    p.line(2, syntax.barrier());
    p.line(2, &format!("if (kt + {depth} < {}) {{", c.k));
    load_next(&mut p, 3, &format!("kt + {depth}"));
    p.line(2, "}");
    p.open_loop(2, "kk", bk, true);
    p.line(
        3,
        &syntax.constant(Ty::I32, "kd", &format!("split * {bk} + kk")),
    );
    p.open_unrolled(3, "i", tm);
    p.line(
        4,
        &format!("frag_a[i] = tile_a[kd * {pitch_a} + ly + i * {ty}];"),
    );
    p.close_loop(3);
    p.open_unrolled(3, "j", tn);
    p.line(
        4,
        &format!("frag_b[j] = tile_b[kd * {pitch_b} + lid_x + j * {tx}];"),
    );
    p.close_loop(3);
    p.open_unrolled(3, "i", tm);
    p.open_unrolled(4, "j", tn);
    let fma = syntax.call(
        super::source::Call::Fma,
        &[
            "frag_a[i]".into(),
            "frag_b[j]".into(),
            format!("acc[i * {tn} + j]"),
        ],
    );
    p.line(5, &format!("acc[i * {tn} + j] = {fma};"));
    p.close_loop(4);
    p.close_loop(3);
    p.line(2, "}");
    p.line(2, syntax.barrier());
    p.line(1, "}");
    if splits > 1 {
        // Group 0 adds the other groups' sums in group order (so results do not depend on
        // timing), one group at a time through workgroup memory; every invocation reaches
        // the barriers.
        let slot = format!("partial_sums[q * {group} + ly * {tx} + lid_x]");
        p.line(1, &syntax.for_open("s", "1", &splits.to_string(), 1));
        for (group, statement) in [
            ("s", format!("{slot} = acc[q];")),
            ("0", format!("acc[q] = acc[q] + {slot};")),
        ] {
            p.line(2, &format!("if (split == {group}) {{"));
            p.open_unrolled(3, "q", tm * tn);
            p.line(4, &statement);
            p.close_loop(3);
            p.line(2, "}");
            p.line(2, syntax.barrier());
        }
        p.line(1, "}");
        let exit = syntax.exit();
        p.line(1, &format!("if (split != 0) {{ {exit} }}"));
    }
    // Store each element, then run the epilogue on it.
    let (r, col) = (fresh.var(m_tiles), fresh.var(n_tiles));
    p.open_unrolled(1, "i", tm);
    p.open_unrolled(2, "j", tn);
    p.bind_var(3, r, &format!("(row0 + ly + i * {ty})"));
    p.bind_var(3, col, &format!("(col0 + lid_x + j * {tx})"));
    store_element(&mut p, 3, c, [bz, r, col], &format!("acc[i * {tn} + j]"));
    p.close_loop(2);
    p.close_loop(1);
    let workgroup = [tx as u32, (ty * splits) as u32, 1];
    let lines = syntax.entry(entry, bindings, workgroup);
    Ok(Emitted {
        source: p.finish(lines),
        workgroup,
        grid: grid.map(|g| g as u32),
    })
}

/// A transposed convolution's product as a gather over output elements, then its epilogue.
pub fn col2im_gather(
    mut p: Printer,
    c: &Contraction,
    entry: &str,
    bindings: &[BindingAccess],
) -> Emitted {
    let ProductLayout::Col2im { geometry: g } = &c.layout else {
        unreachable!("dense products are tiled")
    };
    let (channels, [oh, ow], [ih, iw]) = (g.channels, g.out_hw, g.in_hw);
    let plane = oh * ow;
    let total = c.batch_len() * channels * plane;
    let mut fresh = FreshVars(fresh_var_id(p.kernel));
    let (bz, oc, yy, xx) = (
        fresh.var(c.batch_len()),
        fresh.var(channels),
        fresh.var(oh),
        fresh.var(ow),
    );
    linear_invocation(&mut p, total);
    p.bind_var(1, bz, &format!("(gid / {})", channels * plane));
    p.bind_var(1, oc, &format!("((gid / {plane}) % {channels})"));
    p.bind_var(1, yy, &format!("((gid % {plane}) / {ow})"));
    p.bind_var(1, xx, &format!("(gid % {ow})"));
    // Input position `y` reaches output row `yy` through tap `ki` when
    // `y·stride + ki·dilation − pad = yy`.
    let (ki, kj, depth) = (fresh.var(g.k[0]), fresh.var(g.k[1]), fresh.var(c.k));
    let source = |out: &Index, k: Var, a: usize, extent: usize| {
        let num = index::sub(
            index::add(out.clone(), g.pad[a] as i64),
            index::mul(Index::Var(k), g.dilation[a] as i64),
        );
        let stride = g.stride[a] as i64;
        let cond = Cond::cmp(CmpOp::Ge, num.clone(), 0i64)
            .and(Cond::cmp(CmpOp::Eq, index::rem(num.clone(), stride), 0i64))
            .and(Cond::cmp(
                CmpOp::Lt,
                index::div(num.clone(), stride),
                extent as i64,
            ));
        (
            index::clamp(index::div(num, stride), 0, extent as i64 - 1),
            cond,
        )
    };
    let (y, ycond) = source(&Index::Var(yy), ki, 0, ih);
    let (x, xcond) = source(&Index::Var(xx), kj, 1, iw);
    let row = index::add(
        index::mul(
            index::add(index::mul(Index::Var(oc), g.k[0] as i64), Index::Var(ki)),
            g.k[1] as i64,
        ),
        Index::Var(kj),
    );
    let col = index::add(index::mul(y, iw as i64), x);
    let bzi = Index::Var(bz);
    let (abuf, aat, acond) = operand_element(&c.a, c, &bzi, &row, &Index::Var(depth));
    let (bbuf, bat, bcond) = operand_element(&c.b, c, &bzi, &Index::Var(depth), &col);
    let product = Expr::load(abuf, aat) * Expr::load(bbuf, bat);
    let term = Expr::select_index(
        ycond.and(xcond).and(acond).and(bcond),
        product,
        Expr::Const(0.0),
    );
    let sum = Expr::reduce(ReduceOp::Sum, vec![ki, kj, depth], term);
    let value = p.expr(1, &sum);
    let out_strides: Vec<usize> = c.batch.iter().map(|d| d.out_stride).collect();
    let at = index::add(
        batch_base(c, &bzi, &out_strides),
        index::add(
            index::mul(
                index::add(index::mul(Index::Var(oc), oh as i64), Index::Var(yy)),
                ow as i64,
            ),
            Index::Var(xx),
        ),
    );
    p.line(1, &format!("b{}[{}] = {value};", c.out, p.index(&at)));
    if let Some(e) = &c.epilogue {
        // The epilogue's element is (image, output channel, output position); the batch
        // entries are (image, group).
        let groups = (c.batch_len() / e.batch.extent.max(1)) as i64;
        let b = Index::Var(bz);
        let image = index::div(b.clone(), groups);
        let channel = index::add(
            index::mul(index::rem(b, groups), channels as i64),
            Index::Var(oc),
        );
        let position = index::add(index::mul(Index::Var(yy), ow as i64), Index::Var(xx));
        let [image, channel, position] = [image, channel, position].map(|x| p.index(&x));
        epilogue(&mut p, 1, e, [image, channel, position]);
    }
    let workgroup = [LINEAR_WORKGROUP, 1, 1];
    let lines = p.syntax.entry(entry, bindings, workgroup);
    Emitted {
        source: p.finish(lines),
        workgroup,
        grid: linear_grid(total),
    }
}
