//! Code generators: each reads the Kernel IR ([`crate::kernel`]) and produces code for one
//! target. `cpu` JIT-compiles kernels with Cranelift for the host.

pub mod cpu;
pub mod prepare;
