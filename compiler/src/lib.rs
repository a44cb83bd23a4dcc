//! `bbc-compiler`: elaboration of `.bb` specs into the Graph IR, the op table, the verifier,
//! and the reference interpreter (the oracle every pass and backend is checked against).

pub mod ops;
