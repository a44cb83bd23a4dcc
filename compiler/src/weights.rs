//! The parameter table of an elaborated model, and everything that relates it to tensors:
//! checking a checkpoint against it (from the header alone), loading, and seeded PyTorch-style
//! initialisation when no checkpoint is given.

use crate::elab::Elaborated;
use crate::ir::{Graph, NodeKind};
use crate::ops::{Init, ParamKind};
use bbc_grammar::{did_you_mean, Diagnostic, Phase};
use bbc_runtime::{Checkpoint, DType, EntryInfo, Rng, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

pub mod codes {
    pub const MISSING: &str = "E0501";
    pub const UNEXPECTED: &str = "E0502";
    pub const SHAPE: &str = "E0503";
    pub const DTYPE: &str = "E0504";
    pub const UNREADABLE: &str = "E0505";
}

/// One state_dict entry the model expects.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamEntry {
    pub key: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    pub init: Init,
}

impl ParamEntry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The model's state_dict keys, sorted.
pub fn param_table(graph: &Graph) -> Vec<ParamEntry> {
    graph
        .params()
        .into_iter()
        .filter_map(|id| {
            let node = graph.node(id);
            match node.kind {
                NodeKind::Param { kind, init } => Some(ParamEntry {
                    key: node.name.clone(),
                    shape: node.shape.clone(),
                    kind,
                    init,
                }),
                _ => None,
            }
        })
        .collect()
}

/// Seeded initialisation with each entry's PyTorch default; one RNG stream per key, so a
/// parameter's values do not depend on which other parameters exist.
pub fn init_weights(graph: &Graph, seed: u64) -> BTreeMap<String, Tensor> {
    let rng = Rng::new(seed);
    param_table(graph)
        .into_iter()
        .map(|p| {
            let mut t = Tensor::zeros(p.shape.clone());
            let mut r = rng.fork(&p.key);
            match p.init {
                Init::Zeros => {}
                Init::Ones => t.fill(1.0),
                Init::Fill(v) => t.fill(v as f32),
                Init::Uniform(b) => r.fill_uniform(&mut t, b),
                Init::Normal(s) => r.fill_normal(&mut t, s),
                Init::TruncNormal(s) => r.fill_trunc_normal(&mut t, s, -2.0, 2.0),
            }
            (p.key, t)
        })
        .collect()
}

/// How the model's `rename`/`ignore` rules map checkpoint keys to model keys.
struct KeyMap {
    renames: Vec<(regex::Regex, String)>,
    ignores: Vec<regex::Regex>,
}

impl KeyMap {
    fn new(graph: &Graph) -> KeyMap {
        // Patterns were validated during elaboration.
        let compile = |p: &str| regex::Regex::new(p).expect("validated during elaboration");
        KeyMap {
            renames: graph
                .key_rules
                .renames
                .iter()
                .map(|(f, t)| (compile(f), t.clone()))
                .collect(),
            ignores: graph.key_rules.ignores.iter().map(|p| compile(p)).collect(),
        }
    }

    /// The model key for a checkpoint key, or `None` if it is ignored.
    fn map(&self, key: &str) -> Option<String> {
        let mut k = key.to_string();
        for (re, to) in &self.renames {
            k = re.replace_all(&k, to.as_str()).into_owned();
        }
        if self.ignores.iter().any(|re| re.is_match(&k)) {
            return None;
        }
        Some(k)
    }
}

/// PyTorch's BatchNorm counter, saved in every checkpoint and meaningless at inference.
fn is_batch_counter(key: &str, expected: &BTreeMap<&str, &ParamEntry>) -> bool {
    key.strip_suffix("num_batches_tracked")
        .is_some_and(|prefix| expected.contains_key(format!("{prefix}running_mean").as_str()))
}

fn is_float(d: &DType) -> bool {
    matches!(d, DType::F32 | DType::F16 | DType::BF16)
}

/// Checks checkpoint entries against the model: every missing, unexpected, mis-shaped or
/// non-float entry is reported, each model-side problem at the span that declared the key.
/// On success returns, for each model key, the checkpoint key that provides it.
pub fn check(
    model: &Elaborated,
    entries: &[EntryInfo],
    ckpt: &str,
) -> Result<BTreeMap<String, String>, Vec<Diagnostic>> {
    let table = param_table(&model.graph);
    let expected: BTreeMap<&str, &ParamEntry> = table.iter().map(|p| (p.key.as_str(), p)).collect();
    let keymap = KeyMap::new(&model.graph);
    let mut diags = Vec::new();
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    let at_site = |d: Diagnostic, key: &str| match model.params.get(key) {
        Some(site) => d
            .at(site.span, "declared here")
            .with_chain(site.chain.clone()),
        None => d,
    };
    let mut unexpected = Vec::new();
    for entry in entries {
        let Some(key) = keymap.map(&entry.name) else {
            continue;
        };
        if is_batch_counter(&key, &expected) {
            continue;
        }
        let Some(p) = expected.get(key.as_str()) else {
            unexpected.push((entry.name.clone(), key));
            continue;
        };
        if let Some(prev) = found.insert(key.clone(), entry.name.clone()) {
            diags.push(at_site(
                Diagnostic::new(
                    Phase::Weights,
                    codes::UNEXPECTED,
                    format!(
                        "checkpoint keys `{prev}` and `{}` both map to `{key}`",
                        entry.name
                    ),
                )
                .with_help("check the model's `rename` rules"),
                &key,
            ));
            continue;
        }
        if !is_float(&entry.dtype) {
            diags.push(at_site(
                Diagnostic::new(
                    Phase::Weights,
                    codes::DTYPE,
                    format!("`{key}` has dtype {} in {ckpt}", entry.dtype),
                )
                .with_note("parameters must be F32, F16 or BF16"),
                &key,
            ));
        } else if entry.shape != p.shape {
            diags.push(at_site(
                Diagnostic::new(
                    Phase::Weights,
                    codes::SHAPE,
                    format!("shape mismatch for `{key}`"),
                )
                .with_note(format!("the spec declares {:?}", p.shape))
                .with_note(format!("{ckpt} has {:?}", entry.shape)),
                &key,
            ));
        }
    }
    if let Some(d) = prefix_mismatch(&table, &found, &unexpected, ckpt) {
        // One cause explains the bulk of the problems: report it instead of every key.
        diags.push(d);
        return Err(diags);
    }
    for p in &table {
        if !found.contains_key(&p.key) {
            diags.push(at_site(
                Diagnostic::new(
                    Phase::Weights,
                    codes::MISSING,
                    format!("`{}` {:?} is missing from {ckpt}", p.key, p.shape),
                ),
                &p.key,
            ));
        }
    }
    for (raw, key) in unexpected {
        let mut d = Diagnostic::new(
            Phase::Weights,
            codes::UNEXPECTED,
            format!("{ckpt} has `{raw}`, which the model does not declare"),
        );
        if raw != key {
            d = d.with_note(format!("after `rename` rules the key is `{key}`"));
        }
        let missing: Vec<&str> = table
            .iter()
            .map(|p| p.key.as_str())
            .filter(|k| !found.contains_key(*k))
            .collect();
        d = match did_you_mean(&key, missing.iter().copied()) {
            Some(s) => d.with_help(format!(
                "did you mean `{s}`? (add `rename \"...\" => \"...\";` to map it)"
            )),
            None => d.with_help("add `ignore \"regex\";` to the model to skip it"),
        };
        diags.push(d);
    }
    if diags.is_empty() {
        Ok(found)
    } else {
        Err(diags)
    }
}

/// When most missing keys appear in the checkpoint with one extra leading prefix (a
/// `DataParallel` `module.`, a wrapper's `backbone.`), or lack one the model has, the fix is a
/// single `rename` rule; this finds it.
fn prefix_mismatch(
    table: &[ParamEntry],
    found: &BTreeMap<String, String>,
    unexpected: &[(String, String)],
    ckpt: &str,
) -> Option<Diagnostic> {
    let missing: Vec<&str> = table
        .iter()
        .map(|p| p.key.as_str())
        .filter(|k| !found.contains_key(*k))
        .collect();
    if missing.len() < 2 {
        return None;
    }
    let mut extra: BTreeMap<String, usize> = BTreeMap::new();
    let mut lacking: BTreeMap<String, usize> = BTreeMap::new();
    for (_, key) in unexpected {
        for m in &missing {
            if let Some(prefix) = key.strip_suffix(m).filter(|p| p.ends_with('.')) {
                *extra.entry(prefix.to_string()).or_insert(0) += 1;
            }
            if let Some(prefix) = m.strip_suffix(key.as_str()).filter(|p| p.ends_with('.')) {
                *lacking.entry(prefix.to_string()).or_insert(0) += 1;
            }
        }
    }
    let best = |counts: BTreeMap<String, usize>| {
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .filter(|(_, n)| 2 * n >= missing.len())
    };
    let escape = |p: &str| p.replace('.', "\\.");
    if let Some((prefix, n)) = best(extra) {
        return Some(
            Diagnostic::new(
                Phase::Weights,
                codes::UNEXPECTED,
                format!("{n} keys of {ckpt} carry an extra prefix `{prefix}`"),
            )
            .with_note(format!(
                "{} of the model's keys are missing, e.g. `{}`",
                missing.len(),
                missing[0]
            ))
            .with_help(format!(
                "add `rename \"^{}\" => \"\";` to the model",
                escape(&prefix)
            )),
        );
    }
    if let Some((prefix, n)) = best(lacking) {
        return Some(
            Diagnostic::new(Phase::Weights, codes::MISSING, format!("{n} keys of {ckpt} lack the model's prefix `{prefix}`"))
                .with_note(format!("{} of the model's keys are missing, e.g. `{}`", missing.len(), missing[0]))
                .with_help(format!("add `rename \"^\" => \"{prefix}\";` to the model (or rename only the keys that need it)")),
        );
    }
    None
}

fn unreadable(path: &Path, e: impl std::fmt::Display) -> Vec<Diagnostic> {
    vec![Diagnostic::new(
        Phase::Weights,
        codes::UNREADABLE,
        format!("cannot read checkpoint `{}`", path.display()),
    )
    .with_note(e.to_string())]
}

/// Checks a checkpoint file from its header alone.
pub fn check_file(
    model: &Elaborated,
    path: &Path,
) -> Result<BTreeMap<String, String>, Vec<Diagnostic>> {
    let ckpt = Checkpoint::header_only(path).map_err(|e| unreadable(path, e))?;
    check(model, ckpt.entries(), &path.display().to_string())
}

/// What in loaded weights would poison every inference, one line per key: NaN or infinite
/// values, and negative values in a BatchNorm running variance (a key ending in
/// `running_var`, PyTorch's name), whose square root the normalisation takes. A checkpoint
/// can match the model key for key and still hold these: a diverged training run, or a
/// corrupt or hand-edited file.
pub fn value_warnings(weights: &BTreeMap<String, Tensor>) -> Vec<String> {
    let mut out = Vec::new();
    for (key, t) in weights {
        let (nan, inf) = t.iter().fold((0usize, 0usize), |(nan, inf), v| {
            (
                nan + usize::from(v.is_nan()),
                inf + usize::from(v.is_infinite()),
            )
        });
        if nan + inf > 0 {
            out.push(format!(
                "`{key}` holds {nan} NaN and {inf} infinite values of {}: every output they \
                 reach will be NaN or infinite",
                t.len()
            ));
        }
        if key.ends_with("running_var") {
            let negative = t.iter().filter(|&&v| v < 0.0).count();
            if negative > 0 {
                out.push(format!(
                    "`{key}` holds {negative} negative values of {}: a variance is never \
                     negative, and BatchNorm takes its square root (NaN)",
                    t.len()
                ));
            }
        }
    }
    out
}

/// Checks, then loads a checkpoint's tensors under the model's keys.
pub fn load_file(
    model: &Elaborated,
    path: &Path,
) -> Result<BTreeMap<String, Tensor>, Vec<Diagnostic>> {
    let ckpt = Checkpoint::open(path).map_err(|e| unreadable(path, e))?;
    let map = check(model, ckpt.entries(), &path.display().to_string())?;
    let mut out = BTreeMap::new();
    for (key, raw) in map {
        let t = ckpt.load(&raw).map_err(|e| unreadable(path, e))?;
        out.insert(key, t);
    }
    Ok(out)
}
