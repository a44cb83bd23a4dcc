//! CUDA C spelling of the GPU source printer, for NVRTC (`sm_80` and newer). The math
//! library's `expf`, `expm1f`, `tanhf`, `erff` and `powf` are accurate without `--use_fast_math`, so
//! they are called directly. Tables are `__device__` constant arrays (global memory through
//! the read-only cache: divergent lookups would serialise in `__constant__` memory). Every
//! kernel is `extern "C"` so its entry keeps its name.

use super::source::{common_helpers, Call, Syntax, Ty};
use crate::kernel::TableData;
use bbc_runtime::gpu::BindingAccess;

pub struct Cuda;

fn ty(t: Ty) -> &'static str {
    match t {
        Ty::F32 => "float",
        Ty::I32 => "int",
    }
}

impl Syntax for Cuda {
    fn constant(&self, t: Ty, name: &str, value: &str) -> String {
        format!("const {} {name} = {value};", ty(t))
    }

    fn variable(&self, t: Ty, name: &str, init: &str) -> String {
        format!("{} {name} = {init};", ty(t))
    }

    fn local_array(&self, name: &str, len: usize) -> String {
        format!("float {name}[{len}];")
    }

    fn for_open(&self, name: &str, start: &str, end: &str, step: usize) -> String {
        format!("for (int {name} = {start}; {name} < {end}; {name} += {step}) {{")
    }

    fn unroll(&self) -> Option<&'static str> {
        Some("#pragma unroll")
    }

    fn float_literal(&self, v: f32) -> String {
        // `{:?}` always prints a decimal point or an exponent, which `f` needs.
        if v.is_sign_negative() {
            format!("({v:?}f)")
        } else {
            format!("{v:?}f")
        }
    }

    fn float_bits(&self, bits: u32) -> String {
        format!("__int_as_float({bits:#010x})")
    }

    fn select(&self, cond: &str, then: &str, otherwise: &str) -> String {
        format!("({cond} ? {then} : {otherwise})")
    }

    fn is_nan(&self, x: &str) -> String {
        format!("isnan({x})")
    }

    fn call(&self, f: Call, args: &[String]) -> String {
        let name = match f {
            Call::Exp => "expf",
            Call::Expm1 => "expm1f",
            Call::Log => "logf",
            Call::Sqrt => "sqrtf",
            Call::Abs => "fabsf",
            Call::Tanh => "tanhf",
            Call::Erf => "erff",
            Call::Pow => "powf",
            Call::IntMin => "min",
            Call::IntMax => "max",
            Call::Max => "bb_max",
            Call::Min => "bb_min",
            Call::FloorDiv => "bb_floor_div",
            Call::FloorRem => "bb_floor_rem",
            Call::Sigmoid => "bb_sigmoid",
            Call::Fma => "fmaf",
            Call::Clamp => "bb_clamp",
        };
        format!("{name}({})", args.join(", "))
    }

    fn table(&self, name: &str, data: &TableData) -> String {
        let (elem, items): (&str, Vec<String>) = match data {
            TableData::Int(v) => ("int", v.iter().map(|x| x.to_string()).collect()),
            TableData::Float(v) => ("float", v.iter().map(|&x| self.float_literal(x)).collect()),
        };
        format!(
            "__device__ const {elem} {name}[{}] = {{{}}};",
            items.len(),
            items.join(", ")
        )
    }

    fn shared_array(&self, name: &str, len: usize) -> (bool, String) {
        (false, format!("__shared__ float {name}[{len}];"))
    }

    fn barrier(&self) -> &'static str {
        "__syncthreads();"
    }

    fn storage_barrier(&self) -> &'static str {
        // `__syncthreads` also orders global memory accesses within the block.
        "__syncthreads();"
    }

    fn function(
        &self,
        ret: Ty,
        name: &str,
        params: &[(&str, Ty)],
        body: &[String],
        result: &str,
    ) -> String {
        let params: Vec<String> = params
            .iter()
            .map(|(n, t)| format!("{} {n}", ty(*t)))
            .collect();
        let mut out = format!(
            "__device__ __forceinline__ {} {name}({}) {{\n",
            ty(ret),
            params.join(", ")
        );
        for l in body {
            out.push_str(&format!("    {l}\n"));
        }
        out.push_str(&format!("    return {result};\n}}\n"));
        out
    }

    fn entry(&self, entry: &str, bindings: &[BindingAccess], workgroup: [u32; 3]) -> Vec<String> {
        let params: Vec<String> = bindings
            .iter()
            .enumerate()
            .map(|(i, access)| match access {
                BindingAccess::Read => format!("const float* __restrict__ b{i}"),
                BindingAccess::ReadWrite => format!("float* __restrict__ b{i}"),
            })
            .collect();
        let threads: u32 = workgroup.iter().product();
        let mut lines = vec![format!(
            "extern \"C\" __global__ void __launch_bounds__({threads}) {entry}({}) {{",
            params.join(", ")
        )];
        for (name, value) in [
            ("wg_x", "blockIdx.x"),
            ("wg_y", "blockIdx.y"),
            ("wg_z", "blockIdx.z"),
            ("lid_x", "threadIdx.x"),
            ("lid_y", "threadIdx.y"),
        ] {
            lines.push(format!("    const int {name} = (int){value};"));
        }
        lines
    }

    fn helpers(&self) -> Vec<(&'static str, String)> {
        common_helpers(self)
    }
}
