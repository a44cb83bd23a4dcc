//! The on-disk form of a compiled GPU program, so any program linking only
//! this crate can load and run it:
//!
//! ```text
//! DIR/plan.json               the LaunchPlan, each kernel's `source` left empty
//! DIR/kernels/<name>.wgsl|.cu each kernel's source (the extension follows the dialect)
//! DIR/weights.safetensors     the constants, by key (F32)
//! DIR/README.txt              how to run it
//! ```
//!
//! Saving builds the folder beside its destination and renames it into place
//! ([`write_program_dir`]), so a failure never leaves a half-written program
//! behind.

use super::{constant_data, Constants, GpuError, LaunchPlan};
use crate::checkpoint::{self, Checkpoint};
use crate::program_dir::write_program_dir;
use std::path::{Path, PathBuf};

/// The plan's file name inside a program folder.
pub const PLAN_FILE: &str = "plan.json";
/// The constants' file name inside a program folder.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// The folder holding the kernel sources.
pub const KERNELS_DIR: &str = "kernels";

/// Where kernel `name` of a plan in `dialect` is stored, relative to the
/// program folder.
pub fn kernel_path(name: &str, dialect: super::Dialect) -> PathBuf {
    Path::new(KERNELS_DIR).join(format!("{name}.{}", dialect.extension()))
}

/// Writes `plan`, its constants and `readme` to `dir` (see the module
/// documentation). An existing non-empty `dir` is replaced only with `force`
/// and only if it holds a compiled program, so a mistyped path never deletes
/// unrelated files.
pub fn save_dir(
    dir: &Path,
    plan: &LaunchPlan,
    constants: &Constants,
    readme: &str,
    force: bool,
) -> Result<(), GpuError> {
    constant_data(plan, constants)?;
    for kernel in &plan.kernels {
        let safe = !kernel.name.is_empty()
            && kernel
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !safe {
            return Err(GpuError::InvalidPlan(format!(
                "kernel name `{}` cannot be a file name",
                kernel.name
            )));
        }
    }
    // Files go to a temporary folder; errors name where they were meant to end up.
    let io = |name: &Path, e: &dyn std::fmt::Display| {
        GpuError::Io(format!("cannot write `{}`: {e}", dir.join(name).display()))
    };
    let fill = |temp: &Path| {
        std::fs::create_dir(temp.join(KERNELS_DIR)).map_err(|e| io(Path::new(KERNELS_DIR), &e))?;
        let mut stored = plan.clone();
        for kernel in &mut stored.kernels {
            let name = kernel_path(&kernel.name, plan.dialect);
            std::fs::write(temp.join(&name), &kernel.source).map_err(|e| io(&name, &e))?;
            kernel.source.clear();
        }
        let json = serde_json::to_string_pretty(&stored)
            .map_err(|e| GpuError::Io(format!("cannot encode the plan: {e}")))?;
        std::fs::write(temp.join(PLAN_FILE), json + "\n")
            .map_err(|e| io(Path::new(PLAN_FILE), &e))?;
        let refs: Vec<(String, &crate::Tensor)> = plan
            .constant_keys()
            .into_iter()
            .map(|key| (key.to_string(), &constants[key]))
            .collect();
        checkpoint::save(temp.join(WEIGHTS_FILE), &refs).map_err(|e| match e {
            crate::IoError::Io { source, .. } => io(Path::new(WEIGHTS_FILE), &source),
            other => io(Path::new(WEIGHTS_FILE), &other),
        })?;
        std::fs::write(temp.join("README.txt"), readme)
            .map_err(|e| io(Path::new("README.txt"), &e))?;
        Ok(())
    };
    write_program_dir(dir, force, fill, GpuError::Io)
}

/// Reads a program written by [`save_dir`]: the plan with every kernel's
/// source filled in from `kernels/`, validated, and its constants.
pub fn load_dir(dir: &Path) -> Result<(LaunchPlan, Constants), GpuError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| GpuError::Io(format!("cannot read `{}`: {e}", path.display())))
    };
    let plan_path = dir.join(PLAN_FILE);
    let mut plan: LaunchPlan = serde_json::from_str(&read(&plan_path)?).map_err(|e| {
        GpuError::Io(format!(
            "`{}` is not a launch plan: {e}",
            plan_path.display()
        ))
    })?;
    plan.validate().map_err(GpuError::InvalidPlan)?;
    for kernel in &mut plan.kernels {
        if kernel.source.is_empty() {
            kernel.source = read(&dir.join(kernel_path(&kernel.name, plan.dialect)))?;
        }
    }
    let weights = dir.join(WEIGHTS_FILE);
    let file = Checkpoint::open(&weights).map_err(|e| GpuError::Io(e.to_string()))?;
    let mut constants = Constants::new();
    for key in plan.constant_keys() {
        let tensor = file.load(key).map_err(|e| GpuError::Io(e.to_string()))?;
        constants.insert(key.to_string(), tensor);
    }
    constant_data(&plan, &constants)?;
    Ok((plan, constants))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{
        BindingAccess, BufferDecl, Dialect, IoDecl, KernelSource, Launch, Place, PLAN_FORMAT,
    };

    /// A one-launch CUDA plan `y = x + b` with its constant.
    fn program() -> (LaunchPlan, Constants) {
        let plan = LaunchPlan {
            format: PLAN_FORMAT,
            dialect: Dialect::Cuda,
            arena_len: 128,
            buffers: vec![
                BufferDecl {
                    name: "x".into(),
                    len: 6,
                    place: Place::Arena { offset: 0 },
                },
                BufferDecl {
                    name: "b".into(),
                    len: 6,
                    place: Place::Constant { key: "bias".into() },
                },
                BufferDecl {
                    name: "y".into(),
                    len: 6,
                    place: Place::Arena { offset: 64 },
                },
            ],
            kernels: vec![KernelSource {
                name: "add_0".into(),
                entry: "add".into(),
                source: "extern \"C\" __global__ void add(const float* x, const float* b, \
                         float* y) { int i = threadIdx.x; if (i < 6) y[i] = x[i] + b[i]; }\n"
                    .into(),
                workgroup: [32, 1, 1],
                bindings: vec![
                    BindingAccess::Read,
                    BindingAccess::Read,
                    BindingAccess::ReadWrite,
                ],
            }],
            launches: vec![Launch {
                step: "y".into(),
                kernel: 0,
                args: vec![0, 1, 2],
                grid: [1, 1, 1],
            }],
            inputs: vec![IoDecl {
                name: "x".into(),
                shape: vec![2, 3],
                buffer: 0,
            }],
            outputs: vec![IoDecl {
                name: "y".into(),
                shape: vec![2, 3],
                buffer: 2,
            }],
        };
        let bias = crate::Tensor::from_shape_vec(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        (plan, Constants::from([("bias".to_string(), bias)]))
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bbc-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn saved_program_loads_back_identically() {
        let root = scratch("roundtrip");
        let dir = root.join("prog");
        let (plan, constants) = program();
        save_dir(&dir, &plan, &constants, "readme\n", false).unwrap();
        let json = std::fs::read_to_string(dir.join(PLAN_FILE)).unwrap();
        assert!(json.contains("\"source\": \"\""), "{json}");
        let source = std::fs::read_to_string(dir.join("kernels/add_0.cu")).unwrap();
        assert_eq!(source, plan.kernels[0].source);
        assert_eq!(
            std::fs::read_to_string(dir.join("README.txt")).unwrap(),
            "readme\n"
        );
        let (loaded, weights) = load_dir(&dir).unwrap();
        assert_eq!(loaded, plan);
        assert_eq!(weights, constants);
        // Only the new folder is left: no temporary files beside it.
        let entries: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
        assert_eq!(entries.len(), 1);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn existing_folders_are_replaced_only_when_allowed() {
        let root = scratch("replace");
        let (plan, constants) = program();
        let other = root.join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("notes.txt"), "keep").unwrap();
        let err = save_dir(&other, &plan, &constants, "", true).unwrap_err();
        assert!(
            err.to_string().contains("holds no compiled program"),
            "{err}"
        );
        assert!(other.join("notes.txt").exists());

        let dir = root.join("prog");
        std::fs::create_dir(&dir).unwrap();
        save_dir(&dir, &plan, &constants, "first", false).unwrap();
        let err = save_dir(&dir, &plan, &constants, "second", false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        save_dir(&dir, &plan, &constants, "second", true).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("README.txt")).unwrap(),
            "second"
        );
        let entries: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
        assert_eq!(entries.len(), 2, "other + prog, no leftovers");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn broken_programs_are_reported() {
        let root = scratch("broken");
        let (plan, constants) = program();
        let dir = root.join("prog");
        let mut missing = constants.clone();
        missing.clear();
        let err = save_dir(&dir, &plan, &missing, "", false).unwrap_err();
        assert!(err.to_string().contains("weights do not hold"), "{err}");
        assert!(!dir.exists(), "nothing written on failure");

        save_dir(&dir, &plan, &constants, "", false).unwrap();
        std::fs::remove_file(dir.join("kernels/add_0.cu")).unwrap();
        let err = load_dir(&dir).unwrap_err();
        assert!(err.to_string().contains("add_0.cu"), "{err}");
        std::fs::write(dir.join(PLAN_FILE), "{\"format\": 1}").unwrap();
        let err = load_dir(&dir).unwrap_err();
        assert!(err.to_string().contains("is not a launch plan"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
