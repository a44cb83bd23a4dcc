//! Ahead-of-time CPU code: a model's kernels in one relocatable object file that a C or Rust
//! program links with the runtime library alone.
//!
//! [`compile_object`] runs the same plan builder as the JIT (`plan::build`) with a backend
//! that emits every distinct kernel into one `cranelift_object::ObjectModule` instead of
//! JIT-compiling it, and keeps the constants for the weights file instead of packing them.
//! The object then defines:
//!
//! - the kernels, as local functions, position-independent; their constant tables as local
//!   read-only data objects, addressed PC-relative (the JIT bakes their addresses in);
//! - a table of the functions' addresses, in the plan's function-table order;
//! - the plan description ([`PlanDesc::to_bytes`]);
//! - one exported [`ModelDescriptor`] (the symbol `bbc_model_<name>` by default) pointing at
//!   them, with the CPU features the code was compiled for and the size and digest of the
//!   weights file.
//!
//! The generated code imports `bbc_logf`/`bbc_powf`, which the runtime exports, and the C
//! library functions Cranelift may call (`fmaf`, `ceilf`, ...) from libm. The ISA is the
//! host's (every feature `cranelift_native` finds), so the object runs on this CPU and on
//! any with the same features; the runtime checks them before running it. One ISA serves
//! every kernel, so all compile at `opt_level=speed` (the JIT leaves kernels without
//! reductions at `none`, which compiles faster and measured as fast). Bounds-checked code
//! is JIT-only. A model with nodes that have no kernel (reference implementations run by
//! the JIT) is refused, with every such node listed.

use super::plan::{self, Backend, CompileError, ExecStats, Fallback};
use super::{define_kernel, entry_signature, host_isa, Linking, Options, TableLocation};
use crate::ir::Graph;
use crate::kernel::{Kernel, TableData};
use bbc_runtime::aot::{
    cpu_feature_bit, ModelDescriptor, WeightsDigest, DESCRIPTOR_VERSION, MAGIC,
};
use bbc_runtime::desc::{Described, PlanDesc};
use bbc_runtime::exec::{HostFn, Step};
use bbc_runtime::Tensor;
use cranelift_codegen::isa::TargetIsa;
use cranelift_module::{default_libcall_names, DataDescription, FuncId, Linkage, Module};
use cranelift_object::{ObjectBuilder, ObjectModule};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::mem::{offset_of, size_of};

/// A model compiled to an object file, with what its weights file and header need.
pub struct ObjectProgram {
    /// The object file's bytes.
    pub object: Vec<u8>,
    /// The exported descriptor's symbol.
    pub symbol: String,
    /// The constants of the weights file, in order.
    pub constants: Vec<Vec<f32>>,
    /// The plan the object embeds (its inputs and outputs document the header).
    pub desc: PlanDesc,
    pub stats: ExecStats,
    /// The CPU features (`std::arch` names) the code needs.
    pub cpu_features: Vec<&'static str>,
}

/// Why a model could not be compiled to an object file.
#[derive(Debug)]
pub enum ObjectError {
    /// Nodes without a kernel: their reference implementations exist only in the JIT.
    Fallbacks(Vec<Fallback>),
    /// The descriptor's symbol is not a C identifier.
    Symbol(String),
    Compile(CompileError),
    /// Cranelift or the object writer failed (a code generator bug).
    Codegen(String),
}

impl std::fmt::Display for ObjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectError::Fallbacks(nodes) => {
                write!(
                    f,
                    "{} node(s) have no CPU kernel and would run their reference \
                     implementation, which only the JIT (`bbc run`) has:",
                    nodes.len()
                )?;
                for n in nodes {
                    write!(f, "\n  {} ({}): {}", n.node, n.op, n.reason)?;
                }
                Ok(())
            }
            ObjectError::Symbol(s) => match taken_by(s) {
                Some(owner) => write!(
                    f,
                    "`{s}` is taken by {owner}: a program linking model.o with it would not \
                     link; choose another symbol"
                ),
                None => write!(
                    f,
                    "`{s}` is not a C identifier (letters, digits and `_`, not starting with \
                     a digit, and not a C keyword)"
                ),
            },
            ObjectError::Compile(e) => write!(f, "{e}"),
            ObjectError::Codegen(e) => write!(f, "code generation failed: {e}"),
        }
    }
}

impl std::error::Error for ObjectError {}

/// The default descriptor symbol of model `name`: `bbc_model_` and the name with every
/// character that cannot be in a C identifier replaced by `_`.
pub fn default_symbol(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("bbc_model_{safe}")
}

/// C's keywords (C23's included): a descriptor named like one would not compile in the
/// generated header.
const C_KEYWORDS: &[&str] = &[
    "alignas",
    "alignof",
    "auto",
    "bool",
    "break",
    "case",
    "char",
    "const",
    "constexpr",
    "continue",
    "default",
    "do",
    "double",
    "else",
    "enum",
    "extern",
    "false",
    "float",
    "for",
    "goto",
    "if",
    "inline",
    "int",
    "long",
    "nullptr",
    "register",
    "restrict",
    "return",
    "short",
    "signed",
    "sizeof",
    "static",
    "static_assert",
    "struct",
    "switch",
    "thread_local",
    "true",
    "typedef",
    "typeof",
    "typeof_unqual",
    "union",
    "unsigned",
    "void",
    "volatile",
    "while",
];

/// What else defines `symbol` in a program that links a model's object file: the C entry
/// point, or the runtime library (its API and the math routines the kernels call).
fn taken_by(symbol: &str) -> Option<&'static str> {
    if symbol == "main" {
        Some("the C program's entry point")
    } else if symbol.starts_with("bbcrt_") {
        Some("the runtime library (its names start with `bbcrt_`)")
    } else if ["bbc_logf", "bbc_powf"].contains(&symbol) {
        Some("the runtime library's math routines, which the kernels call")
    } else {
        None
    }
}

/// Checks that `symbol` can name a model's descriptor: a C identifier that nothing else
/// linked with the object file defines.
pub fn check_symbol(symbol: &str) -> Result<(), ObjectError> {
    let mut chars = symbol.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !C_KEYWORDS.contains(&symbol)
        && taken_by(symbol).is_none();
    if ok {
        Ok(())
    } else {
        Err(ObjectError::Symbol(symbol.to_string()))
    }
}

/// Compiles `graph` (normally optimised at `-O2`) with `weights` (by state_dict key) to an
/// object file exporting its descriptor as `symbol`.
pub fn compile_object(
    graph: &Graph,
    weights: &BTreeMap<String, Tensor>,
    symbol: &str,
) -> Result<ObjectProgram, ObjectError> {
    check_symbol(symbol)?;
    let codegen = Options {
        bounds_checked: false,
        optimize: true,
        ..Options::default()
    };
    let codegen_err = |e: &dyn std::fmt::Display| ObjectError::Codegen(e.to_string());
    let isa = host_isa(&codegen, Linking::Object).map_err(|e| codegen_err(&e))?;
    if isa.pointer_bytes() as usize != size_of::<usize>() {
        return Err(ObjectError::Codegen(format!(
            "{}-byte pointers on a {}-byte host",
            isa.pointer_bytes(),
            size_of::<usize>()
        )));
    }
    let (features, feature_bits) = required_features(&*isa)?;
    let builder = ObjectBuilder::new(isa, "bbc_model", default_libcall_names())
        .map_err(|e| codegen_err(&e))?;
    let mut backend = ObjectBackend {
        module: ObjectModule::new(builder),
        symbol: symbol.to_string(),
        functions: Vec::new(),
        constants: Vec::new(),
    };
    let (desc, stats) =
        plan::build(graph, weights, &codegen, &mut backend).map_err(ObjectError::Compile)?;
    if !stats.fallbacks.is_empty() {
        return Err(ObjectError::Fallbacks(stats.fallbacks));
    }
    let constants = std::mem::take(&mut backend.constants);
    let (weights_bytes, weights_digest) = WeightsDigest::of(constants.iter().map(Vec::as_slice));
    let object = backend
        .finish(&desc, feature_bits, weights_bytes, weights_digest)
        .map_err(ObjectError::Codegen)?;
    Ok(ObjectProgram {
        object,
        symbol: symbol.to_string(),
        constants,
        desc,
        stats,
        cpu_features: features,
    })
}

/// The `std::arch` name of the CPU feature a Cranelift ISA flag says the code may use.
fn feature_name(flag: &str) -> Option<&str> {
    Some(match flag.strip_prefix("has_")? {
        "sse41" => "sse4.1",
        "sse42" => "sse4.2",
        "avx_vnni" => "avxvnni",
        "pauth" => "paca",
        other => other,
    })
}

/// The features `isa` compiles for, by name and as descriptor bits. A feature the runtime
/// cannot check is an error rather than a program that may fault on another CPU.
fn required_features(isa: &dyn TargetIsa) -> Result<(Vec<&'static str>, u64), ObjectError> {
    let mut names = Vec::new();
    let mut bits = 0u64;
    for flag in isa.isa_flags() {
        let (Some(name), Some(true)) = (feature_name(flag.name), flag.as_bool()) else {
            continue;
        };
        let Some(bit) = cpu_feature_bit(name) else {
            return Err(ObjectError::Codegen(format!(
                "the code may use CPU feature `{name}`, which the runtime cannot check"
            )));
        };
        bits |= 1 << bit;
        names.push(bbc_runtime::aot::CPU_FEATURES[bit as usize]);
    }
    Ok((names, bits))
}

/// Emits kernels into one object module and keeps the constants.
struct ObjectBackend {
    module: ObjectModule,
    symbol: String,
    /// The functions, in function-table order.
    functions: Vec<FuncId>,
    /// Every constant's data, in order.
    constants: Vec<Vec<f32>>,
}

/// A table's elements as the generated code reads them (i64 or f32), in target byte order.
fn table_bytes(data: &TableData) -> Box<[u8]> {
    match data {
        TableData::Int(v) => v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
        TableData::Float(v) => v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
    }
}

impl ObjectBackend {
    /// Defines a local read-only data object `name` holding `bytes`.
    fn data(
        &mut self,
        name: &str,
        linkage: Linkage,
        describe: DataDescription,
    ) -> Result<cranelift_module::DataId, String> {
        let id = self
            .module
            .declare_data(name, linkage, false, false)
            .map_err(|e| e.to_string())?;
        self.module
            .define_data(id, &describe)
            .map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// Defines the function table, the plan and the exported descriptor; returns the object
    /// file.
    fn finish(
        mut self,
        desc: &PlanDesc,
        cpu_features: u64,
        weights_bytes: u64,
        weights_digest: u64,
    ) -> Result<Vec<u8>, String> {
        let word = size_of::<usize>();
        let mut table = DataDescription::new();
        // Explicit zeros, not zero-init: relocated data cannot live in `.bss`.
        table.define(vec![0; word * self.functions.len().max(1)].into_boxed_slice());
        table.set_align(word as u64);
        for (i, &f) in self.functions.iter().enumerate() {
            let f = self.module.declare_func_in_data(f, &mut table);
            table.write_function_addr((i * word) as u32, f);
        }
        let functions = self.data(&format!("{}_functions", self.symbol), Linkage::Local, table)?;
        let mut plan = DataDescription::new();
        let plan_bytes = desc.to_bytes();
        let plan_len = plan_bytes.len();
        plan.define(plan_bytes.into_boxed_slice());
        let plan = self.data(&format!("{}_plan", self.symbol), Linkage::Local, plan)?;

        let mut bytes = vec![0u8; size_of::<ModelDescriptor>()];
        let mut put = |offset: usize, value: &[u8]| {
            bytes[offset..offset + value.len()].copy_from_slice(value);
        };
        put(offset_of!(ModelDescriptor, magic), &MAGIC);
        put(
            offset_of!(ModelDescriptor, version),
            &DESCRIPTOR_VERSION.to_ne_bytes(),
        );
        put(
            offset_of!(ModelDescriptor, pointer_bytes),
            &(word as u32).to_ne_bytes(),
        );
        put(
            offset_of!(ModelDescriptor, plan_len),
            &plan_len.to_ne_bytes(),
        );
        put(
            offset_of!(ModelDescriptor, function_count),
            &self.functions.len().to_ne_bytes(),
        );
        put(
            offset_of!(ModelDescriptor, cpu_features),
            &cpu_features.to_ne_bytes(),
        );
        put(
            offset_of!(ModelDescriptor, weights_bytes),
            &weights_bytes.to_ne_bytes(),
        );
        put(
            offset_of!(ModelDescriptor, weights_digest),
            &weights_digest.to_ne_bytes(),
        );
        let mut descriptor = DataDescription::new();
        descriptor.define(bytes.into_boxed_slice());
        descriptor.set_align(align_of::<ModelDescriptor>() as u64);
        let plan = self.module.declare_data_in_data(plan, &mut descriptor);
        descriptor.write_data_addr(offset_of!(ModelDescriptor, plan) as u32, plan, 0);
        let functions = self.module.declare_data_in_data(functions, &mut descriptor);
        descriptor.write_data_addr(offset_of!(ModelDescriptor, functions) as u32, functions, 0);
        let symbol = self.symbol.clone();
        self.data(&symbol, Linkage::Export, descriptor)?;
        self.module.finish().emit().map_err(|e| e.to_string())
    }
}

impl Backend for ObjectBackend {
    fn function(&mut self, kernel: &Kernel) -> Result<usize, String> {
        let index = self.functions.len();
        let name = format!("{}_f{index}", self.symbol);
        let signature = entry_signature(&self.module, kernel)
            .ok_or("a contraction without an epilogue has no code")?;
        let id = self
            .module
            .declare_function(&name, Linkage::Local, &signature)
            .map_err(|e| e.to_string())?;
        let mut tables = Vec::with_capacity(kernel.tables.len());
        for (t, table) in kernel.tables.iter().enumerate() {
            let mut data = DataDescription::new();
            data.define(table_bytes(&table.data));
            data.set_align(8);
            let id = self.data(&format!("{name}_t{t}"), Linkage::Local, data)?;
            tables.push(TableLocation::Data(id));
        }
        let size = define_kernel(&mut self.module, id, kernel, &tables, None)
            .map_err(|e| e.to_string())?;
        self.functions.push(id);
        Ok(size)
    }

    fn constant(&mut self, index: usize, data: &[f32], _in_place: bool) {
        if index == self.constants.len() {
            self.constants.push(data.to_vec());
        }
    }

    fn host(&mut self, _f: HostFn) -> usize {
        // Refused once the plan is built: `ObjectError::Fallbacks` lists every such node.
        0
    }

    fn step<'d>(
        &mut self,
        _step: &Step<Described>,
        _constant: &dyn Fn(usize) -> Option<&'d [f32]>,
    ) -> Result<(), String> {
        // Steps are resolved when the program loads the object.
        Ok(())
    }
}

/// Text that cannot end a C comment.
fn comment_safe(text: &str) -> String {
    text.replace("*/", "* /")
}

/// The C header declaring `program`'s descriptor and documenting its inputs and outputs;
/// it includes the runtime library's `bbcrt.h`.
pub fn c_header(program: &ObjectProgram, model: &str) -> String {
    let symbol = &program.symbol;
    let upper = symbol.to_ascii_uppercase();
    let features = match program.cpu_features.as_slice() {
        [] => "any features".to_string(),
        names => names.join(", "),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "/* Model `{}`, compiled ahead of time by bbc {} for CPUs with {features}.",
        comment_safe(model),
        env!("CARGO_PKG_VERSION"),
    );
    let _ = writeln!(out, " *");
    let _ = writeln!(
        out,
        " * Link model.o with the runtime library alone, statically or as a shared library:"
    );
    let _ = writeln!(
        out,
        " *   cc prog.c model.o path/to/libbbcrt.a -lpthread -ldl -lm"
    );
    let _ = writeln!(
        out,
        " *   cc prog.c model.o -Lpath/to -lbbcrt -Wl,-rpath,path/to -lm"
    );
    let _ = writeln!(out, " * and load it with its weights file:");
    let _ = writeln!(
        out,
        " *   bbcrt_model *m = bbcrt_model_load(&{symbol}, \"weights.bin\", 0, &err);"
    );
    let _ = writeln!(out, " */");
    let _ = writeln!(out, "#ifndef {upper}_H");
    let _ = writeln!(out, "#define {upper}_H");
    let _ = writeln!(out);
    let _ = writeln!(out, "#include \"bbcrt.h\"");
    let _ = writeln!(out);
    let _ = writeln!(out, "#ifdef __cplusplus");
    let _ = writeln!(out, "extern \"C\" {{");
    let _ = writeln!(out, "#endif");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "/* The model's descriptor: pass its address to bbcrt_model_load. */"
    );
    let _ = writeln!(out, "extern const bbcrt_descriptor {symbol};");
    let _ = writeln!(out);
    let ios = [
        ("INPUT", &program.desc.inputs),
        ("OUTPUT", &program.desc.outputs),
    ];
    let _ = writeln!(
        out,
        "/* Inputs and outputs, in bbcrt_model_run order (row-major float32):"
    );
    for (kind, list) in ios {
        for (i, io) in list.iter().enumerate() {
            let name = comment_safe(&io.name);
            let kind = kind.to_ascii_lowercase();
            let _ = writeln!(out, " *   {kind} {i}: {name} {:?}", io.shape);
        }
    }
    let _ = writeln!(out, " */");
    for (kind, list) in ios {
        let _ = writeln!(out, "#define {upper}_NUM_{kind}S {}", list.len());
        for (i, io) in list.iter().enumerate() {
            let _ = writeln!(out, "#define {upper}_{kind}_{i}_LEN {}", io.len());
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "#ifdef __cplusplus");
    let _ = writeln!(out, "}}");
    let _ = writeln!(out, "#endif");
    let _ = writeln!(out);
    let _ = writeln!(out, "#endif /* {upper}_H */");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::parse_text;

    /// A graph with a parameter and a logarithm (an imported libcall) compiles to an object
    /// whose plan, constants and header agree; bad symbols are refused.
    #[test]
    fn objects_carry_their_plan_constants_and_header() {
        let graph = parse_text(
            "graph g {
  input %x: f32[2, 3]
  param %c: f32[2, 3] = uniform(1.0)
  %a = add(%x, %c): f32[2, 3]
  %l = log(%a): f32[2, 3]
  output %out = %l
}",
        )
        .expect("parses");
        let symbol = default_symbol("tiny-model.v2");
        assert_eq!(symbol, "bbc_model_tiny_model_v2");
        let c = Tensor::from_shape_vec(&[2, 3][..], vec![1., 2., 3., 4., 5., 6.]).expect("sized");
        let weights = BTreeMap::from([("c".to_string(), c)]);
        let program = compile_object(&graph, &weights, &symbol).expect("compiles");
        if cfg!(target_os = "linux") {
            assert_eq!(&program.object[..4], b"\x7fELF");
        }
        assert!(program
            .object
            .windows(symbol.len())
            .any(|w| w == symbol.as_bytes()));
        let desc = &program.desc;
        assert_eq!(desc.functions.len(), program.stats.loop_kernels);
        assert_eq!(program.constants, vec![vec![1., 2., 3., 4., 5., 6.]]);
        assert_eq!(desc.constants.len(), program.constants.len());
        for (c, data) in desc.constants.iter().zip(&program.constants) {
            assert_eq!(c.len, data.len());
        }
        assert_eq!(desc.inputs[0].shape, vec![2, 3]);
        let header = c_header(&program, "tiny-model.v2");
        assert!(header.contains(&format!("extern const bbcrt_descriptor {symbol};")));
        assert!(header.contains("BBC_MODEL_TINY_MODEL_V2_INPUT_0_LEN 6"));
        assert!(header.contains("BBC_MODEL_TINY_MODEL_V2_NUM_OUTPUTS 1"));
        for bad in [
            "",
            "9lives",
            "a-b",
            "x y",
            "int",
            "static",
            "main",
            "bbcrt_model_load",
            "bbc_logf",
        ] {
            assert!(matches!(
                compile_object(&graph, &weights, bad),
                Err(ObjectError::Symbol(_))
            ));
        }
    }

    #[test]
    fn cranelift_flags_map_to_runtime_features() {
        assert_eq!(feature_name("has_sse41"), Some("sse4.1"));
        assert_eq!(feature_name("has_avx2"), Some("avx2"));
        assert_eq!(feature_name("use_bti"), None);
        let isa = host_isa(&Options::default(), Linking::Object).expect("host ISA");
        let (names, bits) = required_features(&*isa).expect("every host feature is known");
        assert_eq!(names.len(), bits.count_ones() as usize);
        assert!(bbc_runtime::aot::missing_cpu_features(bits).is_empty());
    }
}
