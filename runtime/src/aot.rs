//! Ahead-of-time compiled CPU models: the descriptor an object file exports, the weights
//! file, the CPU feature check and the loader.
//!
//! `bbc compile SPEC --target cpu -o DIR` writes `model.o`, which defines the model's
//! generated functions, a table of their addresses, the plan as JSON ([`PlanDesc`]) and one
//! exported [`ModelDescriptor`] pointing at them, and `weights.bin`, the plan's constants
//! (prepared, unpacked) as little-endian f32 in constant order. A program links `model.o`
//! with this crate (or its C library) alone and calls [`Model::load`]: it checks the
//! descriptor, that the CPU has every feature the code was compiled for, and the weights'
//! size and digest, then resolves the plan ([`PlanDesc::instantiate`], which packs the
//! weights) on a thread pool of its own.
//!
//! From Rust, with `model.o` linked (e.g. `cargo:rustc-link-arg=DIR/model.o` in a build
//! script):
//!
//! ```ignore
//! extern "C" {
//!     static bbc_model_convnext_atto: bbc_runtime::aot::ModelDescriptor;
//! }
//! let mut model = unsafe { Model::load(&bbc_model_convnext_atto, "DIR/weights.bin".as_ref(), 0)? };
//! let outputs = model.run(&[&input])?;
//! ```

use crate::arena::AlignedBuffer;
use crate::desc::{Code, ConstantDesc, FunctionKind, IoDesc, PlanDesc};
use crate::exec::{ExecError, Executor, LoopFn, TileFn};
use crate::pool::ThreadPool;
use std::ffi::c_void;
use std::io::{Read, Write};
use std::path::Path;

/// The first bytes of every [`ModelDescriptor`].
pub const MAGIC: [u8; 8] = *b"bbcmodel";
/// The version of the descriptor's layout and of what it points at.
pub const DESCRIPTOR_VERSION: u32 = 1;

/// What an ahead-of-time object exports for a model (one symbol per model). The layout is
/// shared with the code generator, which writes it field by field at these offsets.
#[repr(C)]
#[derive(Debug)]
pub struct ModelDescriptor {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`DESCRIPTOR_VERSION`].
    pub version: u32,
    /// Bytes of a pointer where the object was compiled.
    pub pointer_bytes: u32,
    /// The plan as JSON ([`PlanDesc`]).
    pub plan: *const u8,
    pub plan_len: usize,
    /// The generated functions, in the plan's function-table order.
    pub functions: *const *const c_void,
    pub function_count: usize,
    /// The CPU features the code needs: bit `i` is [`CPU_FEATURES`]`[i]`.
    pub cpu_features: u64,
    /// Size and [`WeightsDigest`] of the weights file compiled with the object.
    pub weights_bytes: u64,
    pub weights_digest: u64,
}

// SAFETY: a descriptor is immutable data in the object's read-only sections; its pointers
// are only read.
unsafe impl Sync for ModelDescriptor {}

/// CPU features generated code may be compiled for, by their `std::arch` names; bit `i` of
/// [`ModelDescriptor::cpu_features`] stands for entry `i`. Append only.
pub const CPU_FEATURES: &[&str] = &[
    "sse3",
    "ssse3",
    "sse4.1",
    "sse4.2",
    "popcnt",
    "avx",
    "avx2",
    "fma",
    "bmi1",
    "bmi2",
    "lzcnt",
    "cmpxchg16b",
    "avx512f",
    "avx512dq",
    "avx512vl",
    "avx512bitalg",
    "avx512vbmi",
    "avx512vnni",
    "avxvnni",
    "lse",
    "paca",
    "fp16",
    "dotprod",
    "i8mm",
];

/// The bit of feature `name` in [`ModelDescriptor::cpu_features`].
pub fn cpu_feature_bit(name: &str) -> Option<u32> {
    CPU_FEATURES
        .iter()
        .position(|&f| f == name)
        .map(|i| i as u32)
}

/// Whether this CPU has feature `name` (one of [`CPU_FEATURES`]).
pub fn has_cpu_feature(name: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        match name {
            "sse3" => has!("sse3"),
            "ssse3" => has!("ssse3"),
            "sse4.1" => has!("sse4.1"),
            "sse4.2" => has!("sse4.2"),
            "popcnt" => has!("popcnt"),
            "avx" => has!("avx"),
            "avx2" => has!("avx2"),
            "fma" => has!("fma"),
            "bmi1" => has!("bmi1"),
            "bmi2" => has!("bmi2"),
            "lzcnt" => has!("lzcnt"),
            "cmpxchg16b" => has!("cmpxchg16b"),
            "avx512f" => has!("avx512f"),
            "avx512dq" => has!("avx512dq"),
            "avx512vl" => has!("avx512vl"),
            "avx512bitalg" => has!("avx512bitalg"),
            "avx512vbmi" => has!("avx512vbmi"),
            "avx512vnni" => has!("avx512vnni"),
            "avxvnni" => has!("avxvnni"),
            _ => false,
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        match name {
            "lse" => has!("lse"),
            "paca" => has!("paca"),
            "fp16" => has!("fp16"),
            "dotprod" => has!("dotprod"),
            "i8mm" => has!("i8mm"),
            _ => false,
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = name;
        false
    }
}

/// The features of `bits` this CPU lacks (an unknown bit counts as lacking).
pub fn missing_cpu_features(bits: u64) -> Vec<String> {
    (0..64)
        .filter(|&i| bits >> i & 1 == 1)
        .filter_map(|i| match CPU_FEATURES.get(i) {
            Some(name) if has_cpu_feature(name) => None,
            Some(name) => Some(name.to_string()),
            None => Some(format!("feature bit {i}")),
        })
        .collect()
}

/// A 64-bit digest of f32 data, to tell a weights file from a corrupt or mismatched one
/// (not from a forged one). It folds in the bit patterns two at a time, FxHash style; each
/// step is a bijection of the state for a given word, so data that differs in one place
/// always digests differently.
#[derive(Clone, Copy, Debug)]
pub struct WeightsDigest {
    state: u64,
    /// A float waiting for its pair.
    pending: Option<u32>,
    bytes: u64,
}

impl Default for WeightsDigest {
    fn default() -> WeightsDigest {
        WeightsDigest {
            state: 0x6262_635f_7765_6967,
            pending: None,
            bytes: 0,
        }
    }
}

impl WeightsDigest {
    fn mix(&mut self, word: u64) {
        self.state = (self.state.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    pub fn update(&mut self, data: &[f32]) {
        self.bytes += 4 * data.len() as u64;
        let mut rest = data;
        if let Some(first) = self.pending.take() {
            let Some((second, tail)) = rest.split_first() else {
                self.pending = Some(first);
                return;
            };
            self.mix(u64::from(first) | u64::from(second.to_bits()) << 32);
            rest = tail;
        }
        let mut pairs = rest.chunks_exact(2);
        for pair in &mut pairs {
            self.mix(u64::from(pair[0].to_bits()) | u64::from(pair[1].to_bits()) << 32);
        }
        self.pending = pairs.remainder().first().map(|v| v.to_bits());
    }

    /// Bytes digested so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn finish(mut self) -> u64 {
        if let Some(last) = self.pending.take() {
            self.mix(u64::from(last));
        }
        let bytes = self.bytes;
        self.mix(bytes);
        self.state
    }

    /// The digest of `constants` in order.
    pub fn of<'a>(constants: impl IntoIterator<Item = &'a [f32]>) -> (u64, u64) {
        let mut digest = WeightsDigest::default();
        constants.into_iter().for_each(|c| digest.update(c));
        (digest.bytes(), digest.finish())
    }
}

/// Floats converted per write or read of a weights file.
const CHUNK: usize = 1 << 16;

/// Writes `constants` in order as little-endian f32 (the weights file's format).
pub fn write_weights<'a>(
    path: &Path,
    constants: impl IntoIterator<Item = &'a [f32]>,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut bytes = Vec::with_capacity(CHUNK * 4);
    for constant in constants {
        for chunk in constant.chunks(CHUNK) {
            bytes.clear();
            bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            out.write_all(&bytes)?;
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Why an ahead-of-time model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AotError {
    #[error("not a usable bbc model descriptor: {0}")]
    Descriptor(String),
    #[error(
        "this CPU lacks {}, which the model's code was compiled for; compile the model on (or \
         for) this machine",
        .0.join(", ")
    )]
    CpuFeatures(Vec<String>),
    #[error("weights `{path}`: {problem}")]
    Weights { path: String, problem: String },
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// Reads the weights file at `path` into one buffer per constant, checking its size and
/// digest against what the model was compiled with.
pub fn read_weights(
    path: &Path,
    constants: &[ConstantDesc],
    bytes: u64,
    digest: u64,
) -> Result<Vec<AlignedBuffer>, AotError> {
    let fail = |problem: String| AotError::Weights {
        path: path.display().to_string(),
        problem,
    };
    let expected: u64 = constants.iter().map(|c| 4 * c.len as u64).sum();
    if expected != bytes {
        return Err(AotError::Descriptor(format!(
            "its plan's constants take {expected} bytes, its weights {bytes}"
        )));
    }
    let mut file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    // A folder opens on Unix, and its size would read as a truncated weights file.
    if meta.is_dir() {
        return Err(fail(
            "it is a folder, not a weights file (`bbc compile` writes one as weights.bin in \
             the program folder)"
                .into(),
        ));
    }
    let actual = meta.len();
    if actual != bytes {
        return Err(fail(format!(
            "{actual} bytes, the model expects {bytes}: the file is truncated or belongs to \
             another model"
        )));
    }
    let mut check = WeightsDigest::default();
    let mut raw = vec![0u8; CHUNK * 4];
    let mut out = Vec::with_capacity(constants.len());
    for c in constants {
        let mut buffer = AlignedBuffer::zeroed(c.len);
        for chunk in buffer.as_mut_slice().chunks_mut(CHUNK) {
            let raw = &mut raw[..chunk.len() * 4];
            file.read_exact(raw)
                .map_err(|e| fail(format!("cannot read: {e}")))?;
            for (v, b) in chunk.iter_mut().zip(raw.chunks_exact(4)) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            check.update(chunk);
        }
        out.push(buffer);
    }
    if check.finish() != digest {
        return Err(fail(
            "its contents differ from the weights the model was compiled with: the file is \
             corrupt or belongs to another compilation"
                .into(),
        ));
    }
    Ok(out)
}

/// A loaded ahead-of-time model, ready to run many times.
pub struct Model {
    exec: Executor,
    name: String,
    inputs: Vec<IoDesc>,
    outputs: Vec<IoDesc>,
}

impl Model {
    /// Loads the model `descriptor` describes with the weights file at `weights`, on a pool
    /// of `threads` threads (0: one per core).
    ///
    /// # Safety
    ///
    /// `descriptor` must be one `bbc compile --target cpu` wrote (linked from its object
    /// file): its pointers are followed and its functions called as the plan says.
    pub unsafe fn load(
        descriptor: &ModelDescriptor,
        weights: &Path,
        threads: usize,
    ) -> Result<Model, AotError> {
        let bad = |what: String| Err(AotError::Descriptor(what));
        if descriptor.magic != MAGIC {
            return bad("its magic bytes are wrong".into());
        }
        if descriptor.version != DESCRIPTOR_VERSION {
            return bad(format!(
                "version {}, this runtime reads version {DESCRIPTOR_VERSION}: recompile the \
                 model with a matching bbc",
                descriptor.version
            ));
        }
        if descriptor.pointer_bytes as usize != size_of::<usize>() {
            return bad(format!(
                "compiled for {}-byte pointers",
                descriptor.pointer_bytes
            ));
        }
        let missing = missing_cpu_features(descriptor.cpu_features);
        if !missing.is_empty() {
            return Err(AotError::CpuFeatures(missing));
        }
        if descriptor.plan.is_null() || descriptor.functions.is_null() {
            return bad("a null pointer".into());
        }
        // SAFETY: the object holds `plan_len` bytes of plan and `function_count` function
        // addresses there (the caller's contract).
        let (plan, functions) = unsafe {
            (
                std::slice::from_raw_parts(descriptor.plan, descriptor.plan_len),
                std::slice::from_raw_parts(descriptor.functions, descriptor.function_count),
            )
        };
        let desc = PlanDesc::from_bytes(plan).map_err(|e| AotError::Descriptor(e.to_string()))?;
        desc.validate()?;
        if functions.len() != desc.functions.len() {
            return bad(format!(
                "{} functions for a plan of {}",
                functions.len(),
                desc.functions.len()
            ));
        }
        let code: Vec<Code> = functions
            .iter()
            .zip(&desc.functions)
            // SAFETY: the object's function `i` has the signature the plan gives it (the
            // caller's contract); both are `extern "C"` functions of pointer-sized arguments.
            .map(|(&f, kind)| unsafe {
                match kind {
                    FunctionKind::Loop => {
                        Code::Loop(std::mem::transmute::<*const c_void, LoopFn>(f))
                    }
                    FunctionKind::Tile => {
                        Code::Tile(std::mem::transmute::<*const c_void, TileFn>(f))
                    }
                }
            })
            .collect();
        let constants = read_weights(
            weights,
            &desc.constants,
            descriptor.weights_bytes,
            descriptor.weights_digest,
        )?;
        let pool =
            ThreadPool::new(threads).map_err(|e| ExecError::Plan(format!("thread pool: {e}")))?;
        let exec = desc.instantiate(constants, &code, pool)?;
        Ok(Model {
            exec,
            name: desc.model,
            inputs: desc.inputs,
            outputs: desc.outputs,
        })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The inputs, in [`Model::run_into`] order (row-major f32).
    pub fn inputs(&self) -> &[IoDesc] {
        &self.inputs
    }

    /// The outputs, in [`Model::run_into`] order (row-major f32).
    pub fn outputs(&self) -> &[IoDesc] {
        &self.outputs
    }

    pub fn threads(&self) -> usize {
        self.exec.threads()
    }

    /// Runs one inference on `inputs`, writing `outputs`; sizes are checked.
    pub fn run_into(
        &mut self,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), ExecError> {
        check_buffers("input", &self.inputs, inputs.iter().map(|b| b.len()))?;
        check_buffers("output", &self.outputs, outputs.iter().map(|b| b.len()))?;
        self.exec.run(inputs, outputs)
    }

    /// Runs one inference on `inputs`, returning the outputs.
    pub fn run(&mut self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, ExecError> {
        let mut outputs: Vec<Vec<f32>> = self.outputs.iter().map(|o| vec![0.0; o.len()]).collect();
        let mut views: Vec<&mut [f32]> = outputs.iter_mut().map(Vec::as_mut_slice).collect();
        self.run_into(inputs, &mut views)?;
        Ok(outputs)
    }
}

/// Checks the caller's buffers against the model's inputs or outputs (`what`), naming the
/// value and its shape in the error.
fn check_buffers(
    what: &str,
    expected: &[IoDesc],
    lens: impl ExactSizeIterator<Item = usize>,
) -> Result<(), ExecError> {
    if lens.len() != expected.len() {
        return Err(ExecError::Io(format!(
            "the model has {} {what}s, {} buffers were given",
            expected.len(),
            lens.len()
        )));
    }
    for (io, len) in expected.iter().zip(lens) {
        if len != io.len() {
            return Err(ExecError::Io(format!(
                "{what} `{}` {:?} has {} values, but its buffer holds {len}",
                io.name,
                io.shape,
                io.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desc::{FunctionKind, PLAN_FORMAT};
    use crate::exec::{Slot, Step, StepKernel};

    /// `y = 2·x + w` over 5 elements: buffers x, w, y.
    unsafe extern "C" fn twice_plus(bufs: *const *mut f32, start: usize, end: usize) {
        let (x, w, y) = (*bufs, *bufs.add(1), *bufs.add(2));
        for i in start..end {
            *y.add(i) = 2.0 * *x.add(i) + *w.add(i);
        }
    }

    fn plan_json() -> Vec<u8> {
        let mut desc = PlanDesc::new("twice");
        desc.values = vec![5, 5];
        desc.constants = vec![ConstantDesc {
            name: "w".into(),
            len: 5,
        }];
        desc.functions = vec![FunctionKind::Loop];
        desc.inputs = vec![IoDesc {
            name: "x".into(),
            shape: vec![5],
            slot: Slot::Value(0),
        }];
        desc.outputs = vec![IoDesc {
            name: "y".into(),
            shape: vec![5],
            slot: Slot::Value(1),
        }];
        desc.steps = vec![Step {
            name: "y".into(),
            slots: vec![Slot::Value(0), Slot::Constant(0), Slot::Value(1)],
            kernel: StepKernel::Loops { entry: 0, grid: 5 },
        }];
        assert_eq!(desc.format, PLAN_FORMAT);
        desc.to_bytes()
    }

    struct Fixture {
        plan: Vec<u8>,
        functions: [*const c_void; 1],
        dir: std::path::PathBuf,
        weights: Vec<f32>,
    }

    impl Fixture {
        fn new(name: &str) -> Fixture {
            let dir = std::env::temp_dir().join(format!("bbc-aot-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let weights = vec![0.5, -1.0, 2.0, 0.25, 3.0];
            write_weights(&dir.join("weights.bin"), [weights.as_slice()]).unwrap();
            Fixture {
                plan: plan_json(),
                functions: [twice_plus as *const c_void],
                dir,
                weights,
            }
        }

        fn descriptor(&self) -> ModelDescriptor {
            let (weights_bytes, weights_digest) = WeightsDigest::of([self.weights.as_slice()]);
            ModelDescriptor {
                magic: MAGIC,
                version: DESCRIPTOR_VERSION,
                pointer_bytes: size_of::<usize>() as u32,
                plan: self.plan.as_ptr(),
                plan_len: self.plan.len(),
                functions: self.functions.as_ptr(),
                function_count: 1,
                cpu_features: 0,
                weights_bytes,
                weights_digest,
            }
        }

        fn load(&self, d: &ModelDescriptor) -> Result<Model, AotError> {
            // SAFETY: the descriptor points at this fixture's plan and function.
            unsafe { Model::load(d, &self.dir.join("weights.bin"), 2) }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn a_descriptor_loads_and_runs() {
        let f = Fixture::new("runs");
        let mut model = f.load(&f.descriptor()).unwrap();
        assert_eq!(model.name(), "twice");
        assert_eq!(model.inputs()[0].shape, vec![5]);
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = model.run(&[&x]).unwrap();
        let want: Vec<f32> = x.iter().zip(&f.weights).map(|(x, w)| 2.0 * x + w).collect();
        assert_eq!(y, vec![want]);
        let short = model.run(&[&x[..4]]).unwrap_err().to_string();
        assert!(
            short.contains("input `x` [5] has 5 values, but its buffer holds 4"),
            "{short}"
        );
    }

    /// Truncated, corrupt and foreign weights, wrong versions and missing CPU features are
    /// errors naming the problem.
    #[test]
    fn bad_descriptors_and_weights_are_errors() {
        let f = Fixture::new("errors");
        let message = |d: &ModelDescriptor| f.load(d).err().expect("refused").to_string();
        let path = f.dir.join("weights.bin");
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, &good[..good.len() - 3]).unwrap();
        assert!(message(&f.descriptor()).contains("truncated"));
        let mut flipped = good.clone();
        flipped[6] ^= 0x10;
        std::fs::write(&path, &flipped).unwrap();
        assert!(message(&f.descriptor()).contains("corrupt"));
        std::fs::remove_file(&path).unwrap();
        assert!(message(&f.descriptor()).contains("cannot open"));
        std::fs::write(&path, &good).unwrap();
        assert!(f.load(&f.descriptor()).is_ok());

        let mut d = f.descriptor();
        d.version += 1;
        assert!(message(&d).contains("recompile"));
        let mut d = f.descriptor();
        d.magic[0] = b'x';
        assert!(message(&d).contains("magic"));
        let mut d = f.descriptor();
        d.cpu_features = 1 << 63;
        assert!(message(&d).contains("feature bit 63"));
        let mut d = f.descriptor();
        d.plan_len -= 1;
        assert!(message(&d).contains("does not parse"));
    }

    #[test]
    fn digests_see_every_float_in_any_chunking() {
        let data: Vec<f32> = (0..101).map(|i| i as f32 * 0.37 - 5.0).collect();
        let whole = WeightsDigest::of([data.as_slice()]);
        let split = WeightsDigest::of([&data[..1], &data[1..50], &data[50..]]);
        assert_eq!(whole, split);
        for i in [0, 57, 100] {
            let mut other = data.clone();
            other[i] = f32::from_bits(other[i].to_bits() ^ 1);
            assert_ne!(
                WeightsDigest::of([other.as_slice()]).1,
                whole.1,
                "element {i}"
            );
        }
        assert_ne!(WeightsDigest::of([&data[..100]]).1, whole.1);
    }

    #[test]
    fn every_listed_feature_has_a_bit() {
        for (i, name) in CPU_FEATURES.iter().enumerate() {
            assert_eq!(cpu_feature_bit(name), Some(i as u32));
        }
        assert!(CPU_FEATURES.len() <= 64);
        assert_eq!(cpu_feature_bit("sse9"), None);
    }
}
