//! `bbc._bbc`, the native half of the `bbc` Python package: compiling a spec into a model
//! through the `bbc` facade and running it on NumPy arrays (or anything NumPy can turn into
//! one) with the GIL released, and the exceptions its errors become. The public Python API
//! (`bbc.compile`, `bbc.Model`, ...) is the pure-Python `bbc/__init__.py` over this module.

use bbc::{CompileOptions, Target, Tensor, Weights};
use numpy::{AllowTypeChange, IntoPyArray, PyArrayDyn, PyArrayLikeDyn, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};
use std::collections::BTreeMap;
use std::path::PathBuf;

create_exception!(
    bbc,
    BbcError,
    PyException,
    "A spec, its weights or an option could not be compiled, or a model could not run. \
     The message is the text the `bbc` command prints: diagnostics come with their \
     file:line:column and source snippet."
);

/// `bbc.InputError`, created once per interpreter: a `BbcError` that is also a `ValueError`,
/// so code that catches NumPy-style shape errors catches it too. `create_exception!` takes
/// one base class only, so the type is built with `type(name, bases, namespace)`.
static INPUT_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn input_error_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    let ty = INPUT_ERROR.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let bases = (py.get_type::<BbcError>(), py.get_type::<PyValueError>());
        let namespace = PyDict::new(py);
        namespace.set_item("__module__", "bbc")?;
        namespace.set_item(
            "__doc__",
            "The inputs given to a model do not match it: their number, names or shapes.",
        )?;
        let ty = py
            .get_type::<PyType>()
            .call1(("InputError", bases, namespace))?;
        Ok(ty.cast_into::<PyType>()?.unbind())
    })?;
    Ok(ty.bind(py))
}

/// The Python exception for a facade error: `InputError` for inputs that do not match the
/// model, `BbcError` for everything else; the message is the error's rendered text.
fn to_py_err(py: Python<'_>, err: bbc::Error) -> PyErr {
    let message = err.to_string();
    match err {
        bbc::Error::Input(_) => match input_error_type(py) {
            Ok(ty) => PyErr::from_type(ty.clone(), message),
            Err(e) => e,
        },
        _ => BbcError::new_err(message),
    }
}

/// A compiled model: the facade's `Model`, which is `Send + Sync`, so Python threads may
/// share it and run it at the same time.
#[pyclass(frozen, module = "bbc._bbc", name = "CompiledModel")]
struct CompiledModel {
    model: bbc::Model,
}

#[pymethods]
impl CompiledModel {
    /// The model's name in the spec.
    #[getter]
    fn name(&self) -> &str {
        self.model.name()
    }

    /// Where it runs: `cpu`, `interp`, `gpu` or `cuda`.
    #[getter]
    fn target(&self) -> &'static str {
        self.model.target().name()
    }

    /// `(name, shape)` of each input, in the order `run` takes them.
    #[getter]
    fn inputs(&self) -> Vec<(String, Vec<usize>)> {
        describe(self.model.inputs())
    }

    /// `(name, shape)` of each output, in the order `run` returns them.
    #[getter]
    fn outputs(&self) -> Vec<(String, Vec<usize>)> {
        describe(self.model.outputs())
    }

    /// Runs one inference on one array per input (in `inputs` order) and returns one
    /// float32 array per output. Each input goes through `numpy.asarray(x, dtype=float32)`:
    /// a C-contiguous float32 array is read in place, anything else is converted first.
    /// The GIL is released while the model runs.
    fn run<'py>(
        &self,
        py: Python<'py>,
        inputs: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Bound<'py, PyArrayDyn<f32>>>> {
        let arrays = inputs.iter().map(f32_array).collect::<PyResult<Vec<_>>>()?;
        let views: Vec<_> = arrays.iter().map(|a| a.as_array()).collect();
        let outputs = py
            .detach(|| self.model.run(&views))
            .map_err(|e| to_py_err(py, e))?;
        // The output buffers move into NumPy without a copy.
        Ok(outputs.into_iter().map(|t| t.into_pyarray(py)).collect())
    }

    fn __repr__(&self) -> String {
        format!(
            "CompiledModel(name={:?}, target={:?})",
            self.model.name(),
            self.model.target().name()
        )
    }
}

/// `value` as a float32 array, read through `numpy.asarray(value, dtype=float32)`: float32
/// arrays as they are, anything else converted. An array whose memory is not aligned for
/// `f32` (a view made by `numpy.frombuffer` at an odd offset) is copied, since Rust may
/// only read aligned `f32`s.
fn f32_array<'py>(
    value: &Bound<'py, PyAny>,
) -> PyResult<PyArrayLikeDyn<'py, f32, AllowTypeChange>> {
    let array: PyArrayLikeDyn<'py, f32, AllowTypeChange> = value.extract()?;
    if array.is_aligned() {
        return Ok(array);
    }
    array.call_method0("copy")?.extract()
}

fn describe(infos: &[bbc::TensorInfo]) -> Vec<(String, Vec<usize>)> {
    infos
        .iter()
        .map(|i| (i.name.clone(), i.shape.clone()))
        .collect()
}

/// Compiles a model of a spec. `spec` is the spec's path, or, when `text` is given, the file
/// name its diagnostics show (imports are read relative to it). See `bbc.compile` for the
/// other arguments. The GIL is released while the spec is compiled.
#[pyfunction]
#[pyo3(signature = (
    spec, text=None, *, model=None, weights=None, dims=None, args=None, opt_level=None,
    threads=None, target="cpu"
))]
#[allow(clippy::too_many_arguments)] // mirrors the keyword arguments of `bbc.compile`
fn compile(
    py: Python<'_>,
    spec: PathBuf,
    text: Option<String>,
    model: Option<String>,
    weights: Option<&Bound<'_, PyAny>>,
    dims: Option<&Bound<'_, PyDict>>,
    args: Option<&Bound<'_, PyDict>>,
    opt_level: Option<u8>,
    threads: Option<usize>,
    target: &str,
) -> PyResult<CompiledModel> {
    let target: Target = target.parse().map_err(|e| to_py_err(py, e))?;
    let mut options = CompileOptions::new().target(target);
    if let Some(model) = model {
        options = options.model(model);
    }
    for (name, value) in dims.into_iter().flat_map(|d| d.iter()) {
        options = options.dim(name.extract::<String>()?, value.extract::<i64>()?);
    }
    for (name, value) in args.into_iter().flat_map(|a| a.iter()) {
        options = options.arg(name.extract::<String>()?, literal(&value)?);
    }
    if let Some(level) = opt_level {
        options = options.opt_level(level);
    }
    if let Some(threads) = threads {
        options = options.threads(threads);
    }
    if let Some(weights) = weights {
        options = options.weights(weights_from(weights)?);
    }
    let compiled = py.detach(|| match &text {
        Some(text) => options.compile_str(&spec.to_string_lossy(), text),
        None => options.compile_file(&spec),
    });
    Ok(CompiledModel {
        model: compiled.map_err(|e| to_py_err(py, e))?,
    })
}

/// Where the weights come from: a seed (int), a safetensors path (str or `os.PathLike`), or
/// a dict of arrays by state_dict key (copied into the model).
fn weights_from(weights: &Bound<'_, PyAny>) -> PyResult<Weights> {
    if let Ok(tensors) = weights.cast::<PyDict>() {
        let mut map = BTreeMap::new();
        for (key, value) in tensors.iter() {
            let tensor = Tensor::from(f32_array(&value)?.as_array().to_owned());
            map.insert(key.extract::<String>()?, tensor);
        }
        return Ok(Weights::Tensors(map));
    }
    // `True` is an int to Python, but never a sensible seed.
    if weights.is_instance_of::<PyInt>() && !weights.is_instance_of::<PyBool>() {
        let seed = weights.extract::<u64>().map_err(|_| {
            PyValueError::new_err(format!(
                "a weight seed must be in [0, 2**64), not {weights}"
            ))
        })?;
        return Ok(Weights::Seeded(seed));
    }
    if let Ok(path) = weights.extract::<PathBuf>() {
        return Ok(Weights::File(path));
    }
    Err(PyTypeError::new_err(format!(
        "weights must be a seed (int), a safetensors path (str or os.PathLike) or a dict of \
         arrays by state_dict key, not {}",
        weights.get_type().name()?
    )))
}

/// A Python value written as the spec literal a model argument takes: `3`, `1.5`, `true`,
/// `"avg"`, `none`, `[1, 2]`.
fn literal(value: &Bound<'_, PyAny>) -> PyResult<String> {
    if value.is_none() {
        return Ok("none".to_string());
    }
    // Before ints: `bool` is a subclass of `int`.
    if let Ok(b) = value.cast::<PyBool>() {
        return Ok(if b.is_true() { "true" } else { "false" }.to_string());
    }
    if value.is_instance_of::<PyInt>() {
        return Ok(value.extract::<i64>()?.to_string());
    }
    if value.is_instance_of::<PyFloat>() {
        // `{:?}` always writes a decimal point or an exponent, so the value stays a float.
        return Ok(format!("{:?}", value.extract::<f64>()?));
    }
    if value.is_instance_of::<PyString>() {
        let s: String = value.extract()?;
        if s.contains(['"', ',', '[', ']']) {
            return Err(PyValueError::new_err(format!(
                "a string model argument cannot contain `\"`, `,`, `[` or `]`: {s:?}"
            )));
        }
        return Ok(format!("\"{s}\""));
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        let items = value
            .try_iter()?
            .map(|item| literal(&item?))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(format!("[{}]", items.join(", ")));
    }
    Err(PyTypeError::new_err(format!(
        "a model argument must be an int, float, bool, str, None or a list of them, not {}",
        value.get_type().name()?
    )))
}

/// The native half of the `bbc` package; use `bbc` itself.
#[pymodule]
fn _bbc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("BbcError", py.get_type::<BbcError>())?;
    m.add("InputError", input_error_type(py)?)?;
    m.add_class::<CompiledModel>()?;
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    Ok(())
}
