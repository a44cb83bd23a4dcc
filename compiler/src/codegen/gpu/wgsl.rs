//! WGSL spelling of the GPU source printer. WGSL has no `erf` nor `expm1`, and its `tanh` may
//! be computed as `sinh/cosh` (NaN for large inputs on some drivers), so all three use the CPU
//! code generator's approximations (same coefficients); `pow` of a negative base is
//! undefined in WGSL, so a helper handles the sign for integral exponents like C's `powf`.
//! Infinities and NaN have no literal and are built from their bits.

use super::source::{common_helpers, horner, rational_helper, Call, Syntax, Ty};
use crate::codegen::cpu::math::{
    ERF_CLAMP, ERF_DENOMINATOR, ERF_NUMERATOR, EXP_LN2_HI, EXP_LN2_LO, EXP_MIN, EXP_OVERFLOW,
    EXP_POLYNOMIAL, TANH_CLAMP, TANH_DENOMINATOR, TANH_NUMERATOR,
};
use crate::kernel::TableData;
use bbc_runtime::gpu::BindingAccess;

pub struct Wgsl;

fn ty(t: Ty) -> &'static str {
    match t {
        Ty::F32 => "f32",
        Ty::I32 => "i32",
    }
}

/// `pow(x, y)` with C's rules for a negative base: `|x|^y` with the sign of `x` for odd
/// integral `y`, NaN for a non-integral `y`; `x^0 = 1`.
const POW_HELPER: &str = "fn bb_pow(x: f32, y: f32) -> f32 {
    let m = select(pow(abs(x), y), 1.0f, y == 0.0f);
    let integral = y == floor(y);
    let odd = integral && fract(y * 0.5f) != 0.0f;
    let negative = select(bitcast<f32>(0x7fc00000u), select(m, -m, odd), integral);
    return select(m, negative, x < 0.0f);
}
";

/// `bb_expm1(x0)`, `e^x − 1`: the CPU code generator's `expm1` (`Math::expm1`) step for step,
/// `exp`'s range reduction `x = n·ln 2 + r` then `2·(s·m + (s − ½))` with `s = 2^(n−1)` and
/// `m = e^r − 1` from `exp`'s polynomial, so nothing is rounded against 1 near 0.
fn expm1_helper(s: &Wgsl) -> (&'static str, String) {
    let f = |v: f32| s.float_literal(v);
    let body = [
        s.constant(
            Ty::F32,
            "x",
            &s.call(Call::Clamp, &["x0".into(), f(EXP_MIN), f(EXP_OVERFLOW)]),
        ),
        s.constant(
            Ty::F32,
            "n",
            &format!("round(x * {})", f(std::f32::consts::LOG2_E)),
        ),
        s.constant(
            Ty::F32,
            "r",
            &format!("fma(n, {}, fma(n, {}, x))", f(-EXP_LN2_LO), f(-EXP_LN2_HI)),
        ),
        s.constant(
            Ty::F32,
            "m",
            &format!("fma({}, r * r, r)", horner(s, "r", &EXP_POLYNOMIAL)),
        ),
        s.constant(Ty::F32, "s", &format!("ldexp({}, i32(n))", f(0.5))),
        s.constant(
            Ty::F32,
            "y",
            &format!("({} * fma(s, m, s - {}))", f(2.0), f(0.5)),
        ),
    ];
    let result = s.select(
        &format!("(x0 > {})", f(EXP_OVERFLOW)),
        &s.float_bits(f32::INFINITY.to_bits()),
        "y",
    );
    (
        "bb_expm1",
        s.function(Ty::F32, "bb_expm1", &[("x0", Ty::F32)], &body, &result),
    )
}

impl Syntax for Wgsl {
    fn constant(&self, t: Ty, name: &str, value: &str) -> String {
        format!("let {name}: {} = {value};", ty(t))
    }

    fn variable(&self, t: Ty, name: &str, init: &str) -> String {
        format!("var {name}: {} = {init};", ty(t))
    }

    fn local_array(&self, name: &str, len: usize) -> String {
        format!("var {name}: array<f32, {len}>;")
    }

    fn for_open(&self, name: &str, start: &str, end: &str, step: usize) -> String {
        format!("for (var {name}: i32 = {start}; {name} < {end}; {name} += {step}) {{")
    }

    fn unroll(&self) -> Option<&'static str> {
        None
    }

    fn float_literal(&self, v: f32) -> String {
        if v.is_sign_negative() {
            format!("({v:?}f)")
        } else {
            format!("{v:?}f")
        }
    }

    fn float_bits(&self, bits: u32) -> String {
        format!("bitcast<f32>({bits:#010x}u)")
    }

    fn select(&self, cond: &str, then: &str, otherwise: &str) -> String {
        format!("select({otherwise}, {then}, {cond})")
    }

    fn is_nan(&self, x: &str) -> String {
        format!("((bitcast<u32>({x}) & 0x7fffffffu) > 0x7f800000u)")
    }

    fn call(&self, f: Call, args: &[String]) -> String {
        let name = match f {
            Call::Exp => "exp",
            Call::Expm1 => "bb_expm1",
            Call::Log => "log",
            Call::Sqrt => "sqrt",
            Call::Abs => "abs",
            Call::Tanh => "bb_tanh",
            Call::Erf => "bb_erf",
            Call::Pow => "bb_pow",
            Call::IntMin => "min",
            Call::IntMax => "max",
            Call::Max => "bb_max",
            Call::Min => "bb_min",
            Call::FloorDiv => "bb_floor_div",
            Call::FloorRem => "bb_floor_rem",
            Call::Sigmoid => "bb_sigmoid",
            Call::Fma => "fma",
            Call::Clamp => "bb_clamp",
        };
        format!("{name}({})", args.join(", "))
    }

    fn table(&self, name: &str, data: &TableData) -> String {
        let (elem, items): (&str, Vec<String>) = match data {
            TableData::Int(v) => ("i32", v.iter().map(|x| format!("{x}i")).collect()),
            TableData::Float(v) => ("f32", v.iter().map(|&x| self.float_literal(x)).collect()),
        };
        format!(
            "const {name} = array<{elem}, {}>({});",
            items.len(),
            items.join(", ")
        )
    }

    fn shared_array(&self, name: &str, len: usize) -> (bool, String) {
        (true, format!("var<workgroup> {name}: array<f32, {len}>;"))
    }

    fn barrier(&self) -> &'static str {
        "workgroupBarrier();"
    }

    fn storage_barrier(&self) -> &'static str {
        "storageBarrier();"
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
            .map(|(n, t)| format!("{n}: {}", ty(*t)))
            .collect();
        let mut out = format!("fn {name}({}) -> {} {{\n", params.join(", "), ty(ret));
        for l in body {
            out.push_str(&format!("    {l}\n"));
        }
        out.push_str(&format!("    return {result};\n}}\n"));
        out
    }

    fn entry(&self, entry: &str, bindings: &[BindingAccess], workgroup: [u32; 3]) -> Vec<String> {
        let mut lines: Vec<String> = bindings
            .iter()
            .enumerate()
            .map(|(i, access)| {
                let access = match access {
                    BindingAccess::Read => "read",
                    BindingAccess::ReadWrite => "read_write",
                };
                format!("@group(0) @binding({i}) var<storage, {access}> b{i}: array<f32>;")
            })
            .collect();
        let [x, y, z] = workgroup;
        lines.push(format!("@compute @workgroup_size({x}, {y}, {z})"));
        lines.push(format!(
            "fn {entry}(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{"
        ));
        for (name, value) in [
            ("wg_x", "wid.x"),
            ("wg_y", "wid.y"),
            ("wg_z", "wid.z"),
            ("lid_x", "lid.x"),
            ("lid_y", "lid.y"),
        ] {
            lines.push(format!("    let {name}: i32 = i32({value});"));
        }
        lines
    }

    fn helpers(&self) -> Vec<(&'static str, String)> {
        let mut helpers = common_helpers(self);
        helpers.push(rational_helper(
            self,
            "bb_tanh",
            TANH_CLAMP,
            &TANH_NUMERATOR,
            &TANH_DENOMINATOR,
        ));
        helpers.push(rational_helper(
            self,
            "bb_erf",
            ERF_CLAMP,
            &ERF_NUMERATOR,
            &ERF_DENOMINATOR,
        ));
        helpers.push(expm1_helper(self));
        helpers.push(("bb_pow", POW_HELPER.to_string()));
        helpers
    }
}
