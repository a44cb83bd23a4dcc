//! Dense products on NVIDIA tensor cores (CUDA only, `sm_80` and newer): TF32 inputs
//! (rounded to nearest with `cvt.rna.tf32.f32`), f32 accumulation, through the PTX
//! instruction `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32`, so no header is needed
//! under NVRTC.
//!
//! A workgroup of eight warps computes a 128×128 tile, each warp a 64×32 part of it as 4×4
//! fragments of 16×8, over 16-deep slices of the operands staged in shared memory (rows
//! padded so the fragment reads hit distinct banks). Operands are read through the same
//! guarded Kernel IR views as the plain tiled product, and each element's epilogue runs in
//! the thread holding it. Used only when asked for ([`GpuOptions::tensor_cores`]) and the
//! product fills at least one whole tile ([`applies`]). The sizes need not be multiples of
//! the fragment: the guarded loads zero-fill the staged slices past the product's edges and
//! the stores skip them, so a convolution over a 14×14 map (196 columns) runs here too.
//!
//! [`GpuOptions::tensor_cores`]: super::GpuOptions::tensor_cores

use super::contraction::{store_element, Stage, FEW_WORKGROUPS};
use super::source::{fresh_var_id, FreshVars, Printer, Ty, MAX_GRID_DIM};
use super::Emitted;
use crate::kernel::{Contraction, ProductLayout};
use bbc_runtime::gpu::BindingAccess;

/// Warps per workgroup along rows and columns, and fragments per warp.
const WARPS: [usize; 2] = [2, 4];
const FRAGMENTS: [usize; 2] = [4, 4];
/// The workgroup's tile: rows and columns.
const TILE: [usize; 2] = [WARPS[0] * FRAGMENTS[0] * 16, WARPS[1] * FRAGMENTS[1] * 8];
const DEPTH: usize = 16;
const THREADS: usize = WARPS[0] * WARPS[1] * 32;
/// Row pitch of the staged A slice (`DEPTH` + 4) and of B (`TILE[1]` + 8), in floats: with
/// these, the 32 lanes of a fragment read hit 32 different banks.
const A_PITCH: usize = DEPTH + 4;
const B_PITCH: usize = TILE[1] + 8;
/// Accumulators per thread: four per fragment.
const ACCUMULATORS: usize = FRAGMENTS[0] * FRAGMENTS[1] * 4;

/// Whether a contraction runs on tensor cores: a dense product of at least half a tile in
/// each dimension (smaller ones would leave most of the tile's fragments idle) and enough
/// tiles to occupy half the workgroups a plain product aims for (the plain tiled product
/// spreads a small product over more multiprocessors, which wins over faster arithmetic
/// on a few).
pub fn applies(c: &Contraction) -> bool {
    let grid = grid(c);
    matches!(c.layout, ProductLayout::Dense { .. })
        && c.m >= TILE[0] / 2
        && c.n >= TILE[1] / 2
        && c.k >= DEPTH
        && grid.iter().product::<usize>() >= FEW_WORKGROUPS / 2
        && grid.iter().all(|&g| g as u64 <= MAX_GRID_DIM)
}

/// Workgroups: column tiles, row tiles, batch entries.
fn grid(c: &Contraction) -> [usize; 3] {
    [c.n.div_ceil(TILE[1]), c.m.div_ceil(TILE[0]), c.batch_len()]
}

const TF32_HELPER: &str = "__device__ __forceinline__ float bb_tf32(float x) {
    unsigned int u;
    asm(\"cvt.rna.tf32.f32 %0, %1;\" : \"=r\"(u) : \"f\"(x));
    return __uint_as_float(u);
}";

const MMA: &str = "asm volatile(\"mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 \
{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\" \
: \"+f\"(acc[q]), \"+f\"(acc[q + 1]), \"+f\"(acc[q + 2]), \"+f\"(acc[q + 3]) \
: \"r\"(fa[mi * 4]), \"r\"(fa[mi * 4 + 1]), \"r\"(fa[mi * 4 + 2]), \"r\"(fa[mi * 4 + 3]), \
\"r\"(fb[ni * 2]), \"r\"(fb[ni * 2 + 1]));";

/// The tensor-core source of contraction `c` (the caller checked [`applies`]); `p` must
/// print CUDA.
pub fn emit(mut p: Printer, c: &Contraction, entry: &str, bindings: &[BindingAccess]) -> Emitted {
    let syntax = p.syntax;
    p.module_line(TF32_HELPER);
    let grid = grid(c);
    let [fm, fn_] = FRAGMENTS;
    let mut fresh = FreshVars(fresh_var_id(p.kernel));
    let bz = fresh.var(c.batch_len());
    for (name, len) in [("tile_a", TILE[0] * A_PITCH), ("tile_b", DEPTH * B_PITCH)] {
        p.line(1, &syntax.shared_array(name, len).1);
    }
    for (name, value) in [
        ("row0", format!("wg_y * {}", TILE[0])),
        ("col0", format!("wg_x * {}", TILE[1])),
        ("tid", "lid_x".to_string()),
        ("lane", "lid_x % 32".to_string()),
        ("group", "lane / 4".to_string()),
        ("quad", "lane % 4".to_string()),
        (
            "warp_row",
            format!("(lid_x / {}) * {}", 32 * WARPS[1], fm * 16),
        ),
        (
            "warp_col",
            format!("((lid_x / 32) % {}) * {}", WARPS[1], fn_ * 8),
        ),
    ] {
        p.line(1, &syntax.constant(Ty::I32, name, &value));
    }
    p.bind_var(1, bz, "wg_z");
    p.line(1, &syntax.local_array("acc", ACCUMULATORS));
    p.open_loop(1, "q", ACCUMULATORS, true);
    p.line(2, "acc[q] = 0.0f;");
    p.line(1, "}");
    p.line(1, &format!("unsigned int fa[{}];", fm * 4));
    p.line(1, &format!("unsigned int fb[{}];", fn_ * 2));
    p.line(1, &syntax.for_open("kt", "0", &c.k.to_string(), DEPTH));
    let (m_tiles, n_tiles, k_tiles) = (
        grid[1] * TILE[0],
        grid[0] * TILE[1],
        c.k.div_ceil(DEPTH) * DEPTH,
    );
    let (ra, ka, kb, cb) = (
        fresh.var(m_tiles),
        fresh.var(k_tiles),
        fresh.var(k_tiles),
        fresh.var(n_tiles),
    );
    let per_thread = [TILE[0] * DEPTH / THREADS, TILE[1] * DEPTH / THREADS];
    Stage {
        operand: &c.a,
        threads: THREADS,
        per_thread: per_thread[0],
        row: (ra, format!("(row0 + e / {DEPTH})"), c.m),
        col: (ka, format!("(kt + e % {DEPTH})"), c.k),
        target: format!("tile_a[(e / {DEPTH}) * {A_PITCH} + e % {DEPTH}]"),
        convert: Some("bb_tf32"),
    }
    .emit(&mut p, c, bz);
    Stage {
        operand: &c.b,
        threads: THREADS,
        per_thread: per_thread[1],
        row: (kb, format!("(kt + e / {})", TILE[1]), c.k),
        col: (cb, format!("(col0 + e % {})", TILE[1]), c.n),
        target: format!("tile_b[(e / {0}) * {B_PITCH} + e % {0}]", TILE[1]),
        convert: Some("bb_tf32"),
    }
    .emit(&mut p, c, bz);
    p.line(2, syntax.barrier());
    p.open_loop(2, "ks", DEPTH / 8, true);
    // Fragment layouts of m16n8k8 (PTX ISA): A element (group [+8], quad [+4]), B element
    // (quad [+4], group).
    p.open_loop(3, "mi", fm, true);
    p.line(4, "const int ar = warp_row + mi * 16 + group;");
    p.line(4, "const int ac = ks * 8 + quad;");
    for (slot, (dr, dc)) in [(0, 0), (8, 0), (0, 4), (8, 4)].into_iter().enumerate() {
        p.line(
            4,
            &format!(
                "fa[mi * 4 + {slot}] = __float_as_uint(tile_a[(ar + {dr}) * {A_PITCH} + ac + {dc}]);"
            ),
        );
    }
    p.line(3, "}");
    p.open_loop(3, "ni", fn_, true);
    p.line(4, "const int bc = warp_col + ni * 8 + group;");
    for (slot, dr) in [0, 4].into_iter().enumerate() {
        p.line(
            4,
            &format!(
                "fb[ni * 2 + {slot}] = __float_as_uint(tile_b[(ks * 8 + quad + {dr}) * {B_PITCH} + bc]);"
            ),
        );
    }
    p.line(3, "}");
    p.open_loop(3, "mi", fm, true);
    p.open_loop(4, "ni", fn_, true);
    p.line(5, &format!("const int q = (mi * {fn_} + ni) * 4;"));
    p.line(5, MMA);
    p.line(4, "}");
    p.line(3, "}");
    p.line(2, "}");
    p.line(2, syntax.barrier());
    p.line(1, "}");
    // Accumulator `q` of fragment (mi, ni) holds row group [+8], column 2·quad [+1].
    let (r, col) = (fresh.var(m_tiles), fresh.var(n_tiles));
    p.open_loop(1, "mi", fm, true);
    p.open_loop(2, "ni", fn_, true);
    p.open_loop(3, "h", 4, true);
    p.bind_var(4, r, "(row0 + warp_row + mi * 16 + group + (h / 2) * 8)");
    p.bind_var(4, col, "(col0 + warp_col + ni * 8 + quad * 2 + h % 2)");
    let acc = format!("acc[(mi * {fn_} + ni) * 4 + h]");
    store_element(&mut p, 4, c, [bz, r, col], &acc);
    p.line(3, "}");
    p.line(2, "}");
    p.line(1, "}");
    let workgroup = [THREADS as u32, 1, 1];
    let lines = syntax.entry(entry, bindings, workgroup);
    Emitted {
        source: p.finish(lines),
        workgroup,
        grid: grid.map(|g| g as u32),
    }
}
