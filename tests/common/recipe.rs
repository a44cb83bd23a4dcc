//! Reference-fixture weights regenerated from their recipe, `weights.json`, bit for bit as
//! `tools/reference/make_fixtures.py` generated them for PyTorch. A recipe lists every
//! state-dict key with its shape and either a uniform range (`lo`, `hi`), a short list of
//! explicit `values`, or an integer constant `value` with its `dtype` (BatchNorm's
//! `num_batches_tracked`). Each float entry carries `check`, a digest of the values the
//! script generated, so a reader that computes a single different bit fails loudly instead
//! of passing within the tests' tolerance.

use bbc::runtime::{DType, EntryInfo, IoError, Tensor};
use ndarray::IxDyn;
use serde_json::Value;
use std::path::Path;

/// The generator a recipe must name; a new scheme gets a new name.
pub const GENERATOR: &str = "splitmix-uniform-v1";

/// SplitMix64's finaliser: `z = x + 0x9E3779B97F4A7C15; z = (z ^ z >> 30) *
/// 0xBF58476D1CE4E5B9; z = (z ^ z >> 27) * 0x94D049BB133111EB; z ^ z >> 31` (wrapping).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64-bit FNV-1a of the key's UTF-8 bytes (offset basis 0xCBF29CE484222325, prime
/// 0x100000001B3).
pub fn fnv1a64(key: &str) -> u64 {
    key.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// The `splitmix-uniform-v1` values of tensor `key`: element `i` (row-major) is
///
/// ```text
/// h = splitmix64(seed ^ fnv1a64(key) ^ splitmix64(i))     (u64, wrapping)
/// u = (h >> 40) / 2^24                                    (exact in f32 and f64)
/// value = f32(lo + (hi - lo) * u)                         (f64 arithmetic, one rounding)
/// ```
///
/// Only integer operations, one multiply, one add and two roundings (no fused
/// multiply-add), so this and the script's numpy version agree on every bit.
pub fn uniform_values(seed: u64, key: &str, count: usize, lo: f64, hi: f64) -> Vec<f32> {
    let base = seed ^ fnv1a64(key);
    (0..count as u64)
        .map(|i| {
            let h = splitmix64(base ^ splitmix64(i));
            let u = (h >> 40) as f64 / (1u64 << 24) as f64;
            (lo + (hi - lo) * u) as f32
        })
        .collect()
}

/// The digest a recipe stores as `check`: the wrapping sum over `i` of
/// `splitmix64(i << 32 | f32_bits(value_i))`.
pub fn values_check(values: &[f32]) -> u64 {
    values.iter().enumerate().fold(0u64, |sum, (i, v)| {
        sum.wrapping_add(splitmix64(((i as u64) << 32) | u64::from(v.to_bits())))
    })
}

/// How one entry's values are made.
#[derive(Clone, Debug)]
enum Fill {
    Uniform {
        lo: f64,
        hi: f64,
        check: u64,
    },
    Values {
        values: Vec<f64>,
        check: u64,
    },
    /// An integer buffer: it has a dtype and shape to check, and no float values.
    Integer,
}

#[derive(Clone, Debug)]
struct Entry {
    info: EntryInfo,
    fill: Fill,
}

/// A parsed `weights.json`.
#[derive(Clone, Debug)]
pub struct WeightRecipe {
    seed: u64,
    entries: Vec<Entry>,
}

impl WeightRecipe {
    pub fn read(path: &Path) -> Result<WeightRecipe, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: invalid JSON: {e}", path.display()))?;
        WeightRecipe::from_json(&json).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_json(json: &Value) -> Result<WeightRecipe, String> {
        if json["generator"] != GENERATOR {
            return Err(format!(
                "generator is {}, expected \"{GENERATOR}\"",
                json["generator"]
            ));
        }
        let seed = json["seed"].as_u64().ok_or("`seed` must be a u64")?;
        let tensors = json["tensors"]
            .as_object()
            .ok_or("`tensors` must be an object")?;
        let entries = tensors
            .iter()
            .map(|(name, spec)| parse_entry(name, spec).map_err(|e| format!("`{name}`: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(WeightRecipe { seed, entries })
    }

    /// Name, dtype and shape of every entry, as a checkpoint header lists them (float
    /// entries are F32), for `bbc::compiler::weights::check`.
    pub fn entries(&self) -> Vec<EntryInfo> {
        self.entries.iter().map(|e| e.info.clone()).collect()
    }

    /// The float tensor `name` generates, after checking it against the recipe's digest.
    pub fn tensor(&self, name: &str) -> Result<Tensor, String> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.info.name == name)
            .ok_or_else(|| format!("the recipe has no `{name}`"))?;
        let count = entry.info.shape.iter().product();
        let (data, check) = match &entry.fill {
            Fill::Uniform { lo, hi, check } => {
                (uniform_values(self.seed, name, count, *lo, *hi), *check)
            }
            Fill::Values { values, check } => (values.iter().map(|&v| v as f32).collect(), *check),
            Fill::Integer => return Err(format!("`{name}` is an integer buffer")),
        };
        let actual = values_check(&data);
        if actual != check {
            return Err(format!(
                "`{name}`: generated values have check {actual:016x}, the recipe says {check:016x}"
            ));
        }
        Tensor::from_shape_vec(IxDyn(&entry.info.shape), data).map_err(|e| format!("`{name}`: {e}"))
    }

    /// Writes the float entries as an F32 safetensors checkpoint (integer buffers are left
    /// out: bbc skips BatchNorm's counter and declares no other integer parameters).
    pub fn write_safetensors(&self, path: &Path) -> Result<(), String> {
        let tensors = self
            .entries
            .iter()
            .filter(|e| !matches!(e.fill, Fill::Integer))
            .map(|e| Ok((e.info.name.clone(), self.tensor(&e.info.name)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(k, t)| (k.clone(), t)).collect();
        bbc::runtime::save(path, &refs).map_err(|e: IoError| e.to_string())
    }
}

fn parse_entry(name: &str, spec: &Value) -> Result<Entry, String> {
    let shape = spec["shape"]
        .as_array()
        .ok_or("`shape` must be a list")?
        .iter()
        .map(|d| {
            d.as_u64()
                .map(|d| d as usize)
                .ok_or("dims must be integers")
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let check = || {
        spec["check"]
            .as_str()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or("`check` must be a hex u64")
    };
    let number = |key: &str| {
        spec[key]
            .as_f64()
            .ok_or(format!("`{key}` must be a number"))
    };
    let (dtype, fill) = if let Some(dtype) = spec["dtype"].as_str() {
        if !spec["value"].is_i64() {
            return Err("an integer entry needs an integer `value`".into());
        }
        (integer_dtype(dtype)?, Fill::Integer)
    } else if let Some(values) = spec["values"].as_array() {
        let values = values
            .iter()
            .map(|v| v.as_f64().ok_or("`values` must be numbers"))
            .collect::<Result<Vec<f64>, _>>()?;
        if values.len() != shape.iter().product::<usize>() {
            return Err(format!("{} values for shape {shape:?}", values.len()));
        }
        let check = check()?;
        (DType::F32, Fill::Values { values, check })
    } else {
        let (lo, hi, check) = (number("lo")?, number("hi")?, check()?);
        (DType::F32, Fill::Uniform { lo, hi, check })
    };
    let info = EntryInfo {
        name: name.to_string(),
        dtype,
        shape,
    };
    Ok(Entry { info, fill })
}

fn integer_dtype(name: &str) -> Result<DType, String> {
    match name {
        "I64" => Ok(DType::I64),
        "I32" => Ok(DType::I32),
        "U8" => Ok(DType::U8),
        "BOOL" => Ok(DType::Bool),
        other => Err(format!("unknown integer dtype `{other}`")),
    }
}
