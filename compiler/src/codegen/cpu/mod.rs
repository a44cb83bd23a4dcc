//! The Cranelift CPU code generator: one JIT'd function per Kernel IR kernel.
//!
//! A loop kernel becomes `unsafe extern "C" fn(bufs: *const *mut f32, start: usize,
//! end: usize)` ([`LoopFn`]) computing grid iterations `start..end`; a contraction's epilogue
//! becomes `unsafe extern "C" fn(bufs, batch, row_start, row_end, col_start, col_end)`
//! ([`EpilogueFn`]), called by the GEMM driver per output tile (see the ABI in
//! [`crate::kernel`]). The contraction's product itself is the runtime's (a tuned GEMM);
//! [`CompiledKernel::run`] uses the reference product so kernels can be tested end to end.
//!
//! The ISA comes from `cranelift_native` (f32x4 vectors: Cranelift's x86-64 backend has no
//! 256-bit types; FMA only where the host has it, otherwise `fmul` + `fadd`, since
//! Cranelift's portable `fma` becomes a library call per lane). The verifier runs in debug
//! builds. Each kernel owns its JIT module and frees its code when dropped.
//!
//! [`Options::bounds_checked`] compiles a range check before every load and store; a failing
//! access is skipped (a load yields 0) and recorded, and [`CompiledKernel::run`] reports the
//! first one as [`RunError::OutOfBounds`].

mod emit;
mod in_place;
pub(crate) mod math;
pub mod native_epilogue;
pub mod object;
pub mod plan;
mod splitting;
mod versioning;

use crate::kernel::{Body, Expr, Kernel, Stmt};
use bbc_runtime::libcalls;
use cranelift_codegen::ir::{
    types, AbiParam, InstBuilder, MemFlagsData, Signature, StackSlotData, StackSlotKind,
};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, DataId, FuncId, Linkage, Module};
use emit::{Emitter, Imports, TableAddr, TableStorage};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use emit::LANES;

/// Entry of a loop kernel: computes grid iterations `start..end`.
pub type LoopFn = unsafe extern "C" fn(bufs: *const *mut f32, start: usize, end: usize);
/// Entry of an epilogue: rewrites rows `r0..r1`, columns `c0..c1` of batch entry `batch`.
pub type EpilogueFn = unsafe extern "C" fn(
    bufs: *const *mut f32,
    batch: usize,
    r0: usize,
    r1: usize,
    c0: usize,
    c1: usize,
);

/// Code generation settings.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Check every access against its buffer and record violations instead of performing them.
    pub bounds_checked: bool,
    /// Cranelift's `opt_level = "speed"` (the e-graph optimiser) for every kernel; `none`
    /// keeps program order. Kernels with reductions get it regardless: their index arithmetic
    /// and bounds tests are loop-invariant in the reduction loops, which only the optimiser
    /// hoists (2–3× faster attention and direct convolutions, measured). Contraction
    /// epilogues get it too (see [`compile`]).
    pub optimize: bool,
    /// Run Cranelift's IR verifier (on by default in debug builds).
    pub verify: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            bounds_checked: false,
            optimize: false,
            verify: cfg!(debug_assertions),
        }
    }
}

/// Cranelift refused the generated code (a code generator bug).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodegenError(pub String);

impl std::fmt::Display for CodegenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "code generation failed: {}", self.0)
    }
}

impl std::error::Error for CodegenError {}

/// Why a compiled kernel could not run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunError {
    /// The buffers passed do not match the kernel's (count or element counts).
    Buffers(String),
    /// Bounds-checked mode caught an access outside a buffer or table.
    OutOfBounds {
        buffer: String,
        index: i64,
        len: usize,
        count: u64,
    },
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Buffers(why) => write!(f, "wrong buffers: {why}"),
            RunError::OutOfBounds {
                buffer,
                index,
                len,
                count,
            } => write!(
                f,
                "out-of-bounds access to `{buffer}` at element {index} (length {len}); {count} in all"
            ),
        }
    }
}

impl std::error::Error for RunError {}

/// Where bounds-checked code records violations; shared by all threads running the kernel.
#[derive(Debug, Default)]
struct Violations {
    count: AtomicU64,
    first_buf: AtomicI64,
    first_index: AtomicI64,
}

extern "C" fn bbc_out_of_bounds(record: *const Violations, buf: i64, index: i64) {
    // SAFETY: the address is baked in by `compile` and the record outlives the code.
    let r = unsafe { &*record };
    if r.count.fetch_add(1, Ordering::SeqCst) == 0 {
        r.first_buf.store(buf, Ordering::SeqCst);
        r.first_index.store(index, Ordering::SeqCst);
    }
}

/// The JIT module owning the code; only touched when freed.
struct CodeMemory(Option<JITModule>);

// SAFETY: the module is never used after compilation except to free it in `Drop`, which
// takes `&mut self`; the code it owns is immutable and callable from any thread.
unsafe impl Send for CodeMemory {}
unsafe impl Sync for CodeMemory {}

impl Drop for CodeMemory {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            // SAFETY: the function pointers into this memory die with the `CompiledKernel`.
            unsafe { m.free_memory() };
        }
    }
}

/// The entry point of a compiled kernel.
#[derive(Clone, Copy, Debug)]
pub enum Entry {
    Loops(LoopFn),
    /// A contraction: its epilogue, if it has one.
    Contraction(Option<EpilogueFn>),
}

/// A JIT-compiled kernel. Its entry points stay valid while it lives.
pub struct CompiledKernel {
    pub kernel: Kernel,
    pub entry: Entry,
    /// Wall time of IR building, Cranelift compilation and finalisation.
    pub compile_time: Duration,
    /// Size of the generated machine code in bytes.
    pub code_size: usize,
    violations: Box<Violations>,
    _tables: Vec<TableStorage>,
    _code: CodeMemory,
}

/// Whether the host ISA has fused multiply-add (Cranelift then emits `vfmadd`).
pub fn host_has_fma() -> bool {
    host_isa(&Options::default(), Linking::Jit).is_ok_and(|isa| isa.has_native_fma())
}

/// How the generated code will be linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Linking {
    /// In memory by cranelift-jit: absolute addresses.
    Jit,
    /// Into an object file a system linker links: position-independent.
    Object,
}

fn host_isa(opts: &Options, linking: Linking) -> Result<OwnedTargetIsa, CodegenError> {
    let err = |e: &dyn std::fmt::Display| CodegenError(e.to_string());
    let mut flags = settings::builder();
    let pic = linking == Linking::Object;
    // cranelift-jit needs non-PIC code with absolute library calls; a shared or static
    // program needs PIC.
    flags
        .set("is_pic", if pic { "true" } else { "false" })
        .map_err(|e| err(&e))?;
    flags
        .set("use_colocated_libcalls", "false")
        .map_err(|e| err(&e))?;
    flags
        .set("opt_level", if opts.optimize { "speed" } else { "none" })
        .map_err(|e| err(&e))?;
    // Scratch arrays can make a frame larger than the guard page: probe it, inline.
    flags
        .set("enable_probestack", "true")
        .map_err(|e| err(&e))?;
    flags
        .set("probestack_strategy", "inline")
        .map_err(|e| err(&e))?;
    flags
        .set(
            "enable_verifier",
            if opts.verify { "true" } else { "false" },
        )
        .map_err(|e| err(&e))?;
    let isa = cranelift_native::builder().map_err(|e| err(&e))?;
    isa.finish(settings::Flags::new(flags)).map_err(|e| err(&e))
}

/// Whether the code of `kernel` contains a reduction loop.
fn has_reduction(kernel: &Kernel) -> bool {
    fn stmts(body: &[Stmt]) -> bool {
        body.iter().any(|s| match s {
            Stmt::Loop { body, .. } => stmts(body),
            Stmt::Let { value, .. }
            | Stmt::Store { value, .. }
            | Stmt::ScratchStore { value, .. } => {
                let mut found = false;
                value.visit(&mut |e| found |= matches!(e, Expr::Reduce { .. }));
                found
            }
        })
    }
    match &kernel.body {
        Body::Loops { body, .. } => stmts(body),
        Body::Contraction(c) => c.epilogue.as_ref().is_some_and(|e| stmts(&e.body)),
    }
}

/// Whether `kernel` is worth Cranelift's optimiser: with reductions (see
/// [`Options::optimize`]), and epilogues, whose per-row index arithmetic, bias loads and
/// constants it hoists out of the column loop (bias + ReLU 0.53 -> 0.30 ns per element,
/// measured).
fn wants_optimizer(kernel: &Kernel) -> bool {
    has_reduction(kernel) || matches!(kernel.body, Body::Contraction(_))
}

/// The signature of `kernel`'s entry: `(bufs, start, end)` for a loop kernel, `(bufs, batch,
/// r0, r1, c0, c1)` for a contraction's epilogue; none for a contraction without one.
fn entry_signature<M: Module>(module: &M, kernel: &Kernel) -> Option<Signature> {
    let params = match &kernel.body {
        Body::Loops { .. } => 3,
        Body::Contraction(c) => {
            c.epilogue.as_ref()?;
            6
        }
    };
    let ptr = module.target_config().pointer_type();
    let mut s = module.make_signature();
    s.params.extend((0..params).map(|_| AbiParam::new(ptr)));
    Some(s)
}

/// Where generated code finds a kernel's constant table.
#[derive(Clone, Copy, Debug)]
enum TableLocation {
    /// A fixed address (the JIT keeps the data alive).
    Address(i64),
    /// A data object of the module.
    Data(DataId),
}

/// Builds the entry of `kernel` (which must have one: [`entry_signature`]) and defines it
/// as function `id` of `module`, reading its tables at `tables`. With `record` (JIT only),
/// every access is bounds-checked and violations go to that [`Violations`] record. Returns
/// the size of the machine code.
fn define_kernel<M: Module>(
    module: &mut M,
    id: FuncId,
    kernel: &Kernel,
    tables: &[TableLocation],
    record: Option<i64>,
) -> Result<usize, CodegenError> {
    let err = |e: &dyn std::fmt::Display| CodegenError(e.to_string());
    let ptr = module.target_config().pointer_type();
    let fma = module.isa().has_native_fma();
    let sig = |params: &[types::Type], returns: &[types::Type], module: &M| {
        let mut s: Signature = module.make_signature();
        s.params.extend(params.iter().map(|&t| AbiParam::new(t)));
        s.returns.extend(returns.iter().map(|&t| AbiParam::new(t)));
        s
    };
    let import = |module: &mut M, name: &str, s: &Signature| {
        module
            .declare_function(name, Linkage::Import, s)
            .map_err(|e| err(&e))
    };
    let log_sig = sig(&[types::F32], &[types::F32], module);
    let pow_sig = sig(&[types::F32, types::F32], &[types::F32], module);
    let logf = import(module, "bbc_logf", &log_sig)?;
    let powf = import(module, "bbc_powf", &pow_sig)?;
    let oob = match record {
        Some(record) => {
            let oob_sig = sig(&[ptr, types::I64, types::I64], &[], module);
            Some((import(module, "bbc_out_of_bounds", &oob_sig)?, record))
        }
        None => None,
    };
    let epilogue = match &kernel.body {
        Body::Loops { .. } => None,
        Body::Contraction(c) => c.epilogue.as_ref(),
    };
    let mut ctx = module.make_context();
    ctx.func.signature = module
        .declarations()
        .get_function_decl(id)
        .signature
        .clone();
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let logf = module.declare_func_in_func(logf, b.func);
        let powf = module.declare_func_in_func(powf, b.func);
        let oob = oob.map(|(f, record)| (module.declare_func_in_func(f, b.func), record));
        let tables = tables
            .iter()
            .map(|t| match *t {
                TableLocation::Address(a) => TableAddr::Absolute(a),
                TableLocation::Data(d) => TableAddr::Symbol(module.declare_data_in_func(d, b.func)),
            })
            .collect();
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        let args = b.block_params(block).to_vec();
        let bases = (0..kernel.buffers.len())
            .map(|i| {
                b.ins().load(
                    ptr,
                    MemFlagsData::new().with_notrap(),
                    args[0],
                    (i * 8) as i32,
                )
            })
            .collect();
        // Scratch arrays: one 16-byte aligned stack slot each, private to this call.
        let scratch = kernel
            .scratch
            .iter()
            .map(|s| {
                let bytes = u32::try_from(s.len * 4)
                    .map_err(|_| CodegenError(format!("scratch `{}` is too large", s.name)))?;
                let slot = b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    bytes,
                    4,
                ));
                Ok(b.ins().stack_addr(ptr, slot, 0))
            })
            .collect::<Result<Vec<_>, CodegenError>>()?;
        let mut em = Emitter {
            b: &mut b,
            k: kernel,
            fma,
            imports: Imports { logf, powf, oob },
            tables,
            bases,
            scratch,
            env: HashMap::new(),
            lane: None,
            scalars: HashMap::new(),
            hoisted: HashMap::new(),
        };
        match epilogue {
            None => em.loops_body(args[1], args[2]),
            Some(e) => em.epilogue_body(e, args[1], [args[2], args[3]], [args[4], args[5]]),
        }
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(module.target_config());
    }
    module
        .define_function(id, &mut ctx)
        .map_err(|e| CodegenError(format!("{e:?}")))?;
    let code_size = ctx.compiled_code().map_or(0, |c| c.code_buffer().len());
    module.clear_context(&mut ctx);
    Ok(code_size)
}

/// Compiles `kernel` for the host.
pub fn compile(kernel: &Kernel, opts: &Options) -> Result<CompiledKernel, CodegenError> {
    let started = Instant::now();
    let err = |e: &dyn std::fmt::Display| CodegenError(e.to_string());
    let optimize = opts.optimize || wants_optimizer(kernel);
    let isa = host_isa(&Options { optimize, ..*opts }, Linking::Jit)?;
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    jb.symbol("bbc_out_of_bounds", bbc_out_of_bounds as *const u8);
    for (name, address) in libcalls::symbols() {
        jb.symbol(name, address);
    }
    let mut module = JITModule::new(jb);
    let tables: Vec<TableStorage> = kernel
        .tables
        .iter()
        .map(|t| TableStorage::new(&t.data))
        .collect();
    let violations = Box::<Violations>::default();
    // The record stays where it is when the box moves into the compiled kernel.
    let record = &*violations as *const Violations as i64;
    let finish = |entry, code_size, tables, module| CompiledKernel {
        kernel: kernel.clone(),
        entry,
        compile_time: started.elapsed(),
        code_size,
        violations,
        _tables: tables,
        _code: CodeMemory(Some(module)),
    };
    let Some(entry_sig) = entry_signature(&module, kernel) else {
        return Ok(finish(Entry::Contraction(None), 0, tables, module));
    };
    let id = module
        .declare_function(&kernel.name, Linkage::Local, &entry_sig)
        .map_err(|e| err(&e))?;
    let locations: Vec<TableLocation> = tables
        .iter()
        .map(|t| TableLocation::Address(t.addr()))
        .collect();
    let code_size = define_kernel(
        &mut module,
        id,
        kernel,
        &locations,
        opts.bounds_checked.then_some(record),
    )?;
    module.finalize_definitions().map_err(|e| err(&e))?;
    let code = module.get_finalized_function(id);
    // SAFETY: the function was declared with exactly this signature (pointer-sized args).
    let entry = unsafe {
        match kernel.body {
            Body::Loops { .. } => Entry::Loops(std::mem::transmute::<*const u8, LoopFn>(code)),
            Body::Contraction(_) => {
                Entry::Contraction(Some(std::mem::transmute::<*const u8, EpilogueFn>(code)))
            }
        }
    };
    Ok(finish(entry, code_size, tables, module))
}

impl CompiledKernel {
    /// Checks `bufs` against the kernel's buffers and returns their base pointers.
    fn pointers(&self, inputs: &[&[f32]], output: &mut [f32]) -> Result<Vec<*mut f32>, RunError> {
        let k = &self.kernel;
        if inputs.len() + 1 != k.buffers.len() {
            return Err(RunError::Buffers(format!(
                "{} inputs for a kernel of {} inputs",
                inputs.len(),
                k.buffers.len() - 1
            )));
        }
        let lens = inputs.iter().map(|b| b.len()).chain([output.len()]);
        for (b, len) in k.buffers.iter().zip(lens) {
            if b.len() != len {
                return Err(RunError::Buffers(format!(
                    "`{}` has {len} elements, the kernel expects {}",
                    b.name,
                    b.len()
                )));
            }
        }
        let mut ptrs: Vec<*mut f32> = inputs.iter().map(|b| b.as_ptr() as *mut f32).collect();
        ptrs.push(output.as_mut_ptr());
        Ok(ptrs)
    }

    fn take_violation(&self) -> Result<(), RunError> {
        let v = &self.violations;
        let count = v.count.swap(0, Ordering::SeqCst);
        if count == 0 {
            return Ok(());
        }
        let (buf, index) = (
            v.first_buf.load(Ordering::SeqCst) as usize,
            v.first_index.load(Ordering::SeqCst),
        );
        let k = &self.kernel;
        // Report ids: buffers, then tables, then scratch arrays.
        let (buffer, len) = if let Some(b) = k.buffers.get(buf) {
            (b.name.clone(), b.len())
        } else if let Some(t) = k.tables.get(buf - k.buffers.len()) {
            (format!("table {}", t.name), t.len())
        } else {
            let s = &k.scratch[buf - k.buffers.len() - k.tables.len()];
            (format!("scratch {}", s.name), s.len)
        };
        Err(RunError::OutOfBounds {
            buffer,
            index,
            len,
            count,
        })
    }

    /// Runs the whole kernel on one thread: every grid iteration of a loop kernel, or the
    /// reference product of a contraction followed by its epilogue over the whole output.
    /// The output is fully overwritten; inputs are only read.
    pub fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Result<(), RunError> {
        let ptrs = self.pointers(inputs, output)?;
        match (&self.entry, &self.kernel.body) {
            (Entry::Loops(f), _) => {
                // SAFETY: the buffers match the kernel's element counts (checked above), the
                // output is exclusively borrowed and inputs are never written.
                unsafe { f(ptrs.as_ptr(), 0, self.kernel.grid_extent()) };
            }
            (Entry::Contraction(epilogue), Body::Contraction(c)) => {
                let mut bufs: Vec<Vec<f32>> = inputs.iter().map(|b| b.to_vec()).collect();
                bufs.push(vec![0.0; output.len()]);
                c.reference_product(&mut bufs);
                output.copy_from_slice(&bufs[c.out]);
                if let (Some(f), Some(e)) = (epilogue, &c.epilogue) {
                    for batch in 0..e.batch.extent {
                        // SAFETY: as above; the epilogue only rewrites the output.
                        unsafe { f(ptrs.as_ptr(), batch, 0, e.row.extent, 0, e.col.extent) };
                    }
                }
            }
            (Entry::Contraction(_), Body::Loops { .. }) => {
                unreachable!("contraction entries come from contraction kernels")
            }
        }
        self.take_violation()
    }

    /// Runs the epilogue on one tile (rows `rows`, columns `cols` of batch entry `batch`) of
    /// an output that already holds the product. A no-op for kernels without an epilogue.
    pub fn run_epilogue_tile(
        &self,
        inputs: &[&[f32]],
        output: &mut [f32],
        batch: usize,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) -> Result<(), RunError> {
        let ptrs = self.pointers(inputs, output)?;
        if let Entry::Contraction(Some(f)) = self.entry {
            // SAFETY: buffers checked; the entry clamps the ranges to the epilogue extents.
            unsafe {
                f(
                    ptrs.as_ptr(),
                    batch,
                    rows.start,
                    rows.end,
                    cols.start,
                    cols.end,
                )
            };
        }
        self.take_violation()
    }
}
