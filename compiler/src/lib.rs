//! `bbc-compiler`: elaboration of `.bb` specs into the Graph IR, the op table, the verifier,
//! and the reference interpreter (the oracle every pass and backend is checked against).

pub mod codegen;
pub mod elab;
pub mod interp;
pub mod ir;
pub mod kernel;
pub mod ops;
pub mod passes;
pub mod stats;
pub mod weights;
